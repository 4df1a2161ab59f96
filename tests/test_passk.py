"""Unbiased pass@k against brute force, its stability, the sample-efficiency factor, and the
distribution of per-prompt pass rates."""

from __future__ import annotations

import itertools
import json
import math
import re

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


def test_pass_rate_bins_and_names():
    names = [b.name for b in passk.PASS_RATE_BINS]
    assert [b.interval for b in passk.PASS_RATE_BINS] == [
        "0",
        "(0,2^-10]",
        *[f"(2^-{i + 1},2^-{i}]" for i in range(9, 0, -1)],
        "(1/2,1)",
        "1",
    ]
    assert names[0] == "0" and names[1] == "0_to_2pow-10" and names[-2:] == ["2pow-1_to_1", "1"]
    assert names[10] == "2pow-2_to_2pow-1"
    # valid TensorBoard tags as they stand (the characters TensorFlow's clean_tag keeps, no "/")
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+", name) for name in names)
    assert len(set(names)) == len(names)
    hist = passk.pass_rate_histogram([0.3])
    assert list(hist) == names
    assert json.loads(json.dumps(hist)) == hist


def test_pass_rate_histogram_edges_are_exact():
    def bin_of(rate):
        hist = passk.pass_rate_histogram([rate])
        assert sorted(hist.values()) == [0.0] * 12 + [1.0]
        return next(passk.PASS_RATE_BINS[i].interval for i, v in enumerate(hist.values()) if v)

    assert bin_of(0.0) == "0"
    assert bin_of(1.0) == "1"
    assert bin_of(2.0**-10) == "(0,2^-10]"
    assert bin_of(np.nextafter(2.0**-10, 1)) == "(2^-10,2^-9]"
    assert bin_of(5e-324) == "(0,2^-10]"  # below 2^-10 but > 0: still the first log bin
    assert bin_of(1e-6) == "(0,2^-10]"
    for i in range(1, 10):  # each edge 2^-i closes its bin, the next float opens the next one
        assert bin_of(2.0**-i) == (f"(2^-{i + 1},2^-{i}]")
        up = "(1/2,1)" if i == 1 else f"(2^-{i},2^-{i - 1}]"
        assert bin_of(np.nextafter(2.0**-i, 1)) == up
    assert bin_of(0.5) == "(2^-2,2^-1]"
    assert bin_of(np.nextafter(1.0, 0)) == "(1/2,1)"


def test_pass_rate_histogram_counts_and_fractions():
    rates = [0, 0, 1, 0.75, 0.5, 0.25, 0.001, 1 / 1024, 0.3]
    counts = passk.pass_rate_bin_counts(rates)
    assert sum(counts.values()) == len(rates)
    assert counts["0"] == 2 and counts["1"] == 1 and counts["2pow-1_to_1"] == 1
    assert counts["2pow-2_to_2pow-1"] == 2  # 0.5 and 0.3
    assert counts["2pow-3_to_2pow-2"] == 1  # 0.25
    assert counts["2pow-10_to_2pow-9"] == 1 and counts["0_to_2pow-10"] == 1
    hist = passk.pass_rate_histogram(rates)
    assert all(hist[name] == c / len(rates) for name, c in counts.items())
    rng = np.random.default_rng(0)
    for size in (1, 7, 100, 999, 1024):
        n = rng.integers(1, 3000, size=size)
        c = rng.binomial(n, rng.beta(0.3, 0.3, size=size))
        hist = passk.pass_rate_histogram_from_counts(n, c)
        tally = [v * size for v in hist.values()]
        # integer counts: every prompt lands in exactly one bin
        assert all(t == round(t) for t in tally) and sum(round(t) for t in tally) == size
        assert math.fsum(hist.values()) == pytest.approx(1.0, rel=2**-52, abs=0)
        if size & (size - 1) == 0:  # count / 2^m is exact, so is the sum
            assert sum(hist.values()) == 1.0
        assert hist == passk.pass_rate_histogram(c / n)
        for rate in (c / n)[:50]:  # the bins' own membership test agrees and is exclusive
            inside = [b.name for b in passk.PASS_RATE_BINS if b.contains(rate)]
            assert inside == [next(k for k, v in passk.pass_rate_histogram([rate]).items() if v)]


def test_pass_rate_histogram_from_counts_is_exact_past_float_rounding():
    n = 1024
    got = passk.pass_rate_histogram_from_counts(n, [0, 1, 2, 511, 512, 513, 1023, 1024])
    assert got["0"] == got["1"] == got["0_to_2pow-10"] == 1 / 8
    assert got["2pow-10_to_2pow-9"] == 1 / 8  # 2/1024 = 2^-9 closes its bin
    assert got["2pow-2_to_2pow-1"] == 2 / 8  # 511/1024 and 512/1024 = 1/2
    assert got["2pow-1_to_1"] == 2 / 8
    assert passk.pass_rate_histogram_from_counts(3072, 3)["0_to_2pow-10"] == 1.0
    assert passk.pass_rate_histogram_from_counts(1023, 1)["2pow-10_to_2pow-9"] == 1.0
    two_d = passk.pass_rate_histogram_from_counts([[4, 4], [4, 4]], [[0, 1], [2, 4]])
    assert two_d == passk.pass_rate_histogram([0, 0.25, 0.5, 1])
    # c/n just above 2^-10 that rounds to 2^-10 as a float: the integer test keeps it above
    c, n = 2**45 + 1, 2**55 + 1023
    assert c / n == 2.0**-10 and c * 1024 > n
    assert passk.pass_rate_histogram_from_counts(n, c)["2pow-10_to_2pow-9"] == 1.0
    assert passk.pass_rate_histogram([c / n])["0_to_2pow-10"] == 1.0


def test_pass_rate_histogram_bad_input():
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got 1.5"):
        passk.pass_rate_histogram([0.2, 1.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got nan"):
        passk.pass_rate_histogram([math.nan])
    with pytest.raises(ValueError, match="at least one pass rate"):
        passk.pass_rate_histogram([])
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        passk.pass_rate_histogram_from_counts(4, [5])
    with pytest.raises(ValueError, match="whole numbers"):
        passk.pass_rate_histogram_from_counts(4, [1.5])
    with pytest.raises(ValueError, match="at least one prompt"):
        passk.pass_rate_histogram_from_counts(4, [])
