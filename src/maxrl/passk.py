r"""Evaluating pass@k (docs/method.md, section 4).

- :func:`pass_at_k`: the unbiased estimate from n samples with c correct (Chen et al. 2021),
  pass@k = 1 - C(n-c, k) / C(n, k), computed in log space so that n in the tens of thousands
  keeps full precision. Never the bootstrap estimate: it is biased.
- :func:`exact_pass_at_k`: 1 - (1 - p)^k for a known pass rate (classification), and
  :func:`exact_log_pass_at_k` its log from log p.
- :func:`pass_at_k_curve`: mean pass@k over prompts and -log of it for k = 1, 2, 4, ..., n.
- :func:`sample_efficiency`: k_B(q) / k_A(q) at coverage q, with k_X(q) the smallest k at which
  curve X reaches q, interpolated linearly in log k.
- majority-vote accuracy maj@k lives next door, in :mod:`maxrl.majority`.
- :func:`pass_rate_histogram`: the fraction of prompts whose pass rate lies in each of
  :data:`PASS_RATE_BINS` (exactly 0, log2 bins up to 1/2, (1/2, 1), exactly 1);
  :func:`pass_rate_histogram_from_counts` bins correct/n with integer arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maxrl import objectives

__all__ = [
    "pass_at_k",
    "neg_log_pass_at_k",
    "exact_pass_at_k",
    "exact_log_pass_at_k",
    "powers_of_two",
    "PassAtKCurve",
    "pass_at_k_curve",
    "k_at_coverage",
    "sample_efficiency",
    "PassRateBin",
    "PASS_RATE_BINS",
    "pass_rate_bin_counts",
    "pass_rate_histogram",
    "pass_rate_histogram_from_counts",
]


def _log_pass_ratio(n: np.ndarray, c: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log[C(n-c, k) / C(n, k)], -inf where n - c < k.

    Each distinct (n, c, k) is summed as the shorter of the two product forms,
    prod_{i=n-c+1..n} (1 - k/i) or prod_{j=0..k-1} (1 - c/(n-j)), in log1p terms with NumPy's
    pairwise summation: relative error about 1e-15 even at n = 50,000, where differences of
    log-gamma values lose five digits.
    """
    n, c, k = np.broadcast_arrays(n, c, k)
    triples, inverse = np.unique(np.stack([n, c, k]).reshape(3, -1), axis=1, return_inverse=True)
    out = np.empty(triples.shape[1])
    for j, (nn, cc, kk) in enumerate(triples.T):
        if nn - cc < kk:
            out[j] = -np.inf
        elif cc <= kk:
            out[j] = np.sum(np.log1p(-kk / np.arange(nn - cc + 1, nn + 1)))
        else:
            out[j] = np.sum(np.log1p(-cc / (nn - np.arange(kk))))
    return out[inverse.reshape(-1)].reshape(n.shape)


