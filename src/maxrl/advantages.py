r"""Group advantage estimators, side by side (docs/method.md, section 3; docs/estimators.md).

Convention: a prompt has a group of N rollouts with rewards r_1..r_N and scores
S_i = grad log pi(z_i | x). An estimator returns advantages A_1..A_N, and the group's gradient
estimate is the group MEAN (1/N) sum_i A_i S_i; the matching surrogate loss of one group is
-(1/N) sum_i A_i log pi(z_i | x). With K = sum_i r_i and rbar = K / N:

============  ==============================================  ===================================
name          A_i                                             E[gradient estimate]
============  ==============================================  ===================================
reinforce     r_i                                             grad p            (J_1)
dr_grpo       r_i - rbar                                      (1 - 1/N) grad p
rloo          N/(N-1) (r_i - rbar)                            grad p            (J_1)
grpo          (r_i - rbar) / (std + eps)                      biased; population weight
                                                              1/sqrt(p(1-p))
maxrl         (r_i - rbar) / rbar;  0 for the group if K = 0  grad J_{N-1}
maxrl_t       N c_{T,N}(K) r_i - b_i                          grad J_T, 1 <= T <= N
pass_at_k     k [r_i + (1-r_i)(1 - C(N-K-1,k-1)/C(N-1,k-1))]  grad pass@k, 1 <= k <= N
              - b_i
differential  (r_i - rbar)/(std_pop + eps) - c_s m_i r_i      none (a heuristic)
_smoothing    + c_f m_i (1 - r_i)
============  ==============================================  ===================================

``maxrl`` is the paper's Algorithm 1. It is exactly unbiased for J_{N-1}, not J_N: dropping the
group when K = 0 removes the zero-mean control variate -(1/N) sum_i S_i on all-fail groups, whose
expectation is (1 - p)^(N-1) grad p. Keeping the baseline on all-fail groups (A = -1 for all)
gives ``maxrl_t`` with T = N and ``baseline="constant"``, unbiased for J_N.

``maxrl_t`` averages the paper's Theorem-2 estimator over all T-subsets of the group (a
U-statistic). By Vandermonde's identity its success coefficient has the closed form

    c_{T,N}(K) = (1/C(N,T)) sum_{k=1..min(T,K)} (1/k) C(K-1,k-1) C(N-K,T-k)
               = (1 - C(N-K,T)/C(N,T)) / K,

the chance that a random T-subset holds a success, shared among the K successes. Its baseline
b_i is either the constant 1 (``baseline="constant"``: A = N c - 1 for a success, -1 for a
failure, the default) or, when T < N, the same subset-hit probability computed
from the other N-1 rollouts, b_i = 1 - C(N-1-K_{-i},T)/C(N-1,T) (``baseline="loo"``), or none.
A baseline that depends only on the other rollouts has E[b_i S_i] = E[b_i] E[S_i] = 0, so all
three are exactly unbiased for J_T. The leave-one-out baseline gives all-fail groups zero
advantage; which baseline has the lowest variance depends on p, T and the policy, and none wins
everywhere (``benchmarks/estimator_variance.py`` prints the comparison; docs/estimators.md has
the figures).

``pass_at_k`` is the U-statistic of max(r) sum_{j in subset} S_j over k-subsets (the gradient
of pass@k; Walder and Karkhanis 2025, PKPO) with the leave-one-out unbiased pass@k of the other
rollouts as baseline, b_i = k (1 - C(N-1-K_{-i},k)/C(N-1,k)), when k < N (none when k = N).

``differential_smoothing`` is the paper's Differential Smoothing baseline (Table 3), as its code
computes it: GRPO with the population standard deviation, then, with m_i the mean sampling
log-probability of rollout i's response tokens, A_i -= c_s m_i for a correct rollout and
A_i += c_f m_i for a wrong one (c_s = c_f = 0.05). It is the one estimator that reads more than
the rewards: pass ``mean_logprob`` (groups, N) to :func:`compute` or the prepared estimator.

Every other estimator depends on a group only through (r_i, N, K, sum r^2), so dense groups and
ragged groups (flat rewards plus group ids) share one segment-sum implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "compute",
    "prepare",
    "names",
    "get",
    "validate_params",
    "Estimator",
    "PreparedEstimator",
]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: its function, parameters and documented target."""

    name: str
    fn: Callable[..., torch.Tensor]
    target: str
    binary: bool  # rewards must be 0/1
    min_group: int  # smallest group the estimator is defined on
    params: dict[str, Any] = field(default_factory=dict)  # name -> default (None: required)
    source: str = ""
    uses_logprobs: bool = False  # reads each rollout's mean sampling log-probability too


