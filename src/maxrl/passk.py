r"""Evaluating pass@k (docs/method.md, section 4).

- :func:`pass_at_k`: the unbiased estimate from n samples with c correct (Chen et al. 2021),
  pass@k = 1 - C(n-c, k) / C(n, k), computed in log space so that n in the tens of thousands
  keeps full precision. Never the bootstrap estimate: it is biased.
- :func:`exact_pass_at_k`: 1 - (1 - p)^k for a known pass rate (classification), and
  :func:`exact_log_pass_at_k` its log from log p.
- :func:`pass_at_k_curve`: mean pass@k over prompts and -log of it for k = 1, 2, 4, ..., n.
- :func:`sample_efficiency`: k_B(q) / k_A(q) at coverage q, with k_X(q) the smallest k at which
  curve X reaches q, interpolated linearly in log k.
- :func:`maj_at_k`: the unbiased maj@k from n samples, the mean over all k-subsets of the samples
  of "the subset's majority answer is correct" (a tie among t + 1 most-voted answers counts
  1/(t + 1)), counted exactly per vote profile instead of enumerating subsets.
  :func:`maj_at_k_from_answers` takes the answers themselves, :func:`maj_at_k_curve` averages
  over prompts for k = 1, 2, 4, ..., n.
- :func:`pass_rate_histogram`: the fraction of prompts whose pass rate lies in each of
  :data:`PASS_RATE_BINS` (exactly 0, log2 bins up to 1/2, (1/2, 1), exactly 1);
  :func:`pass_rate_histogram_from_counts` bins correct/n with integer arithmetic.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from fractions import Fraction

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
    "maj_at_k",
    "maj_at_k_from_answers",
    "MajAtKCurve",
    "maj_at_k_curve",
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
# maj@k: majority-vote accuracy
# --------------------------------------------------------------------------------------------


def _binomials(m: int, lo: int, hi: int) -> list[int]:
    """[C(m, b) for b = lo..hi] (zero past m), by C(m, b) = C(m, b - 1) (m - b + 1) / b."""
    if hi < lo:
        return []
    v = math.comb(m, lo)
    out = [v]
    for b in range(lo + 1, hi + 1):
        v = v * (m - b + 1) // b
        out.append(v)
    return out


def _partial_vandermonde(c: int, free: int, top: int, lo: int, hi: int, row_c: list[int]):
    """f(m) = sum_{a=0..top} C(c, a) C(free, m - a) for m = lo..hi (top < c), as a list.

    One direct sum at m = lo, then the recurrence
    (m + 1) f(m + 1) = (free + c - m) f(m) - (c - top) C(c, top) C(free, m - top),
    which follows from (m + 1 - a) C(free, m + 1 - a) = (free - m + a) C(free, m - a) and
    a C(c, a) = (c - a + 1) C(c, a - 1); every division is exact.
    """
    b_lo = max(0, lo - top)
    bin_free = _binomials(free, b_lo, max(b_lo, hi - top))  # C(free, b) at index b - b_lo
    v = sum(row_c[a] * math.comb(free, lo - a) for a in range(min(top, lo) + 1))
    out = [v]
    k = (c - top) * row_c[top]
    for m in range(lo, hi):
        b = m - top
        v = ((free + c - m) * v - (k * bin_free[b - b_lo] if b >= b_lo else 0)) // (m + 1)
        out.append(v)
    return out


def _one_can_reach(cons: Sequence[int], j: int, d: int, n_other: int, binom) -> list[int]:
    """The tie profile [N_0, N_1] when 2j > d, so that at most one other answer reaches j votes.

    N_1 = sum_i C(c_i, j) C(n_other - c_i, d - j) and
    N_0 = C(n_other, d) - N_1 - sum_i sum_{a > j} C(c_i, a) C(n_other - c_i, d - a).
    """
    n1 = over = 0
    for c, mult in Counter(cons).items():
        hi = min(c, d)
        rest = _binomials(n_other - c, d - hi, d - j)  # C(n_other - c, d - a) at index hi - a
        row = binom[c]
        n1 += mult * row[j] * rest[hi - j]
        over += mult * sum(row[a] * rest[hi - a] for a in range(j + 1, hi + 1))
    return [math.comb(n_other, d) - n1 - over, n1]


def _tie_profile(cons: list[int], j: int, d: int, free: int, binom, prefix) -> list[int]:
    """[N_0, N_1, ...]: N_t = [x^d y^t] (1+x)^free prod_i (sum_{a<j} C(c_i,a) x^a + C(c_i,j) x^j y).

    ``cons`` (ascending) are the counts c_i >= j of the other answers, ``free`` the samples that
    cannot reach j votes. The product is kept as rows t = 0, 1, ... (t answers at exactly j),
    each a polynomial in r = the votes of the answers below j, packed into one Python int at
    a fixed number of bits per coefficient (Kronecker substitution), so that multiplying by a
    factor is a few big-int operations. Each row keeps only the coefficients that can still
    end at x = d: at most d, and at least d - free - j * (answers still to come). The most
    frequent count enters as one power, (A + h y)^g = sum_t C(g, t) h^t A^(g-t) y^t, and the
    largest one is not multiplied in: it is summed against the rows at the end.
    """
    t_cap = d // j
    *state, last = cons
    rows: list[tuple[int, int]] = [(1, 0)]  # (packed coefficients, index of the lowest kept)
    nbytes = 1
    if state:
        # every coefficient counts subsets of the samples in `state`, of at most d of them
        n_state = sum(state)
        bound = min(
            math.prod(prefix[c][j] for c in state), math.comb(n_state, min(d, n_state // 2))
        )
        nbytes = -(-bound.bit_length() // 8)
        width = 8 * nbytes

        def window(v: int, off: int, lo: int, hi: int) -> tuple[int, int]:
            if lo > off:
                v >>= (lo - off) * width
                off = lo
            bits = (hi - off + 1) * width  # > 0: lo <= hi, as free >= 0
            return (v & ((1 << bits) - 1) if v >> bits else v), off

        def factor(c: int):
            a = binom[c][:j]
            shift_cost = sum(1 + x.bit_length() / 30 for x in a)
            digits = j * width / 30
            if shift_cost < 5 * (digits**0.585 if digits > 70 else digits):

                def times(v: int) -> int:
                    out = v
                    for i in range(1, j):
                        out += a[i] * (v << (i * width))
                    return out

                return times
            packed = int.from_bytes(b"".join(x.to_bytes(nbytes, "little") for x in a), "little")
            return packed.__mul__

        counts = Counter(state)
        c1, g = max(counts.items(), key=lambda item: (item[1], item[0]))
        rest = sorted(c for c, m in counts.items() for _ in range(m - (g if c == c1 else 0)))
        x_lo = d - free - j * (len(rest) + 1)
        times, h = factor(c1), binom[c1][j]
        rows = [(0, 0)] * (min(g, t_cap) + 1)
        power, off = 1, 0
        for p in range(g + 1):
            if p:
                power = times(power)
            power, off = window(power, off, x_lo - j * (g - p), d)
            t = g - p
            if t < len(rows):
                rows[t] = window(math.comb(g, t) * h**t * power, off, x_lo - j * t, d - j * t)
        for i, c in enumerate(rest):
            x_lo = d - free - j * (len(rest) - i)
            times, h = factor(c), binom[c][j]
            new = []
            for t in range(min(len(rows), t_cap) + 1):
                v, off = rows[t] if t < len(rows) else (0, rows[t - 1][1])
                v = times(v)
                if t:  # row t - 1 starts no lower than row t: the bounds fall by j per row
                    pv, poff = rows[t - 1]
                    v += (h * pv) << ((poff - off) * width)
                new.append(window(v, off, x_lo - j * t, d - j * t))
            rows = new
    coefs = []
    for v, off in rows:
        raw = v.to_bytes(-(-v.bit_length() // (8 * nbytes)) * nbytes, "little")
        coefs.append(
            (
                off,
                [int.from_bytes(raw[i : i + nbytes], "little") for i in range(0, len(raw), nbytes)],
            )
        )
    # the last (largest) answer: below j votes through f(m) = sum_{a<j} C(c, a) C(free, m - a),
    # at exactly j votes through C(c, j) C(free, m - j)
    m_lo = max(0, min(d - j * t - off - len(cs) + 1 for t, (off, cs) in enumerate(coefs)))
    m_hi = max(m_lo, d)
    below = _partial_vandermonde(last, free, j - 1, m_lo, m_hi, binom[last])
    bin_free = _binomials(free, 0, d)
    h_last = binom[last][j]
    profile = []
    for t in range(min(t_cap, len(coefs)) + 1):
        top = d - j * t
        total = 0
        if t < len(coefs):
            off, cs = coefs[t]
            total = sum(
                x * below[top - off - i - m_lo]
                for i, x in enumerate(cs)
                if x and top - off - i >= m_lo
            )
        if t:
            off, cs = coefs[t - 1]
            total += h_last * sum(
                x * bin_free[top - off - i] for i, x in enumerate(cs) if x and top - off - i >= 0
            )
        profile.append(total)
    return profile


def _maj_at_k_fraction(counts: list[int], correct: int | None, k: int, unanswered: int):
    n = sum(counts) + unanswered
    c_star = 0 if correct is None else counts[correct]
    if c_star == 0:
        return Fraction(0)
    others = sorted((c for i, c in enumerate(counts) if i != correct and c > 0), reverse=True)
    n_other = n - c_star
    binom = {c: _binomials(c, 0, c) for c in set(others)}
    prefix = {c: list(itertools.accumulate(row)) for c, row in binom.items()}
    binom_star = _binomials(c_star, 0, c_star)
    by_ties: list[int] = []  # by_ties[t] = sum_j C(c*, j) N_{j,t}
    n_reaching = len(others)  # others[:n_reaching] are the counts >= j
    for j in range(max(1, k - n_other), min(c_star, k) + 1):
        d = k - j
        while n_reaching and others[n_reaching - 1] < j:
            n_reaching -= 1
        cons = others[:n_reaching][::-1] if d >= j else []
        free = n_other - sum(cons)
        if not cons:
            profile = [math.comb(n_other, d)]
        elif j * len(cons) + free < d:
            continue  # the others cannot fill d places with at most j votes each
        elif 2 * j > d:
            profile = _one_can_reach(cons, j, d, n_other, binom)
        else:
            profile = _tie_profile(cons, j, d, free, binom, prefix)
        by_ties.extend([0] * (len(profile) - len(by_ties)))
        for t, ways in enumerate(profile):
            by_ties[t] += binom_star[j] * ways
    lcm = math.lcm(*range(1, len(by_ties) + 1))
    numerator = sum(ways * (lcm // (t + 1)) for t, ways in enumerate(by_ties))
    return Fraction(numerator, lcm * math.comb(n, k))


def _whole(x, what: str) -> int:
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{what} must be a whole number, not a bool; got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise ValueError(f"{what} must be a whole number; got {x!r}") from None


def maj_at_k(
    counts: Sequence[int], correct: int | None, k: int, unanswered: int = 0, *, exact: bool = False
) -> float | Fraction:
    r"""Unbiased maj@k from n samples of one prompt, grouped by answer.

    Args:
        counts: samples per distinct answer (answers compared after normalisation, e.g. math
            answers as canonical strings); zero counts are allowed.
        correct: index into ``counts`` of the correct answer, or None when no sample has it
            (maj@k is then 0).
        k: samples per vote, 1 <= k <= n = sum(counts) + unanswered.
        unanswered: samples with no answer. They fill places in a subset but never vote, so a
            subset with no answered sample has no majority and counts as wrong.
        exact: return the exact :class:`fractions.Fraction` instead of a float.

    maj@k of a policy is the probability that the majority answer of k samples from it is
    correct. From n >= k samples the estimate is the U-statistic

        maj@k = (1 / C(n, k)) sum over k-subsets K of w(K),
        w(K) = 1 / |M(K)| if the correct answer is in M(K), else 0,

    where M(K) is the set of most-voted answers in K: a tie among t + 1 answers is a uniformly
    random pick among them. It is unbiased for the policy's maj@k with that tie rule. It is
    computed without enumerating subsets: with c* samples of the correct answer, counts c_i of
    the others and u unanswered,

        C(n, k) maj@k = sum_{j >= 1} C(c*, j) sum_{t >= 0} N_{j,t} / (t + 1),
        N_{j,t} = [x^(k-j) y^t] (1+x)^(u + sum_{c_i < j} c_i)
                  prod_{c_i >= j} (sum_{a < j} C(c_i, a) x^a + C(c_i, j) x^j y),

    N_{j,t} counting the ways to fill the other k - j places with every other answer at most j
    votes and exactly t of them at j. The sums run in exact integer arithmetic with one
    division at the end: the float is the correctly rounded value for any n. On one core, a
    call at n = 2048 with 300 answers of Zipf-like counts takes under 0.2 s for k <= 64 and 1
    to 3 s for k = 256..1024; many answers of similar mid-sized counts are the slow case (10
    to 20 s for answers of 1, 2, ..., 60 samples at k = 512).
    """
    counts = [_whole(c, f"counts[{i}]") for i, c in enumerate(counts)]
    for i, c in enumerate(counts):
        if c < 0:
            raise ValueError(f"counts[{i}] = {c} is negative; counts are samples per answer")
    unanswered = _whole(unanswered, "unanswered")
    if unanswered < 0:
        raise ValueError(f"unanswered = {unanswered} is negative; it counts samples")
    k = _whole(k, "k")
    n = sum(counts) + unanswered
    if k < 1:
        raise ValueError(f"k = {k}; maj@k needs k >= 1")
    if k > n:
        raise ValueError(
            f"k = {k} exceeds n = {n} samples (sum(counts) + unanswered); "
            "the unbiased maj@k needs k <= n"
        )
    if correct is not None:
        correct = _whole(correct, "correct")
        if not 0 <= correct < len(counts):
            raise ValueError(
                f"correct = {correct} is not an index into counts (0..{len(counts) - 1}); "
                "pass None when no sample has the correct answer"
            )
    value = _maj_at_k_fraction(counts, correct, k, unanswered)
    return value if exact else value.numerator / value.denominator


def maj_at_k_from_answers(
    answers: Sequence[Hashable | None], gold: Hashable, k: int, *, exact: bool = False
) -> float | Fraction:
    """:func:`maj_at_k` from one prompt's sampled answers: equal answers vote together, None is
    a sample with no answer (it never votes) and ``gold`` is the correct answer."""
    if gold is None:
        raise ValueError(
            "gold is None; pass the correct answer (a prompt without one has no maj@k)"
        )
    votes = Counter(a for a in answers if a is not None)
    keys = list(votes)
    correct = keys.index(gold) if gold in votes else None
    unanswered = sum(a is None for a in answers)
    return maj_at_k(list(votes.values()), correct, k, unanswered, exact=exact)


@dataclass(frozen=True)
class MajAtKCurve:
    """Mean maj@k over prompts at each k."""

    ks: tuple[int, ...]
    maj_at_k: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        return {f"maj@{k}": v for k, v in zip(self.ks, self.maj_at_k)}


def maj_at_k_curve(
    answers: Sequence[Sequence[Hashable | None]],
    golds: Sequence[Hashable],
    ks: Sequence[int] | None = None,
) -> MajAtKCurve:
    """Mean unbiased maj@k over prompts for each k.

    Args:
        answers: per prompt, its sampled answers (None: no answer).
        golds: per prompt, the correct answer.
        ks: the k to report; default 1, 2, 4, ... up to the smallest number of samples.

    Each prompt's maj@k is exact; the mean over prompts is a float sum.
    """
    if len(answers) != len(golds):
        raise ValueError(
            f"{len(answers)} prompts of answers but {len(golds)} golds; pass one gold per prompt"
        )
    if len(answers) == 0:
        raise ValueError("maj_at_k_curve needs at least one prompt")
    if ks is None:
        ks = powers_of_two(min(len(a) for a in answers))
    ks = [_whole(k, f"ks[{i}]") for i, k in enumerate(ks)]
    values = tuple(
        math.fsum(maj_at_k_from_answers(a, g, k) for a, g in zip(answers, golds)) / len(answers)
        for k in ks
    )
    return MajAtKCurve(tuple(ks), values)


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
