"""Exact bias of the advantage estimators in the paper's official code, and of its pass@k.

The paper (Tajwar et al. 2026, arXiv 2602.02710) ships a fork of verl, github.com/tajwarfahim/maxrl,
that registers several group advantage estimators besides Algorithm 1. This script restates each
one from its mathematics (no code of that repository runs here), computes its exact expected
gradient, and compares it with the target the official code means it for. Each function's
docstring names the file and function it restates.

Exact expectation. Every estimator here gives a rollout an advantage that depends only on its own
label and K, the number of successes in its group of N: A_s(K) for a success, A_f(K) for a
failure. Given the labels the rollouts are independent, with E[S | success] = grad p / p and
E[S | failure] = -grad p / (1 - p), so for the group mean g = (1/N) sum_i A_i S_i

    E[g] / grad p = sum_K C(N,K) p^K (1-p)^(N-K) (1/N) [K A_s(K)/p - (N-K) A_f(K)/(1-p)]

(docs/estimators.md, "The exact check used by the tests"). The advantages and p are rationals and
the sum is evaluated in integer arithmetic: every figure below is exact until it is printed.

Scale. The Maclaurin-family functions (verl/trainer/ppo/maclaurin.py) return weights w_i for the
SUM estimator sum_i w_i S_i, as their docstrings say. Here they are written as group-mean
advantages A_i = N w_i, which is the same estimator. verl uses w_i itself as the advantage, so
their raw gradient is N times smaller than that of `maxrl` and `pkpo`, whose advantages are
group-mean advantages (under Adam that scale mostly cancels).

Targets. Truncation order T: dJ_T/dp = sum_{k=1..T} (1-p)^(k-1), J_T = -sum_{k=1..T} (1-p)^k/k.
`pkpo` at order k: its form without the baseline is exactly unbiased for (1-p)^(k-1), which is
(1/k) d pass@k/dp, and that is the target used here (a constant factor would only rescale the step).
Relative bias = E[g] / target - 1.

Grid: N in {2, 3, 4, 8, 16, 32, 64, 128} (the repository's scripts use N = 128 rollouts and
truncate_order 64), every order 1..N, p in {1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99},
plus the exact limit p -> 0.

Validation pass@k: verl/trainer/ppo/metric_utils.py, `process_validation_metrics` and
`bootstrap_metric`, restated and checked the same way at the end.

Run: ``python benchmarks/official_estimators.py`` (under a minute on one core).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

from maxrl import advantages

GROUP_SIZES = (2, 3, 4, 8, 16, 32, 64, 128)
PASS_RATES = tuple(
    Fraction(s) for s in ("0.0001", "0.001", "0.01", "0.05", "0.2", "0.5", "0.8", "0.95", "0.99")
)
MAXRL_EPS = Fraction(1, 10**6)  # the `epsilon` default of compute_maxrl_outcome_advantage

# A_s(K), A_f(K) for K = 0..N (A_s(0) and A_f(N) are never used and are 0)
Adv = tuple[list[Fraction], list[Fraction]]


def comb(n: int, k: int) -> int:
    return math.comb(n, k) if 0 <= k <= n else 0


def _add(x: Adv, y: Adv) -> Adv:
    return [a + b for a, b in zip(x[0], y[0])], [a + b for a, b in zip(x[1], y[1])]


def _cumulative(n: int, term: Callable[[int, int], Adv]) -> list[Adv]:
    """[sum_{k=1..T} term(n, k) for T = 1..n]."""
    out, acc = [], term(n, 1)
    out.append(acc)
    for k in range(2, n + 1):
        acc = _add(acc, term(n, k))
        out.append(acc)
    return out


# ---------------------------------------------------------------------------------------------
# The official estimators, restated in the group-mean convention. F = N - K is the number of
# failures of the group, F_{-i} the number among the rollouts other than i.


def _maclaurin_term(n: int, k: int) -> Adv:
    """k-th term of the failure series, J_T = sum_{k <= T} -(1-p)^k / k.

    k = 1 is REINFORCE (a success gets 1). For k >= 2 a failure gets -C(F-1,k-1)/C(N-1,k-1), the
    fraction of (k-1)-subsets of the other rollouts that all fail: the U-statistic over k-subsets
    of -(1/k) 1[all fail] sum_{j in subset} S_j, unbiased for grad(-(1-p)^k / k)."""
    zero = [Fraction(0)] * (n + 1)
    if k == 1:
        return [Fraction(1)] * (n + 1), zero
    a_f = [-Fraction(comb(n - K - 1, k - 1), comb(n - 1, k - 1)) for K in range(n + 1)]
    return zero, a_f


def maclaurin(n: int) -> list[Adv]:
    """verl/trainer/ppo/maclaurin.py `maclaurin_weights` (estimator "maclaurin"), T = 1..N.

    A_s = 1, A_f = -sum_{k=2..T} C(F-1,k-1)/C(N-1,k-1). Target grad J_T."""
    return _cumulative(n, _maclaurin_term)


def _maclaurin_loo_term(n: int, k: int) -> Adv:
    """The k-th term with each k-subset's all-fail indicator f_s baselined by its mean over the
    other C(N,k) - 1 subsets, b_s = (C(F,k) - f_s)/(C(N,k) - 1). With q = C(F,k)/(C(N,k) - 1)
    the term gives a success q and a failure q (1 - N/F), signal and baseline together (the
    code's w_succ += q/N, w_fail += q (1/N - 1/F)). At k = N there is one subset and no
    baseline: the plain term (-1 for every rollout of an all-fail group) is kept."""
    if k == 1 or k == n:
        return _maclaurin_term(n, k)
    m = comb(n, k) - 1
    a_s = [Fraction(comb(n - K, k), m) for K in range(n + 1)]
    a_f = [
        Fraction(comb(n - K, k), m) * (1 - Fraction(n, n - K)) if n - K >= k else Fraction(0)
        for K in range(n + 1)
    ]
    return a_s, a_f


def maclaurin_baseline(n: int) -> list[Adv]:
    """verl/trainer/ppo/maclaurin.py `maclaurin_weights_loo` (estimator "maclaurin_baseline").

    A_s = 1 + sum_{k=2..min(T,N-1)} q_k, A_f = sum_{k=2..min(T,N-1)} q_k (1 - N/F) - [T=N, K=0],
    q_k = C(F,k)/(C(N,k) - 1). Intended target grad J_T. Biased: the subsets that baseline a
    subset share rollouts with it, so the baseline is not independent of the scores it meets."""
    return _cumulative(n, _maclaurin_loo_term)


def _cross_fitted_term(n: int, k: int) -> Adv:
    """The k-th term with each k-subset baselined by the mean all-fail indicator of the
    C(N-k,k) subsets disjoint from it, when N >= 2k (none otherwise). Per rollout the baseline
    comes to -C(F_{-i},k)/C(N-1,k): minus the fraction of k-subsets of the OTHER rollouts that all
    fail, an unbiased estimate of the term's value that does not depend on rollout i."""
    a_s, a_f = _maclaurin_term(n, k)
    if k == 1 or n < 2 * k:
        return a_s, a_f
    d = comb(n - 1, k)
    a_s = [a + Fraction(comb(n - K, k), d) for K, a in enumerate(a_s)]
    a_f = [a + Fraction(comb(n - K - 1, k), d) for K, a in enumerate(a_f)]
    return a_s, a_f


def cross_fitted_maclaurin(n: int) -> list[Adv]:
    """verl/trainer/ppo/maclaurin.py `maclaurin_weights_cross_fitted` (with `_AF_AS`), estimator
    "cross_fitted_maclaurin". A = the plain maclaurin advantage + sum_{k=2..min(T,N/2)}
    C(F_{-i},k)/C(N-1,k). Target grad J_T."""
    return _cumulative(n, _cross_fitted_term)


def oversample_subset_vr(n: int) -> list[Adv]:
    """verl/trainer/ppo/maclaurin.py `oversample_subset_vr_weights` with beta = 1 (estimator
    "oversample_subset_vr"): w = c_{T,N}(K) - 1/N for a success, -1/N for a failure, so
    A_s = N c_{T,N}(K) - 1, A_f = -1, c_{T,N}(K) = (1 - C(N-K,T)/C(N,T))/K. Target grad J_T."""
    out = []
    for t in range(1, n + 1):
        a_s = [Fraction(0)] + [
            n * Fraction(comb(n, t) - comb(n - K, t), comb(n, t) * K) - 1 for K in range(1, n + 1)
        ]
        out.append((a_s, [Fraction(-1)] * (n + 1)))
    return out


def vr_cond(n: int) -> Adv:
    """verl/trainer/ppo/maclaurin.py `vr_cond_weights` (estimator "vr_cond"): w = (N-K)/(K N) for
    a success, -1/N for a failure, all-fail groups included; A_s = N/K - 1, A_f = -1. Target
    grad J_N (Theorem 2 with the constant baseline kept on all-fail groups)."""
    a_s = [Fraction(0)] + [Fraction(n, K) - 1 for K in range(1, n + 1)]
    return a_s, [Fraction(-1)] * (n + 1)


def official_maxrl(n: int, eps: Fraction = MAXRL_EPS) -> Adv:
    """verl/trainer/ppo/core_algos.py `compute_maxrl_outcome_advantage` (estimator "maxrl"):
    A = (r - rbar)/(rbar + eps), eps = 1e-6, which is 0 for an all-fail group (also taken as 0
    at eps = 0, where the code would divide 0 by 0). Target grad J_{N-1}
    (exact at eps = 0; docs/estimators.md, "Why Algorithm 1 is unbiased for J_{N-1}")."""
    a_s = [Fraction(0)] + [Fraction(n - K, n) / (Fraction(K, n) + eps) for K in range(1, n + 1)]
    a_f = [Fraction(0)] + [-Fraction(K, n) / (Fraction(K, n) + eps) for K in range(1, n + 1)]
    return a_s, a_f


def pkpo(n: int, k: int) -> Adv:
    """verl/trainer/ppo/core_algos.py `compute_pkpo_outcome_advantage` (estimator "pkpo",
    order `pass_k`): a success first gets a_i = C(N-K,k-1)/C(N-1,k-1), a failure 0; then
    A_i = (N a_i - sum_j a_j)/(N - 1) = a_i - mean_{j != i} a_j. Without that leave-one-out step
    it is exactly unbiased for (1-p)^(k-1) = (1/k) d pass@k/dp, the target used here. The step
    biases it for k >= 2: a_j of a success j counts rollout i among its failures."""
    a = [
        Fraction(comb(n - K, k - 1), comb(n - 1, k - 1)) if K else Fraction(0) for K in range(n + 1)
    ]
    a_s = [(n * a[K] - K * a[K]) / (n - 1) for K in range(n + 1)]
    a_f = [-K * a[K] / (n - 1) for K in range(n + 1)]
    return a_s, a_f


# ---------------------------------------------------------------------------------------------
# Exact expectation and targets.


class Binomial:
    """C(N,K) a^K (b-a)^(N-K) for p = a/b, K = 0..N: the integer weights of the exact sum."""

    def __init__(self, n: int, p: Fraction):
        self.n, self.p = n, p
        a, b = p.numerator, p.denominator
        self.a, self.c, self.b = a, b - a, b
        self.w = [math.comb(n, k) * a**k * (b - a) ** (n - k) for k in range(n + 1)]


def expected_gradient(adv: Adv, dist: Binomial) -> Fraction:
    """E[g] / grad p, exactly: the module docstring's sum for p = a/b, multiplied through by
    N a (b-a) b^(N-1) and by a common denominator of the advantages, is a sum of integers."""
    a_s, a_f = adv
    n = dist.n
    scale = math.lcm(*(x.denominator for x in a_s + a_f))
    s_int = [int(x * scale) for x in a_s]
    f_int = [int(x * scale) for x in a_f]
    total = sum(
        w * (k * dist.c * s_int[k] - (n - k) * dist.a * f_int[k]) for k, w in enumerate(dist.w)
    )
    return Fraction(total, scale * n * dist.a * dist.c * dist.b ** (n - 1))


def limit_at_zero(adv: Adv) -> Fraction:
    """lim_{p -> 0} E[g] / grad p = A_s(1) - A_f(0) (only the groups with K <= 1 survive)."""
    return adv[0][1] - adv[1][0]


def grad_j(p: Fraction, t: int) -> Fraction:
    """dJ_T/dp = (1 - (1-p)^T)/p, its limit T at p = 0."""
    return Fraction(t) if p == 0 else (1 - (1 - p) ** t) / p


def pkpo_target(p: Fraction, k: int) -> Fraction:
    return (1 - p) ** (k - 1)


def maclaurin_baseline_closed_form(n: int, t: int, p: Fraction) -> Fraction:
    """E[g]/grad p = 1 + sum_{k=2..min(T,N-1)} (1-p)^(k-1) C(N-1,k)/(C(N,k)-1) + [T=N](1-p)^(N-1).

    Each term k of dJ_T/dp is shrunk by C(N-1,k)/(C(N,k)-1) < 1: a subset's baseline, the mean
    of f over the other subsets, meets each of the subset's k rollouts in C(N-1,k-1) - 1 other
    subsets, each contributing E[f_s' S_i] = -(1-p)^(k-1) grad p."""
    q = 1 - p
    total = 1 + sum(
        q ** (k - 1) * Fraction(comb(n - 1, k), comb(n, k) - 1) for k in range(2, min(t, n - 1) + 1)
    )
    return total + (q ** (n - 1) if t >= n else 0)


def pkpo_closed_form(n: int, k: int, p: Fraction) -> Fraction:
    """E[g]/grad p = (1-p)^(k-1) + p (k-1)(1-p)^(k-2)/(N-1), so the relative bias is
    p (k-1) / ((N-1)(1-p)): zero only at k = 1, unbounded as p -> 1."""
    q = 1 - p
    return q ** (k - 1) + (p * (k - 1) * q ** (k - 2) / (n - 1) if k >= 2 else 0)


# ---------------------------------------------------------------------------------------------


def _library_advantages(name: str, n: int, **params) -> tuple[list[float], list[float]]:
    rewards = torch.tensor([[1.0] * k + [0.0] * (n - k) for k in range(n + 1)], dtype=torch.float64)
    adv = advantages.compute(name, rewards, **params)
    a_s = [float(adv[k, 0]) if k > 0 else 0.0 for k in range(n + 1)]
    a_f = [float(adv[k, n - 1]) if k < n else 0.0 for k in range(n + 1)]
    return a_s, a_f


def _max_diff(ours: Adv, lib: tuple[list[float], list[float]], n: int) -> float:
    d = [abs(float(ours[0][k]) - lib[0][k]) for k in range(1, n + 1)]
    d += [abs(float(ours[1][k]) - lib[1][k]) for k in range(n)]
    return max(d)


def check_against_library() -> None:
    print(
        "Official estimators that are library estimators (max |A difference|, library in float64):"
    )
    rows = {
        "oversample_subset_vr vs maxrl_t(T, constant), every T": 0.0,
        "vr_cond vs maxrl_t(T = N, constant)": 0.0,
        "maxrl at eps = 0 vs maxrl": 0.0,
        "pkpo at k = 1 vs rloo": 0.0,
    }
    keys = list(rows)
    for n in GROUP_SIZES:
        for t, adv in enumerate(oversample_subset_vr(n), start=1):
            lib = _library_advantages("maxrl_t", n, T=t, baseline="constant")
            rows[keys[0]] = max(rows[keys[0]], _max_diff(adv, lib, n))
        lib = _library_advantages("maxrl_t", n, T=n, baseline="constant")
        rows[keys[1]] = max(rows[keys[1]], _max_diff(vr_cond(n), lib, n))
        lib = _library_advantages("maxrl", n)
        rows[keys[2]] = max(rows[keys[2]], _max_diff(official_maxrl(n, Fraction(0)), lib, n))
        lib = _library_advantages("rloo", n)
        rows[keys[3]] = max(rows[keys[3]], _max_diff(pkpo(n, 1), lib, n))
    for key, value in rows.items():
        print(f"  {key:<56} {value:.1e}")
    print()


def _fmt_p(p: Fraction | int) -> str:
    return "->0" if p == 0 else f"{float(p):g}"


class Worst:
    """Largest |relative bias| seen, and where."""

    def __init__(self):
        self.value, self.where, self.count = Fraction(0), None, 0

    def add(self, rel: Fraction, where: tuple) -> None:
        self.count += 1
        if abs(rel) > abs(self.value) or self.where is None:
            self.value, self.where = rel, where

    def text(self) -> str:
        if self.value == 0:
            return f"0 exactly at all {self.count} points"
        n, order, p = self.where
        return f"{float(self.value):+.4%} at N={n}, order={order}, p={_fmt_p(p)}"


def _ordered(n: int) -> dict[str, list[Adv]]:
    """Every estimator with an order (T, or k for pkpo) at group size N: [Adv for order 1..N]."""
    return {
        "maclaurin": maclaurin(n),
        "maclaurin_baseline": maclaurin_baseline(n),
        "cross_fitted_maclaurin": cross_fitted_maclaurin(n),
        "oversample_subset_vr": oversample_subset_vr(n),
        "pkpo": [pkpo(n, k) for k in range(1, n + 1)],
    }


def _fixed(n: int) -> dict[str, tuple[Adv, int]]:
    """The estimators without an order, with the T of their target J_T."""
    return {
        "vr_cond": (vr_cond(n), n),
        "maxrl (eps = 1e-6)": (official_maxrl(n), n - 1),
        "maxrl (eps = 0)": (official_maxrl(n, Fraction(0)), n - 1),
    }


TARGETS = {
    "maclaurin": "grad J_T",
    "maclaurin_baseline": "grad J_T",
    "cross_fitted_maclaurin": "grad J_T",
    "oversample_subset_vr": "grad J_T",
    "vr_cond": "grad J_N",
    "maxrl (eps = 1e-6)": "grad J_{N-1}",
    "maxrl (eps = 0)": "grad J_{N-1}",
    "pkpo": "(1-p)^(k-1) grad p",
}


def _target(name: str, p: Fraction, order: int) -> Fraction:
    return pkpo_target(p, order) if name == "pkpo" else grad_j(p, order)


def bias_table() -> None:
    worst = {name: Worst() for name in TARGETS}
    closed = {"maclaurin_baseline": maclaurin_baseline_closed_form, "pkpo": pkpo_closed_form}
    closed_ok = dict.fromkeys(closed, 0)
    rel = {}  # (name, N, order, p) -> relative bias, p = 0 for the limit p -> 0
    for n in GROUP_SIZES:
        dists = [Binomial(n, p) for p in PASS_RATES]
        cases = [
            (name, order, adv)
            for name, table in _ordered(n).items()
            for order, adv in enumerate(table, start=1)
        ]
        cases += [(name, order, adv) for name, (adv, order) in _fixed(n).items()]
        for name, order, adv in cases:
            for dist in dists:
                e = expected_gradient(adv, dist)
                if name in closed:
                    closed_ok[name] += e == closed[name](n, order, dist.p)
                rel[name, n, order, dist.p] = e / _target(name, dist.p, order) - 1
            rel[name, n, order, 0] = limit_at_zero(adv) / _target(name, Fraction(0), order) - 1
    for (name, n, order, p), value in rel.items():
        worst[name].add(value, (n, order, p))

    print("Worst relative bias E[g]/target - 1 over the grid and p -> 0 (order: T, or k for pkpo):")
    print(f"  {'official estimator':<24} {'target':<20} worst")
    for name, target in TARGETS.items():
        print(f"  {name:<24} {target:<20} {worst[name].text()}")
    print()

    n_points = sum(n * len(PASS_RATES) for n in GROUP_SIZES)
    mb = "maclaurin_baseline"
    print(f"{mb}: closed form 1 + sum_{{k=2..min(T,N-1)}} (1-p)^(k-1) C(N-1,k)/(C(N,k)-1)")
    print("  + [T=N] (1-p)^(N-1)")
    print(f"  equals the exact sum at {closed_ok[mb]} of {n_points} grid points")
    print("  worst relative bias at p -> 0 for each N, and its T (T = N - 1 tends to -1/2):")
    line = []
    for n in GROUP_SIZES:
        t = min(range(1, n + 1), key=lambda t, n=n: (rel[mb, n, t, 0], t))
        line.append(f"N={n}: {float(rel[mb, n, t, 0]):+.2%} (T={t})")
    print("   " + "  ".join(line[:4]))
    print("   " + "  ".join(line[4:]))
    print("  at N = 128, T = 64 (the repository scripts' N and truncate_order):")
    line = [f"p={_fmt_p(p)}: {float(rel[mb, 128, 64, p]):+.2%}" for p in (0, *PASS_RATES)]
    print("   " + "  ".join(line[:5]))
    print("   " + "  ".join(line[5:]))
    print()

    print("pkpo: closed form (1-p)^(k-1) + p (k-1) (1-p)^(k-2) / (N-1),")
    print("  relative bias p (k-1) / ((N-1)(1-p)), zero only at k = 1")
    print(f"  equals the exact sum at {closed_ok['pkpo']} of {n_points} grid points")
    half = Worst()
    for n in GROUP_SIZES:
        for k in range(1, n + 1):
            half.add(rel["pkpo", n, k, Fraction(1, 2)], (n, k, Fraction(1, 2)))
    print(f"  worst at p = 0.5: {half.text()} (k = N gives +100% for every N)")
    examples = ((8, 2, "0.5"), (128, 4, "0.5"), (16, 8, "0.5"), (16, 2, "0.2"), (128, 64, "0.2"))
    line = [
        f"N={n},k={k},p={p}: {float(rel['pkpo', n, k, Fraction(p)]):+.2%}" for n, k, p in examples
    ]
    print("  examples: " + "  ".join(line[:3]))
    print("            " + "  ".join(line[3:]))
    print()


def bootstrap_pass_at_k() -> None:
    """verl/trainer/ppo/metric_utils.py: for each prompt with n responses,
    `process_validation_metrics` calls `bootstrap_metric` for every size m in 2, 4, 8, ... < n
    and for m = n. That function resets numpy's global generator to seed 42 and takes 1000 draws
    of m indices WITH replacement, reporting the mean (and the std) over draws of the max reward,
    "best@m/mean". The per-prompt figures are averaged over prompts, and best@n/mean is what
    ray_trainer.py logs under pass@n. With c correct of n, one draw's max is 1 with probability
    1 - (1 - c/n)^m; the unbiased estimate is 1 - C(n-c,m)/C(n,m), exactly 1 at m = n, c >= 1."""
    n = 2048  # N_VAL of the repository's maze script
    print(f"Validation pass@m from n = {n} responses with c correct (closed forms, exact):")
    print(f"  {'m':>5} {'c':>3} {'unbiased':>9} {'bootstrap E':>12}")
    for m in (2048, 1024, 256):
        for c in (1, 2, 5):
            unbiased = 1 - Fraction(comb(n - c, m), comb(n, m))
            boot = 1 - (1 - Fraction(c, n)) ** m
            print(f"  {m:>5} {c:>3} {float(unbiased):>9.4f} {float(boot):>12.4f}")
    # the finite bootstrap itself: 1000 draws, generator reset to seed 42 for every prompt
    rng = np.random.RandomState(42)
    hits = np.zeros(n)
    for _ in range(1000):
        hits[np.unique(rng.choice(n, size=n, replace=True))] += 1
    share = hits / 1000
    print(
        f"  1000 draws, seed 42, m = n = {n}, c = 1: best@{n}/mean = {share[0]:.3f} with the "
        f"correct response first,\n  {share.min():.3f} to {share.max():.3f} over its {n} "
        f"positions (mean {share.mean():.4f})"
    )
    # against the policy: pass rate p, n responses sampled, c ~ Binomial(n, p)
    print(f"  policy with pass rate p, n = m = {n}: true pass@{n} = 1 - (1-p)^{n}; its mean")
    print("  over the sampled responses, for the unbiased estimate and for the bootstrap:")
    print(f"  {'p':<8} {'true':>7} {'unbiased E':>11} {'bootstrap E':>12}")
    for p in (1 / 2048, 1 / 512, 1 / 128):
        pmf = [
            math.exp(
                math.lgamma(n + 1)
                - math.lgamma(c + 1)
                - math.lgamma(n - c + 1)
                + c * math.log(p)
                + (n - c) * math.log1p(-p)
            )
            for c in range(n + 1)
        ]
        unbiased = math.fsum(pmf[1:])  # 1 whenever c >= 1, at m = n
        boot = math.fsum(w * -math.expm1(n * math.log1p(-c / n)) for c, w in enumerate(pmf[:-1]))
        boot += pmf[-1]
        true = -math.expm1(n * math.log1p(-p))
        print(f"  1/{round(1 / p):<6} {true:>7.4f} {unbiased:>11.4f} {boot:>12.4f}")
    print()


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    check_against_library()
    bias_table()
    bootstrap_pass_at_k()
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