_REGISTRY: dict[str, Estimator] = {}


def _register(name, *, target, binary, min_group, params=None, source="", uses_logprobs=False):
    def deco(fn):
        _REGISTRY[name] = Estimator(
            name, fn, target, binary, min_group, dict(params or {}), source, uses_logprobs
        )
        return fn

    return deco


def names() -> list[str]:
    """The registered estimator names."""
    return list(_REGISTRY)


def get(name: str) -> Estimator:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown advantage estimator {name!r}; choose one of {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# Group statistics: every estimator is a function of r_i and its group's (N, K, sum of squares).


@dataclass
class _Groups:
    r: torch.Tensor  # rewards, float64: (groups, N) dense or (B,) flat
    n: torch.Tensor  # same shape: the size of each element's group
    s: torch.Tensor  # same shape: the group's sum of rewards
    q: torch.Tensor  # same shape: the group's sum of squared rewards
    m: torch.Tensor | None = None  # same shape: each rollout's mean sampling log-probability


def _log_comb(n: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """log C(n, k) for n >= k >= 0 (float64; callers mask n < k)."""
    k = torch.as_tensor(k, dtype=torch.float64)
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _comb_ratio(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """C(a, k) / C(b, k) for integers 0 <= a <= b, b >= k; 0 where a < k."""
    ok = a >= k
    a_safe = torch.where(ok, a, torch.full_like(a, float(k)))
    ratio = torch.exp(_log_comb(a_safe, k) - _log_comb(b, k))
    return torch.where(ok, ratio, torch.zeros_like(ratio))


# ---------------------------------------------------------------------------------------------
# The estimators.


@_register("reinforce", target="grad p (J_1)", binary=False, min_group=1, source="Williams 1992")
def _reinforce(g: _Groups) -> torch.Tensor:
    return g.r.clone()


@_register(
    "dr_grpo",
    target="(1 - 1/N) grad p",
    binary=False,
    min_group=2,
    source="Liu et al. 2025 (Dr. GRPO)",
)
def _dr_grpo(g: _Groups) -> torch.Tensor:
    return g.r - g.s / g.n


@_register("rloo", target="grad p (J_1)", binary=False, min_group=2, source="Ahmadian et al. 2024")
def _rloo(g: _Groups) -> torch.Tensor:
    return g.n / (g.n - 1) * (g.r - g.s / g.n)


@_register(
    "grpo",
    target="biased; population weight 1/sqrt(p(1-p))",
    binary=False,
    min_group=2,
    params={"eps": 1e-6, "unbiased_std": True},
    source="Shao et al. 2024 (DeepSeekMath)",
)
def _grpo(g: _Groups, eps: float, unbiased_std: bool) -> torch.Tensor:
    mean = g.s / g.n
    # sum (r - mean)^2 = Q - S^2/N; clamp the rounding error of a constant group to 0
    ss = (g.q - g.s * mean).clamp_min(0)
    std = torch.sqrt(ss / (g.n - 1 if unbiased_std else g.n))
    scale = std + eps
    # a constant group has r = mean: advantage 0 (not 0/0 when eps = 0)
    return torch.where(scale > 0, (g.r - mean) / torch.where(scale > 0, scale, 1.0), 0.0)


@_register(
    "maxrl",
    target="grad J_{N-1} (Algorithm 1; zero advantage for all-fail groups)",
    binary=True,
    min_group=2,
    source="Tajwar et al. 2026, Algorithm 1",
)
def _maxrl(g: _Groups) -> torch.Tensor:
    # K >= 1 gives rbar >= 1/N with binary rewards, so the division is exact with no epsilon
    has_success = g.s > 0
    rbar = torch.where(has_success, g.s / g.n, torch.ones_like(g.s))
    return torch.where(has_success, (g.r - rbar) / rbar, torch.zeros_like(g.r))


@_register(
    "maxrl_t",
    target="grad J_T, 1 <= T <= N",
    binary=True,
    min_group=2,
    params={"T": None, "baseline": "constant"},
    source="Tajwar et al. 2026, Theorem 2 averaged over T-subsets",
)
def _maxrl_t(g: _Groups, T: int, baseline: str) -> torch.Tensor:
    k_succ = g.s
    hit = 1 - _comb_ratio(g.n - k_succ, g.n, T)  # P(a random T-subset holds a success)
    safe_k = torch.where(k_succ > 0, k_succ, torch.ones_like(k_succ))
    score = torch.where(k_succ > 0, g.n * hit / safe_k, torch.zeros_like(hit)) * g.r
    return score - _subset_baseline(g, T, baseline, fallback=1.0)


@_register(
    "pass_at_k",
    target="grad pass@k = k (1-p)^(k-1) grad p, 1 <= k <= N",
    binary=True,
    min_group=2,
    params={"k": None, "baseline": "loo"},
    source="Walder and Karkhanis 2025 (PKPO), unbiased subset form",
)
def _pass_at_k(g: _Groups, k: int, baseline: str) -> torch.Tensor:
    fails_others = g.n - g.s - 1  # failures among the other rollouts of a failure
    fail_weight = 1 - _comb_ratio(fails_others.clamp_min(0), g.n - 1, k - 1)
    score = k * torch.where(g.r > 0, torch.ones_like(g.r), fail_weight)
    return score - k * _subset_baseline(g, k, baseline, fallback=0.0)


@_register(
    "differential_smoothing",
    target="none (a heuristic: GRPO plus a log-probability term)",
    binary=True,
    min_group=2,
    params={"eps": 1e-6, "c_correct": 0.05, "c_incorrect": 0.05},
    source="Tajwar et al. 2026, Table 3 baseline (Differential Smoothing, as the paper's code)",
    uses_logprobs=True,
)
def _differential_smoothing(
    g: _Groups, eps: float, c_correct: float, c_incorrect: float
) -> torch.Tensor:
    adv = _grpo(g, eps=eps, unbiased_std=False)
    return adv - c_correct * g.m * g.r + c_incorrect * g.m * (1 - g.r)


def _subset_baseline(g: _Groups, order: int, baseline: str, fallback: float) -> torch.Tensor:
    """Leave-one-out P(a random ``order``-subset of the other N-1 rollouts holds a success).

    Depends only on the other rollouts, so it keeps the estimator unbiased. Where the group is
    too small for it (order = N) the constant ``fallback`` stands in: 1 for ``maxrl_t`` (the
    constant baseline), 0 for ``pass_at_k``.
    """
    if baseline == "constant":
        return torch.ones_like(g.r)
    if baseline == "none":
        return torch.zeros_like(g.r)
    k_others = g.s - g.r
    loo_ok = g.n - 1 >= order
    m = torch.where(loo_ok, g.n - 1, torch.full_like(g.n, float(order)))
    b = 1 - _comb_ratio((m - k_others).clamp_min(0), m, order)
    return torch.where(loo_ok, b, torch.full_like(b, fallback))


_BASELINES = {"maxrl_t": ("loo", "constant", "none"), "pass_at_k": ("loo", "none")}


# ---------------------------------------------------------------------------------------------
# The public call.


def validate_params(name: str, rollouts_per_prompt: int | None = None, **params) -> dict:
    """Check an estimator's name and parameters; return them with defaults filled in.

    ``rollouts_per_prompt`` (the smallest group size, when known) bounds T and k.
    """
    est = get(name)
    extra = {"reward_threshold"}
    unknown = set(params) - set(est.params) - extra
    if unknown:
        accepted = ", ".join(sorted(set(est.params) | extra))
        raise ValueError(
            f"estimator {name!r} takes no parameter {sorted(unknown)[0]!r}; it accepts: {accepted}"
        )
    full = {**est.params, **{k: v for k, v in params.items() if k in est.params}}
    for key, value in full.items():
        if value is None:
            raise ValueError(f"estimator {name!r} needs the parameter {key!r} (e.g. {key}=4)")
    n = rollouts_per_prompt
    if n is not None and n < est.min_group:
        raise ValueError(
            f"estimator {name!r} needs groups of at least {est.min_group} rollouts; got a group "
            f"of {n}. Raise rollouts_per_prompt, or use 'reinforce', which needs no group"
        )
    for key in ("T", "k"):
        if key in full:
            v = full[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"estimator {name!r}: {key} must be an integer >= 1; got {v!r}")
            if n is not None and v > n:
                raise ValueError(
                    f"estimator {name!r}: {key}={v} exceeds the group size N={n}; an unbiased "
                    f"estimate needs 1 <= {key} <= N (raise rollouts_per_prompt or lower {key})"
                )
    if "baseline" in full and full["baseline"] not in _BASELINES[name]:
        raise ValueError(
            f"estimator {name!r}: baseline must be one of {_BASELINES[name]}; got "
            f"{full['baseline']!r}"
        )
    if "eps" in full and not full["eps"] >= 0:
        raise ValueError(f"estimator {name!r}: eps must be >= 0; got {full['eps']!r}")
    threshold = params.get("reward_threshold")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise ValueError(f"reward_threshold must be a number; got {threshold!r}")
    return full


def compute(
    name: str,
    rewards: torch.Tensor | Sequence,
    *,
    group_ids: torch.Tensor | Sequence[int] | None = None,
    reward_threshold: float | None = None,
    mean_logprob: torch.Tensor | Sequence | None = None,
    **params,
) -> torch.Tensor:
    """Advantages of estimator ``name`` for groups of rewards.

    Args:
        name: one of :func:`names`.
        rewards: float tensor of shape (groups, rollouts_per_prompt), or flat (B,) with
            ``group_ids``.
        group_ids: for flat rewards, an integer group label per rollout (ragged groups: any
            sizes, any order).
        reward_threshold: binarise rewards as ``r >= reward_threshold`` before estimating.
        mean_logprob: each rollout's mean sampling log-probability over its response tokens,
            the shape of ``rewards``; needed by ``differential_smoothing`` alone.
        **params: the estimator's parameters (``T`` for maxrl_t, ``k`` for pass_at_k, ...).

    Returns:
        Advantages with the shape and dtype of ``rewards`` (float32 for integer input). The
        arithmetic runs in float64.
    """
    if group_ids is None:
        r = torch.as_tensor(rewards)
        if r.ndim != 2:
            raise ValueError(
                f"rewards must have shape (groups, rollouts_per_prompt); got shape "
                f"{tuple(r.shape)}. For flat or ragged batches pass group_ids"
            )
        prepared = prepare(name, r.shape[1], reward_threshold=reward_threshold, **params)
        return prepared(r, mean_logprob=mean_logprob)
    est = get(name)
    r = torch.as_tensor(rewards)
    out_dtype = r.dtype if r.is_floating_point() else torch.float32
    flat = r.detach().to(torch.float64)
    gid = torch.as_tensor(group_ids)
    if flat.ndim != 1 or gid.shape != flat.shape:
        raise ValueError(
            f"with group_ids, rewards must be flat (B,) and group_ids the same shape; got "
            f"rewards {tuple(flat.shape)} and group_ids {tuple(gid.shape)}"
        )
    if gid.dtype.is_floating_point or gid.dtype == torch.bool:
        raise ValueError(f"group_ids must be integers; got dtype {gid.dtype}")
    if flat.numel() == 0:
        return torch.zeros_like(r, dtype=out_dtype)
    _, gid = torch.unique(gid, return_inverse=True)
    flat = _checked(est, flat, gid, reward_threshold)
    n_groups = int(gid.max()) + 1
    zeros = torch.zeros(n_groups, dtype=torch.float64)
    sizes = zeros.index_add(0, gid, torch.ones_like(flat))
    full = validate_params(name, int(sizes.min()), **params)
    sums = zeros.index_add(0, gid, flat)
    sq = zeros.index_add(0, gid, flat * flat)
    m = _mean_logprob(est, mean_logprob, flat.shape)
    groups = _Groups(r=flat, n=sizes[gid], s=sums[gid], q=sq[gid], m=m)
    sizes = sizes.long().unique().tolist()
    return _estimate(est, groups, full, sizes).reshape(r.shape).to(out_dtype)


@dataclass(frozen=True)
class PreparedEstimator:
    """An estimator bound to its parameters and group size, validated once (:func:`prepare`).

    Calling it on (groups, N) rewards gives exactly what :func:`compute` gives for the same
    arguments, without validating the parameters again; the rewards are still checked (finite,
    and 0/1 for a binary estimator).
    """

    estimator: Estimator
    group_size: int
    params: dict[str, Any]
    reward_threshold: float | None = None

    def __call__(
        self, rewards: torch.Tensor | Sequence, mean_logprob: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Advantages of (groups, N) rewards; ``mean_logprob`` (same shape) for an estimator
        that reads the log-probabilities (``differential_smoothing``), ignored by the others."""
        r = torch.as_tensor(rewards)
        n = self.group_size
        if r.ndim != 2 or r.shape[1] != n:
            raise ValueError(
                f"rewards must have shape (groups, {n}) for {self.estimator.name!r} prepared "
                f"with N={n}; got shape {tuple(r.shape)}"
            )
        out_dtype = r.dtype if r.is_floating_point() else torch.float32
        if r.numel() == 0:
            return torch.zeros_like(r, dtype=out_dtype)
        flat = _checked(self.estimator, r.detach().to(torch.float64), None, self.reward_threshold)
        groups = _Groups(
            r=flat,
            n=torch.ones_like(flat) * n,
            s=flat.sum(1, keepdim=True).expand_as(flat),
            q=(flat * flat).sum(1, keepdim=True).expand_as(flat),
            m=_mean_logprob(self.estimator, mean_logprob, flat.shape),
        )
        adv = _estimate(self.estimator, groups, self.params, [n])
        return adv.reshape(r.shape).to(out_dtype)


def prepare(
    name: str, rollouts_per_prompt: int, *, reward_threshold: float | None = None, **params
) -> PreparedEstimator:
    """Estimator ``name`` for groups of ``rollouts_per_prompt``, its parameters checked now.

    A trainer resolves its estimator once with this and calls the result every step.
    """
    full = validate_params(name, rollouts_per_prompt, reward_threshold=reward_threshold, **params)
    return PreparedEstimator(get(name), rollouts_per_prompt, full, reward_threshold)


def _estimate(est: Estimator, g: _Groups, params: dict, sizes: list[int]) -> torch.Tensor:
    if est.binary and not est.uses_logprobs:
        return _tabulated(est, g, params, sizes)
    return est.fn(g, **params)


def _mean_logprob(est: Estimator, mean_logprob, shape) -> torch.Tensor | None:
    if not est.uses_logprobs:
        return None
    if mean_logprob is None:
        raise ValueError(
            f"estimator {est.name!r} reads each rollout's mean sampling log-probability; pass "
            f"mean_logprob= (the shape of the rewards)"
        )
    m = torch.as_tensor(mean_logprob).detach().to(torch.float64)
    if m.shape != shape or not bool(torch.isfinite(m).all()):
        raise ValueError(
            f"mean_logprob must be finite and shaped like the rewards {tuple(shape)}; got shape "
            f"{tuple(m.shape)}"
        )
    return m


def _checked(est: Estimator, flat: torch.Tensor, gid, reward_threshold) -> torch.Tensor:
    """Rewards after the finite check, then binarised or checked binary."""
    _check_finite(est.name, flat, gid)
    if reward_threshold is not None:
        return (flat >= reward_threshold).to(torch.float64)
    if est.binary:
        _check_binary(est.name, flat, gid)
    return flat


def _tabulated(est: Estimator, g: _Groups, params: dict, sizes: list[int]) -> torch.Tensor:
    """A binary-reward estimator depends on a rollout only through (r_i, N, K): evaluate it once
    per group size on the N+1 possible K for a success and a failure, then gather. This costs
    O(N) special functions per distinct group size instead of O(B).
    """
    n_tab = torch.cat([torch.full((n + 1,), float(n), dtype=torch.float64) for n in sizes])
    k_tab = torch.cat([torch.arange(n + 1, dtype=torch.float64) for n in sizes])
    success = est.fn(_Groups(torch.ones_like(k_tab), n_tab, k_tab, k_tab), **params)
    failure = est.fn(_Groups(torch.zeros_like(k_tab), n_tab, k_tab, k_tab), **params)
    if len(sizes) == 1:
        idx = g.s.long()
    else:  # row of (N, K) in the concatenated tables: offset of N's block, plus K
        starts = torch.zeros(max(sizes) + 1, dtype=torch.long)
        starts[torch.tensor(sizes)] = torch.tensor(
            [0, *torch.tensor(sizes[:-1]).add(1).cumsum(0).tolist()]
        )
        idx = starts[g.n.long()] + g.s.long()
    # one gather from a 2-row table (take() beats advanced indexing several times over here)
    table = torch.stack([failure, success])
    return torch.take(table, idx + (g.r > 0).long() * len(k_tab))


def _where(gid: torch.Tensor | None, flat: torch.Tensor, mask: torch.Tensor) -> str:
    if gid is None:  # dense (groups, N)
        g, pos = (int(x) for x in mask.nonzero()[0])
        return f"{flat[g, pos].item():.6g} in group {g} (rollout {pos})"
    i = int(mask.nonzero()[0])
    g = int(gid[i])
    pos = int((gid[:i] == g).sum())
    return f"{flat[i].item():.6g} in group {g} (rollout {pos})"


def _check_finite(name: str, flat: torch.Tensor, gid: torch.Tensor) -> None:
    bad = ~torch.isfinite(flat)
    if bool(bad.any()):
        raise ValueError(
            f"rewards must be finite for {name}; got {_where(gid, flat, bad)}. Fix the reward "
            f"function (a failed verification should score 0, not NaN)"
        )


def _check_binary(name: str, flat: torch.Tensor, gid: torch.Tensor) -> None:
    bad = (flat != 0) & (flat != 1)
    if bool(bad.any()):
        raise ValueError(
            f"rewards must be 0 or 1 for {name}; got {_where(gid, flat, bad)}; pass "
            f"reward_threshold=0.5 to binarise"
        )
