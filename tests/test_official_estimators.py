"""Two estimators of the paper's official code are biased, by amounts that are pinned here.

Exact values, in rational arithmetic, of the expected gradient (docs/estimators.md, "The exact
check used by the tests"); the official forms are restated from their mathematics
(docs/estimators.md, "The official code's estimators").
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from maxrl import advantages, objectives


def _ratio(a_s, a_f, n: int, p: Fraction) -> Fraction:
    """E[g] / grad p = sum_K C(N,K) p^K (1-p)^(N-K) (1/N) [K A_s(K)/p - (N-K) A_f(K)/(1-p)]."""
    q = 1 - p
    return sum(
        math.comb(n, k) * p**k * q ** (n - k) / n * (k * a_s[k] / p - (n - k) * a_f[k] / q)
        for k in range(n + 1)
    )


def _official_pkpo(n: int, k: int):
    """pkpo: a success gets C(N-K,k-1)/C(N-1,k-1), a failure 0, then a_i - mean_{j != i} a_j."""
    a = [Fraction(math.comb(n - K, k - 1), math.comb(n - 1, k - 1)) for K in range(n + 1)]
    a[0] = Fraction(0)
    a_s = [(n - K) * a[K] / (n - 1) for K in range(n + 1)]
    a_f = [-K * a[K] / (n - 1) for K in range(n + 1)]
    return a_s, a_f


def _official_maclaurin_baseline(n: int, t: int):
    """maclaurin_baseline: q_k = C(F,k)/(C(N,k)-1) for k = 2..min(T,N-1); a success gets
    1 + sum q_k, a failure sum q_k (1 - N/F), minus 1 on an all-fail group when T = N."""
    a_s, a_f = [], []
    for K in range(n + 1):
        f = n - K
        qs = [Fraction(math.comb(f, k), math.comb(n, k) - 1) for k in range(2, min(t, n - 1) + 1)]
        a_s.append(1 + sum(qs))
        a_f.append(sum(q * (1 - Fraction(n, f)) for q in qs if q) - (t >= n and K == 0))
    return a_s, a_f


@pytest.mark.parametrize("n", [2, 4, 8])
def test_official_pkpo_bias_is_p_k_minus_1_over_n_minus_1_times_1_minus_p(n):
    for k in range(1, n + 1):
        for p in (Fraction(1, 5), Fraction(1, 2), Fraction(4, 5)):
            rel = _ratio(*_official_pkpo(n, k), n, p) / (1 - p) ** (k - 1) - 1
            assert rel == p * (k - 1) / ((n - 1) * (1 - p))


def test_official_pkpo_is_14_percent_high_at_k_2_while_pass_at_k_is_exact():
    n, k, p = 8, 2, Fraction(1, 2)
    rel = _ratio(*_official_pkpo(n, k), n, p) / (1 - p) ** (k - 1) - 1
    assert rel == Fraction(1, 7)
    rewards = torch.tensor([[1.0] * K + [0.0] * (n - K) for K in range(n + 1)], dtype=torch.float64)
    adv = advantages.compute("pass_at_k", rewards, k=k)
    a_s = [Fraction(float(adv[K, 0])) if K else Fraction(0) for K in range(n + 1)]
    a_f = [Fraction(float(adv[K, n - 1])) if K < n else Fraction(0) for K in range(n + 1)]
    got = float(_ratio(a_s, a_f, n, p))
    assert got == pytest.approx(objectives.pass_at_k_grad(0.5, k), rel=1e-12)


def test_official_maclaurin_baseline_undershoots_grad_j_t():
    # p -> 0 keeps only the groups with K <= 1: E[g]/grad p -> A_s(1) - A_f(0), against T
    a_s, a_f = _official_maclaurin_baseline(4, 3)
    assert (a_s[1] - a_f[0]) / 3 - 1 == Fraction(-16, 45)  # -35.6%
    a_s, a_f = _official_maclaurin_baseline(16, 15)
    assert float((a_s[1] - a_f[0]) / 15 - 1) == pytest.approx(-0.4948, abs=5e-5)
    # at p = 1/2 each term k of dJ_T/dp is shrunk by C(N-1,k)/(C(N,k)-1)
    n, t, p = 8, 7, Fraction(1, 2)
    want = 1 + sum(
        (1 - p) ** (k - 1) * Fraction(math.comb(n - 1, k), math.comb(n, k) - 1)
        for k in range(2, t + 1)
    )
    assert _ratio(*_official_maclaurin_baseline(n, t), n, p) == want
    assert want < (1 - (1 - p) ** t) / p
