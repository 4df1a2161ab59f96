"""The estimators side by side, and their registry (see :mod:`maxrl.advantages` for the table of
each one's advantage and exact target)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


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
