r"""Majority-vote accuracy maj@k from n samples, for tasks whose answers compare (math).

- :func:`maj_at_k`: the unbiased maj@k from n samples, the mean over all k-subsets of the samples
  of "the subset's majority answer is correct" (a tie among t + 1 most-voted answers counts
  1/(t + 1)), counted exactly per vote profile instead of enumerating subsets.
- :func:`maj_at_k_from_answers` takes the answers themselves, :func:`maj_at_k_curve` averages
  over prompts for k = 1, 2, 4, ..., n.
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

from maxrl.passk import powers_of_two

__all__ = ["MajAtKCurve", "maj_at_k", "maj_at_k_curve", "maj_at_k_from_answers"]


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