def _validate(n, c, k) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, c, k = (np.asarray(x) for x in (n, c, k))
    for name, x in (("n", n), ("c", c), ("k", k)):
        if not np.issubdtype(x.dtype, np.integer) and not np.all(np.mod(x, 1) == 0):
            raise ValueError(f"{name} must be whole numbers; got {x!r}")
    n, c, k = (x.astype(np.float64) for x in (n, c, k))
    if np.any(c < 0) or np.any(c > n):
        raise ValueError(f"need 0 <= c <= n; got n={n!r}, c={c!r}")
    if np.any(k < 1) or np.any(k > n):
        raise ValueError(
            f"need 1 <= k <= n (an unbiased pass@k needs at least k samples); got n={n!r}, k={k!r}"
        )
    return n, c, k


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Scalars or broadcastable arrays; returns a float for scalar input.
    """
    n_, c_, k_ = _validate(n, c, k)
    with np.errstate(over="ignore"):
        out = -np.expm1(_log_pass_ratio(n_, c_, k_))
    return float(out) if out.ndim == 0 else out


def neg_log_pass_at_k(n, c, k):
    """-log of the unbiased pass@k (inf where no sample was correct)."""
    n_, c_, k_ = _validate(n, c, k)
    x = _log_pass_ratio(n_, c_, k_)
    with np.errstate(divide="ignore"):
        # log(1 - e^x) accurately for x near 0 (pass@k tiny) and x near -inf (pass@k near 1)
        out = np.where(x > -math.log(2), -np.log(-np.expm1(x)), -np.log1p(-np.exp(x)))
    return float(out) if out.ndim == 0 else out


def exact_pass_at_k(p, k: int):
    """pass@k = 1 - (1 - p)^k for a known pass rate p (scalars, arrays or tensors)."""
    return objectives.pass_at_k(p, k)


def exact_log_pass_at_k(log_p, k: int):
    """log pass@k for a known pass rate given as log p, finite where p underflows."""
    return objectives.log_pass_at_k(log_p, k)


def powers_of_two(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, with n itself appended when it is not a power of two."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    ks = [1 << i for i in range(int(math.log2(n)) + 1)]
    return ks if ks[-1] == n else [*ks, n]


@dataclass(frozen=True)
class PassAtKCurve:
    """Mean pass@k over prompts at each k, with -log of that mean."""

    ks: tuple[int, ...]
    pass_at_k: tuple[float, ...]

    @property
    def neg_log(self) -> tuple[float, ...]:
        return tuple(-math.log(v) if v > 0 else math.inf for v in self.pass_at_k)

    def as_dict(self) -> dict[str, float]:
        out = {}
        for k, v, nl in zip(self.ks, self.pass_at_k, self.neg_log):
            out[f"pass@{k}"] = v
            out[f"neg_log_pass@{k}"] = nl
        return out


def pass_at_k_curve(n, c, ks: list[int] | None = None) -> PassAtKCurve:
    """Mean unbiased pass@k over prompts for each k.

    Args:
        n: samples per prompt (an int, or an array, one per prompt).
        c: correct samples per prompt (array).
        ks: the k to report; default 1, 2, 4, ... up to the smallest n.

    ``neg_log`` is -log of the prompt-averaged pass@k, finite whenever any prompt was solved
    (a per-prompt average of -log pass@k is infinite as soon as one prompt never is).
    """
    c = np.atleast_1d(np.asarray(c))
    n = np.broadcast_to(np.asarray(n), c.shape)
    if c.size == 0:
        raise ValueError("pass_at_k_curve needs at least one prompt")
    ks = powers_of_two(int(n.min())) if ks is None else list(ks)
    values = tuple(float(np.mean(pass_at_k(n, c, k))) for k in ks)
    return PassAtKCurve(tuple(int(k) for k in ks), values)


def k_at_coverage(ks, values, q: float) -> float:
    """The smallest k at which a pass@k curve reaches coverage q, linear in log k between points.

    Returns inf when the curve never reaches q.
    """
    ks = np.asarray(ks, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if ks.ndim != 1 or ks.shape != values.shape or ks.size == 0:
        raise ValueError("ks and values must be 1-D arrays of the same length")
    if np.any(np.diff(ks) <= 0):
        raise ValueError(f"ks must be strictly increasing; got {ks.tolist()}")
    reached = np.nonzero(values >= q)[0]
    if reached.size == 0:
        return math.inf
    j = int(reached[0])
    if j == 0:
        return float(ks[0])
    v0, v1 = values[j - 1], values[j]
    t = (q - v0) / (v1 - v0)
    return float(np.exp(np.log(ks[j - 1]) + t * (np.log(ks[j]) - np.log(ks[j - 1]))))


def sample_efficiency(curve_a: PassAtKCurve, curve_b: PassAtKCurve, q: float | None = None):
    """Sample-efficiency factor of A over B at coverage q: k_B(q) / k_A(q).

    ``q`` defaults to B's pass@k at its largest k, so the factor says how many times fewer
    samples A needs to match the best coverage B reached (the paper's "up to 20x" reading).
    Returns inf when B never reaches q and nan when neither does.
    """
    if q is None:
        q = curve_b.pass_at_k[-1]
    k_a = k_at_coverage(curve_a.ks, curve_a.pass_at_k, q)
    k_b = k_at_coverage(curve_b.ks, curve_b.pass_at_k, q)
    if math.isinf(k_a):
        return math.nan if math.isinf(k_b) else 0.0
    return k_b / k_a


# --------------------------------------------------------------------------------------------
# Distribution of per-prompt pass rates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassRateBin:
    """One bin of :data:`PASS_RATE_BINS`.

    ``name`` is the metric key: letters, digits, ``_`` and ``-`` only, so it is a JSON key and
    a TensorBoard tag as it stands (tags keep ``[A-Za-z0-9_.-/]``, the characters TensorFlow's
    tag cleaning leaves alone; the ``/`` is left to the caller's prefix). ``interval`` is the
    same bin in interval notation. A bin with ``low == high`` is that single value; otherwise
    it is low < rate <= high, or low < rate < high when ``high_open``.
    """

    name: str
    interval: str
    low: float
    high: float
    high_open: bool = False

    def contains(self, rate: float) -> bool:
        if self.low == self.high:
            return rate == self.low
        return self.low < rate and (rate < self.high if self.high_open else rate <= self.high)


def _log2_bin(i: int) -> PassRateBin:
    """(2^-(i+1), 2^-i], the first one (0, 2^-10]."""
    if i == 10:
        return PassRateBin("0_to_2pow-10", "(0,2^-10]", 0.0, 2.0**-10)
    return PassRateBin(
        f"2pow-{i + 1}_to_2pow-{i}", f"(2^-{i + 1},2^-{i}]", 2.0 ** -(i + 1), 2.0**-i
    )


PASS_RATE_BINS: tuple[PassRateBin, ...] = (
    PassRateBin("0", "0", 0.0, 0.0),
    *(_log2_bin(i) for i in range(10, 0, -1)),
    PassRateBin("2pow-1_to_1", "(1/2,1)", 0.5, 1.0, high_open=True),
    PassRateBin("1", "1", 1.0, 1.0),
)
"""The pass-rate bins, in order: exactly 0; (0, 2^-10]; (2^-10, 2^-9]; ...; (2^-2, 2^-1];
(1/2, 1); exactly 1."""

_LOG2_EDGES = np.array([b.high for b in PASS_RATE_BINS[1:11]])  # 2^-10, ..., 2^-1


def _bin_counts(index: np.ndarray) -> dict[str, int]:
    tally = np.bincount(index.ravel(), minlength=len(PASS_RATE_BINS))
    return {b.name: int(c) for b, c in zip(PASS_RATE_BINS, tally)}


def pass_rate_bin_counts(rates) -> dict[str, int]:
    """The number of prompts whose pass rate lies in each of :data:`PASS_RATE_BINS`, in order.

    A rate r goes to "0" if r == 0, to (2^-(i+1), 2^-i] if 2^-(i+1) < r <= 2^-i (any
    0 < r <= 2^-10 to the first of these), to (1/2, 1) if 1/2 < r < 1 and to "1" if r == 1.
    The edges are powers of two, so the comparisons are exact in floating point.
    """
    r = np.asarray(rates, dtype=np.float64).ravel()
    if r.size == 0:
        raise ValueError("pass_rate_bin_counts needs at least one pass rate")
    if not np.all((r >= 0) & (r <= 1)):
        bad = float(r[~((r >= 0) & (r <= 1))][0])
        raise ValueError(f"pass rates must lie in [0, 1]; got {bad!r}")
    index = np.where(
        r == 0,
        0,
        np.where(r == 1, 12, np.where(r > 0.5, 11, 1 + np.searchsorted(_LOG2_EDGES, r))),
    )
    return _bin_counts(index)


def pass_rate_histogram(rates) -> dict[str, float]:
    """The fraction of prompts whose pass rate lies in each of :data:`PASS_RATE_BINS`.

    Keys are the bins' names, in order (see :func:`pass_rate_bin_counts` for the rule). Each
    value is count / (number of prompts), rounded once. The bins partition the prompts, so the
    fractions sum to 1 exactly as rationals; as floats, exactly when the number of prompts is a
    power of two and otherwise to within an ulp (:func:`pass_rate_bin_counts` gives the counts).
    """
    counts = pass_rate_bin_counts(rates)
    total = sum(counts.values())
    return {name: c / total for name, c in counts.items()}


def pass_rate_histogram_from_counts(n, correct) -> dict[str, float]:
    """:func:`pass_rate_histogram` of correct / n, binned in integer arithmetic.

    Args:
        n: samples per prompt (an int, or an array, one per prompt).
        correct: correct samples per prompt (array).

    correct / n <= 2^-i is decided as correct * 2^i <= n in int64, so no rounding can move a
    prompt across an edge (for n < 2^53).
    """
    c, n = (x.ravel() for x in np.broadcast_arrays(np.asarray(correct), np.asarray(n)))
    if c.size == 0:
        raise ValueError("pass_rate_histogram_from_counts needs at least one prompt")
    for name, x in (("n", n), ("correct", c)):
        if not np.issubdtype(x.dtype, np.integer):
            whole = np.mod(x, 1) == 0
            if not np.all(whole):
                i = int(np.argmin(whole))
                raise ValueError(
                    f"{name} must be whole numbers; got {x.flat[i].item()!r} at prompt {i}"
                )
    c, n = c.astype(np.int64), n.astype(np.int64)
    bad = (n < 1) | (c < 0) | (c > n)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"need n >= 1 and 0 <= correct <= n; got n={n[i]}, correct={c[i]} at prompt {i}"
        )
    # for 0 < c <= n/2: the bin (2^-(i+1), 2^-i] with i the largest of 1..10 with c 2^i <= n
    largest = np.zeros(c.shape, dtype=np.int64)
    for i in range(1, 11):
        largest = np.where(c * (1 << i) <= n, i, largest)
    index = np.where(c == 0, 0, np.where(c == n, 12, np.where(2 * c > n, 11, 11 - largest)))
    counts = _bin_counts(index)
    return {name: v / c.size for name, v in counts.items()}
