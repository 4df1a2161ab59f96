"""maj@k against brute force over all k-subsets, a direct reference, closed forms and identities."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from fractions import Fraction

import pytest

from maxrl import majority

REL = dict(rel=1e-12, abs=0.0)  # no absolute floor: tiny values must keep their digits


def brute_force(counts, correct, k, unanswered=0) -> Fraction:
    """The mean over all k-subsets of the samples of the majority-vote weight of `correct`."""
    samples = [i for i, c in enumerate(counts) for _ in range(c)] + [None] * unanswered
    total, subsets = Fraction(0), 0
    for subset in itertools.combinations(samples, k):
        subsets += 1
        votes = Counter(s for s in subset if s is not None)
        if votes:
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            if correct in tied:
                total += Fraction(1, len(tied))
    return total / subsets


def reference(counts, correct, k, unanswered=0) -> Fraction:
    """A direct count: for each j votes of `correct`, every (votes, ties) state of the others."""
    n = sum(counts) + unanswered
    c_star = counts[correct]
    others = [c for i, c in enumerate(counts) if i != correct]
    total = Fraction(0)
    for j in range(1, min(c_star, k) + 1):
        states = {(0, 0): 1}
        for c in others:
            new = defaultdict(int)
            for (v, t), ways in states.items():
                for a in range(min(c, j, k - j - v) + 1):
                    new[v + a, t + (a == j)] += ways * math.comb(c, a)
            states = new
        for (v, t), ways in states.items():
            fill = math.comb(unanswered, k - j - v)
            total += Fraction(math.comb(c_star, j) * ways * fill, t + 1)
    return total / math.comb(n, k)


def partitions(n, largest=None):
    """All partitions of n into positive parts, largest first."""
    largest = n if largest is None else largest
    if n == 0:
        yield []
        return
    for first in range(min(n, largest), 0, -1):
        for rest in partitions(n - first, first):
            yield [first, *rest]


def test_equals_brute_force_over_all_k_subsets():
    cases = 0
    for n in range(1, 9):
        for unanswered in range(min(n, 2) + 1):
            for counts in partitions(n - unanswered):
                # every distinct count as the correct one, and a zero-count correct answer
                for correct in sorted({counts.index(c) for c in counts}):
                    for k in range(1, n + 1):
                        want = brute_force(counts, correct, k, unanswered)
                        got = majority.maj_at_k(counts, correct, k, unanswered, exact=True)
                        assert got == want, (counts, correct, k, unanswered)
                        assert majority.maj_at_k(counts, correct, k, unanswered) == pytest.approx(
                            float(want), **REL
                        )
                        cases += 1
                for k in range(1, n + 1):
                    assert majority.maj_at_k([*counts, 0], len(counts), k, unanswered) == 0.0
    assert cases > 1000
    # n = 9, 10: unordered classes, ties, several unanswered
    for counts, unanswered in [
        ([3, 3, 2], 0),
        ([2, 3, 3], 0),
        ([1, 1, 1, 1, 1, 1, 1, 1], 2),
        ([4, 4, 1], 1),
        ([2, 2, 2, 2], 2),
        ([5, 1, 1, 1], 2),
        ([1, 5, 2], 1),
        ([3, 2, 2, 1, 1], 1),
        ([4, 3], 3),
    ]:
        for correct in range(len(counts)):
            for k in range(1, sum(counts) + unanswered + 1):
                want = brute_force(counts, correct, k, unanswered)
                assert majority.maj_at_k(counts, correct, k, unanswered, exact=True) == want
                got = majority.maj_at_k(counts, correct, k, unanswered)
                assert got == pytest.approx(float(want), **REL)


def test_equals_direct_count_at_moderate_n():
    # n = 40..90, up to 11 answers: exercises the packed rows, the pruning and the last-answer sum
    for counts, unanswered in [
        ([20, 15, 12, 10, 9, 6, 4, 3, 3, 2, 1], 5),
        ([12, 12, 12, 12, 12], 0),
        ([30, 29, 28], 3),
        ([25, 5, 5, 5, 5, 5, 5, 5], 0),
        ([9, 8, 7, 6, 5, 4, 3, 2, 1], 7),
    ]:
        n = sum(counts) + unanswered
        for correct in {0, 1, len(counts) - 1}:
            for k in sorted({1, 2, 3, 5, 8, 13, n // 3, n // 2, n // 2 + 1, 2 * n // 3, n - 1, n}):
                want = reference(counts, correct, k, unanswered)
                got = majority.maj_at_k(counts, correct, k, unanswered, exact=True)
                assert got == want, (counts, correct, k, unanswered)


def test_k1_is_the_correct_fraction_and_k_n_the_plain_majority():
    for counts, unanswered in [([3, 1, 1], 0), ([700, 900, 448], 0), ([5, 5, 2], 4), ([1], 9)]:
        n = sum(counts) + unanswered
        for correct, c in enumerate(counts):
            assert majority.maj_at_k(counts, correct, 1, unanswered, exact=True) == Fraction(c, n)
            assert majority.maj_at_k(counts, correct, 1, unanswered) == c / n
            top = max(counts)
            tied = counts.count(top)
            want = Fraction(1, tied) if c == top else 0
            assert majority.maj_at_k(counts, correct, n, unanswered, exact=True) == want
    assert majority.maj_at_k([0, 0], None, 3, unanswered=3) == 0.0  # nothing answered


def hypergeometric_majority(a, b, k) -> Fraction:
    """Two answers, a correct and b wrong samples: P(H > k/2) + P(H = k/2) / 2, H ~ Hyp(a+b, a, k)."""
    total = Fraction(sum(math.comb(a, j) * math.comb(b, k - j) for j in range(k // 2 + 1, k + 1)))
    if k % 2 == 0:
        total += Fraction(math.comb(a, k // 2) * math.comb(b, k // 2), 2)
    return total / math.comb(a + b, k)


def test_two_answers_match_the_hypergeometric_closed_form():
    for a, b in [(1, 1), (3, 2), (2, 5), (7, 7), (40, 23), (1100, 948), (1024, 1024), (1, 2047)]:
        n = a + b
        for k in sorted({1, 2, 3, 4, 7, 16, n // 2, n - 1, n} & set(range(1, n + 1))):
            want = hypergeometric_majority(a, b, k)
            assert majority.maj_at_k([a, b], 0, k, exact=True) == want
            assert majority.maj_at_k([a, b], 0, k) == pytest.approx(float(want), **REL)
            # one of the two answers wins every subset: maj@k(a) + maj@k(b) = 1
            assert want + majority.maj_at_k([a, b], 1, k, exact=True) == 1
    # with u unanswered: X ~ correct, Y ~ wrong votes; win if X > Y, half if X = Y >= 1
    a, b, u = 5, 4, 3
    n = a + b + u
    for k in range(1, n + 1):
        total = Fraction(0)
        for x in range(min(a, k) + 1):
            for y in range(min(b, k - x) + 1):
                ways = math.comb(a, x) * math.comb(b, y) * math.comb(u, k - x - y)
                if x > y:
                    total += ways
                elif x == y >= 1:
                    total += Fraction(ways, 2)
        assert majority.maj_at_k([a, b], 0, k, u, exact=True) == total / math.comb(n, k)


def answered_fraction_check(counts, unanswered, k):
    """Every subset with an answered sample gives weight 1, split among its most-voted answers,
    so the win probabilities of all answers sum to 1 - C(u, k) / C(n, k)."""
    n = sum(counts) + unanswered
    total = sum(majority.maj_at_k(counts, i, k, unanswered, exact=True) for i in range(len(counts)))
    assert total == 1 - Fraction(math.comb(unanswered, k), math.comb(n, k))


def test_win_probabilities_of_all_answers_sum_to_the_answered_fraction():
    # sizes that take the packed products with both kinds of multiplication, the one-power
    # group and the pruning of coefficients that cannot reach k
    for counts, unanswered, k in [
        ([120, 100, 80, 60, 40], 0, 200),
        ([120, 100, 80, 60, 40], 7, 330),
        ([20, 20, 20, 20, 20, 20, 10, 10, 10], 10, 60),
        ([20, 20, 20, 20, 20, 20, 10, 10, 10], 10, 140),
        ([9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1], 3, 30),
    ]:
        answered_fraction_check(counts, unanswered, k)


@pytest.mark.slow
def test_win_probabilities_sum_at_n_2048():
    zipf = [max(1, int(2000 * 0.17 / (i + 1) ** 1.1)) for i in range(300)]
    zipf[0] += 2000 - sum(zipf)
    for counts, unanswered, k in [
        ([800, 300, 250, 200, 150, *[20] * 10, *[5] * 20, 1, 1, 1, 1, 1], 43, 512),
        (zipf, 48, 64),
    ]:
        assert sum(counts) + unanswered == 2048
        answered_fraction_check(counts, unanswered, k)


def test_unbiased_for_the_policys_maj_at_k():
    # answers 0, 1, 2 and "no answer" with these probabilities; 0 is correct
    probs = [Fraction(2, 5), Fraction(3, 10), Fraction(1, 5), Fraction(1, 10)]

    def draws(m):
        """Every vector of m draws' counts over the 4 outcomes, with its multinomial probability."""
        for cut in itertools.combinations(range(m + 3), 3):
            c = [cut[0], cut[1] - cut[0] - 1, cut[2] - cut[1] - 1, m + 2 - cut[2]]
            coef = math.factorial(m) // math.prod(math.factorial(x) for x in c)
            yield c, coef * math.prod(p**x for p, x in zip(probs, c))

    n = 7
    for k in range(1, n + 1):
        # the policy's maj@k: the tie-weighted win of answer 0 over k draws
        policy = sum(p * majority.maj_at_k(c[:3], 0, k, c[3], exact=True) for c, p in draws(k))
        expected = sum(p * majority.maj_at_k(c[:3], 0, k, c[3], exact=True) for c, p in draws(n))
        assert expected == policy


