"""Unbiased pass@k against brute force, its stability, and the sample-efficiency factor."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from maxrl import passk


def test_pass_at_k_equals_brute_force_over_all_k_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(max(s) for s in subsets) / len(subsets)
                assert passk.pass_at_k(n, c, k) == pytest.approx(brute, rel=1e-12, abs=1e-15)


def test_pass_at_k_product_form_and_large_n():
    n, c, k = 20_000, 3, 1000
    prod = 1 - math.prod(1 - k / i for i in range(n - c + 1, n + 1))
    assert passk.pass_at_k(n, c, k) == pytest.approx(prod, rel=1e-11)
    # tiny values keep their digits: pass@1 = c/n exactly
    assert passk.pass_at_k(50_000, 1, 1) == pytest.approx(2e-5, rel=1e-12)
    assert passk.pass_at_k(50_000, 49_990, 25_000) == 1.0
    assert passk.neg_log_pass_at_k(50_000, 1, 1) == pytest.approx(-math.log(2e-5), rel=1e-12)
    assert passk.neg_log_pass_at_k(10, 0, 3) == math.inf


def test_vectorised_and_unbiased_on_average():
    rng = np.random.default_rng(0)
    p, n, k = 0.07, 32, 8
    c = rng.binomial(n, p, size=200_000)
    est = passk.pass_at_k(n, c, k)
    assert est.shape == c.shape
    exact = passk.exact_pass_at_k(p, k)
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(c.size)


def test_curve_and_powers_of_two():
    assert passk.powers_of_two(8) == [1, 2, 4, 8]
    assert passk.powers_of_two(12) == [1, 2, 4, 8, 12]
    curve = passk.pass_at_k_curve(8, np.array([0, 2, 8]))
    assert curve.ks == (1, 2, 4, 8)
    want1 = (0 + 2 / 8 + 1) / 3
    assert curve.pass_at_k[0] == pytest.approx(want1, rel=1e-14)
    assert curve.pass_at_k[-1] == pytest.approx(2 / 3, rel=1e-14)
    assert curve.neg_log[0] == pytest.approx(-math.log(want1), rel=1e-14)
    assert all(a <= b for a, b in zip(curve.pass_at_k, curve.pass_at_k[1:]))


def test_sample_efficiency_interpolates_in_log_k():
    a = passk.PassAtKCurve((1, 2, 4, 8), (0.4, 0.6, 0.7, 0.8))
    b = passk.PassAtKCurve((1, 2, 4, 8), (0.2, 0.3, 0.4, 0.6))
    # B reaches 0.6 at k = 8; A at k = 2: factor 4
    assert passk.sample_efficiency(a, b) == pytest.approx(4.0, rel=1e-14)
    # q = 0.5: A at k = 2^0.5 (halfway from 0.4 to 0.6 in log k), B at 2^2.5
    assert passk.sample_efficiency(a, b, q=0.5) == pytest.approx(4.0, rel=1e-12)
    assert passk.k_at_coverage(a.ks, a.pass_at_k, 0.65) == pytest.approx(2**1.5, rel=1e-12)
    assert passk.sample_efficiency(a, b, q=0.75) == math.inf
    assert math.isnan(passk.sample_efficiency(a, b, q=0.95))


def test_bad_input():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        passk.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        passk.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="whole numbers"):
        passk.pass_at_k(4.5, 1, 1)