def test_from_answers_and_curve():
    answers = ["12", "12", "7", None, "7", "12", "x", None]
    counts = majority.maj_at_k_from_answers(answers, "12", 3, exact=True)
    assert counts == majority.maj_at_k([3, 2, 1], 0, 3, unanswered=2, exact=True)
    assert counts == brute_force([3, 2, 1], 0, 3, 2)
    assert majority.maj_at_k_from_answers(answers, "99", 4) == 0.0
    assert majority.maj_at_k_from_answers([None, None], "1", 2) == 0.0
    with pytest.raises(ValueError, match="gold is None"):
        majority.maj_at_k_from_answers(answers, None, 2)

    prompts = [answers, ["a", "b", "b", "b", "a", "c", "a", "a"]]
    curve = majority.maj_at_k_curve(prompts, ["12", "a"])
    assert curve.ks == (1, 2, 4, 8)
    for k, v in zip(curve.ks, curve.maj_at_k):
        want = (
            majority.maj_at_k_from_answers(prompts[0], "12", k)
            + majority.maj_at_k_from_answers(prompts[1], "a", k)
        ) / 2
        assert v == pytest.approx(want, rel=1e-15)
    assert curve.maj_at_k[0] == pytest.approx((3 / 8 + 4 / 8) / 2, rel=1e-15)
    assert curve.maj_at_k[-1] == 1.0
    assert list(curve.as_dict()) == ["maj@1", "maj@2", "maj@4", "maj@8"]
    assert majority.maj_at_k_curve(prompts, ["12", "a"], ks=[3]).ks == (3,)
    with pytest.raises(ValueError, match="one gold per prompt"):
        majority.maj_at_k_curve(prompts, ["12"])
    with pytest.raises(ValueError, match="at least one prompt"):
        majority.maj_at_k_curve([], [])


def test_bad_input():
    with pytest.raises(ValueError, match=r"k = 5 exceeds n = 4 .*k <= n"):
        majority.maj_at_k([2, 1], 0, 5, unanswered=1)
    with pytest.raises(ValueError, match="k >= 1"):
        majority.maj_at_k([2, 1], 0, 0)
    with pytest.raises(ValueError, match=r"counts\[1\] = -1 is negative"):
        majority.maj_at_k([2, -1], 0, 1)
    with pytest.raises(ValueError, match=r"counts\[0\] must be a whole number"):
        majority.maj_at_k([2.5, 1], 0, 1)
    with pytest.raises(ValueError, match=r"counts\[0\] must be a whole number, not a bool"):
        majority.maj_at_k([True, 1], 0, 1)
    with pytest.raises(ValueError, match="unanswered = -2 is negative"):
        majority.maj_at_k([2, 1], 0, 1, unanswered=-2)
    with pytest.raises(ValueError, match=r"correct = 2 is not an index into counts \(0\.\.1\)"):
        majority.maj_at_k([2, 1], 2, 1)
    with pytest.raises(ValueError, match="k must be a whole number"):
        majority.maj_at_k([2, 1], 0, 1.5)
