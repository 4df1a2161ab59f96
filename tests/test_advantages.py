"""Every estimator against its documented target, by the exact check of docs/method.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maxrl import advantages, objectives

NS = (2, 3, 8, 64)
PS = (0.003, 0.05, 0.3, 0.5, 0.77, 0.98)


def _success_failure_advantages(name: str, n: int, **params):
    """A_s(K), A_f(K) for K = 0..N from one call on the N+1 reward patterns."""
    rewards = torch.tensor([[1.0] * k + [0.0] * (n - k) for k in range(n + 1)], dtype=torch.float64)
    adv = advantages.compute(name, rewards, **params)
    a_s = [float(adv[k, 0]) if k > 0 else 0.0 for k in range(n + 1)]
    a_f = [float(adv[k, n - 1]) if k < n else 0.0 for k in range(n + 1)]
    return a_s, a_f


def expected_gradient_ratio(name: str, n: int, p: float, **params) -> float:
    """E[g] / grad p = sum_K C(N,K) p^K (1-p)^(N-K) (1/N) [K A_s(K)/p - (N-K) A_f(K)/(1-p)]."""
    a_s, a_f = _success_failure_advantages(name, n, **params)
    total = []
    for k in range(n + 1):
        prob = math.comb(n, k) * p**k * (1 - p) ** (n - k)
        total.append(prob / n * (k * a_s[k] / p - (n - k) * a_f[k] / (1 - p)))
    return math.fsum(total)


def _close(got: float, want: float) -> None:
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("p", PS)
def test_reinforce_rloo_dr_grpo_targets(n, p):
    _close(expected_gradient_ratio("reinforce", n, p), 1.0)
    _close(expected_gradient_ratio("rloo", n, p), 1.0)
    _close(expected_gradient_ratio("dr_grpo", n, p), 1 - 1 / n)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("p", PS)
def test_maxrl_algorithm1_is_unbiased_for_j_n_minus_1(n, p):
    _close(expected_gradient_ratio("maxrl", n, p), objectives.truncated_objective_grad(p, n - 1))
    # and therefore NOT for J_N: the gap is exactly (1-p)^(N-1)
    gap = objectives.truncated_objective_grad(p, n) - expected_gradient_ratio("maxrl", n, p)
    _close(gap, (1 - p) ** (n - 1))


@pytest.mark.parametrize("baseline", ["loo", "constant", "none"])
@pytest.mark.parametrize("n", NS)
def test_maxrl_t_is_unbiased_for_j_t_for_every_t(n, baseline):
    for t in range(1, n + 1):
        for p in PS:
            got = expected_gradient_ratio("maxrl_t", n, p, T=t, baseline=baseline)
            _close(got, objectives.truncated_objective_grad(p, t))


@pytest.mark.parametrize("baseline", ["loo", "none"])
@pytest.mark.parametrize("n", NS)
def test_pass_at_k_is_unbiased_for_grad_pass_at_k_for_every_k(n, baseline):
    for k in range(1, n + 1):
        for p in PS:
            got = expected_gradient_ratio("pass_at_k", n, p, k=k, baseline=baseline)
            _close(got, objectives.pass_at_k_grad(p, k))


def test_maxrl_t_coefficient_matches_the_subset_sum_definition():
    """N c_{T,N}(K) from its defining sum (docs/estimators.md), in exact rational arithmetic, against
    the code."""
    from fractions import Fraction

    for n in (2, 3, 5, 8, 12):
        for t in range(1, n + 1):
            a_s, _ = _success_failure_advantages("maxrl_t", n, T=t, baseline="none")
            for k_succ in range(1, n + 1):
                c = sum(
                    Fraction(math.comb(k_succ - 1, k - 1) * math.comb(n - k_succ, t - k), k)
                    for k in range(1, min(t, k_succ) + 1)
                ) / math.comb(n, t)
                assert a_s[k_succ] == pytest.approx(float(n * c), rel=1e-12)


def test_maxrl_t_at_t_equals_n_is_theorem_2_with_constant_baseline():
    r = torch.tensor(
        [[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64
    )
    got = advantages.compute("maxrl_t", r, T=4, baseline="constant")
    want = torch.tensor(
        [[3.0, -1, -1, -1], [1, 1, -1, -1], [-1, -1, -1, -1], [0, 0, 0, 0]], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pinned_edge_cases():
    r = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(
        advantages.compute("maxrl", r),
        torch.tensor([[3.0, -1, -1, -1], [0, 0, 0, 0], [0, 0, 0, 0]]),
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        advantages.compute("rloo", r),
        torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [0, 0, 0, 0], [0, 0, 0, 0]]),
    )
    torch.testing.assert_close(
        advantages.compute("dr_grpo", r),
        torch.tensor([[0.75, -0.25, -0.25, -0.25], [0, 0, 0, 0], [0, 0, 0, 0]]),
    )
    # grpo: sample std of [1,0,0,0] is 0.5, so (1 - 0.25)/0.5 = 1.5; constant groups are 0
    torch.testing.assert_close(
        advantages.compute("grpo", r, eps=0.0)[0], torch.tensor([1.5, -0.5, -0.5, -0.5])
    )
    torch.testing.assert_close(advantages.compute("grpo", r)[1:], torch.zeros(2, 4))
    torch.testing.assert_close(advantages.compute("grpo", r, eps=0.0)[1:], torch.zeros(2, 4))
    torch.testing.assert_close(advantages.compute("reinforce", r), r)
    # leave-one-out maxrl_t gives all-fail and all-success groups zero advantage
    torch.testing.assert_close(
        advantages.compute("maxrl_t", r, T=3, baseline="loo")[1:], torch.zeros(2, 4)
    )
    # the default constant baseline keeps -1 on all-fail groups (unbiased for J_T, not J_{T-1})
    torch.testing.assert_close(
        advantages.compute("maxrl_t", r, T=3)[1:], torch.tensor([[-1.0] * 4, [0.0] * 4])
    )
    torch.testing.assert_close(advantages.compute("pass_at_k", r, k=3)[1:], torch.zeros(2, 4))
    # pass_at_k with k = 1 is RLOO
    torch.testing.assert_close(
        advantages.compute("pass_at_k", r, k=1), advantages.compute("rloo", r)
    )


def test_maxrl_matches_algorithm_1_on_random_groups():
    gen = torch.Generator().manual_seed(0)
    r = (torch.rand(500, 16, generator=gen) < 0.2).double()
    got = advantages.compute("maxrl", r)
    mean = r.mean(1, keepdim=True)
    want = torch.where(mean > 0, (r - mean) / mean.clamp_min(1e-300), torch.zeros_like(r))
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


def test_ragged_groups_equal_dense_per_group():
    gen = torch.Generator().manual_seed(1)
    sizes = [2, 5, 3, 8, 4]
    flat = (torch.rand(sum(sizes), generator=gen) < 0.4).double()
    labels = torch.repeat_interleave(torch.tensor([40, 7, 13, 2, 99]), torch.tensor(sizes))
    perm = torch.randperm(len(flat), generator=gen)
    flat_p, labels_p = flat[perm], labels[perm]
    for name, params in [
        ("maxrl", {}),
        ("grpo", {}),
        ("rloo", {}),
        ("maxrl_t", {"T": 2}),
        ("pass_at_k", {"k": 2}),
        ("dr_grpo", {}),
    ]:
        got = advantages.compute(name, flat_p, group_ids=labels_p, **params)
        for label in labels.unique():
            mask = labels_p == label
            want = advantages.compute(name, flat_p[mask][None, :], **params)[0]
            torch.testing.assert_close(got[mask], want, rtol=1e-12, atol=1e-12)


def test_output_shape_and_dtype_follow_input():
    r32 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float32)
    assert advantages.compute("maxrl", r32).dtype == torch.float32
    assert advantages.compute("maxrl", [[1, 0, 0]]).dtype == torch.float32
    assert advantages.compute("maxrl", r32.double()).shape == (1, 3)


# ---- bad input ----


def test_non_binary_rewards_raise_naming_group_and_value():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.7, 1.0]])
    for name, params in [("maxrl", {}), ("maxrl_t", {"T": 2}), ("pass_at_k", {"k": 1})]:
        with pytest.raises(ValueError, match=r"0\.7.*group 3.*reward_threshold"):
            advantages.compute(name, r, **params)
    got = advantages.compute("maxrl", torch.tensor([[0.3, 0.9], [0.7, 1.0]]), reward_threshold=0.5)
    torch.testing.assert_close(got, torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))
    # estimators defined for any reward accept it
    assert advantages.compute("grpo", r).shape == r.shape


def test_nan_rewards_raise():
    r = torch.tensor([[1.0, 0.0], [float("nan"), 1.0]])
    for name in advantages.names():
        params = {"T": 1} if name == "maxrl_t" else {"k": 1} if name == "pass_at_k" else {}
        with pytest.raises(ValueError, match=r"finite.*group 1"):
            advantages.compute(name, r, **params)


def test_groups_too_small_raise():
    r = torch.tensor([[1.0], [0.0]])
    for name in ["maxrl", "rloo", "grpo", "dr_grpo", "maxrl_t", "pass_at_k"]:
        params = {"T": 1} if name == "maxrl_t" else {"k": 1} if name == "pass_at_k" else {}
        with pytest.raises(ValueError, match="at least 2 rollouts"):
            advantages.compute(name, r, **params)
    torch.testing.assert_close(advantages.compute("reinforce", r), r)
    with pytest.raises(ValueError, match="at least 2 rollouts"):
        advantages.compute("maxrl", torch.tensor([1.0, 0, 1]), group_ids=torch.tensor([0, 0, 1]))


def test_order_out_of_range_and_unknown_names_raise():
    r = torch.zeros(2, 4)
    for bad in (0, 5, -1, 2.5, True):
        with pytest.raises(ValueError, match="T"):
            advantages.compute("maxrl_t", r, T=bad)
        with pytest.raises(ValueError, match="k"):
            advantages.compute("pass_at_k", r, k=bad)
    with pytest.raises(ValueError, match="needs the parameter 'T'"):
        advantages.compute("maxrl_t", r)
    with pytest.raises(ValueError, match="unknown advantage estimator 'maxrll'"):
        advantages.compute("maxrll", r)
    with pytest.raises(ValueError, match="takes no parameter 'T'"):
        advantages.compute("maxrl", r, T=2)
    with pytest.raises(ValueError, match="baseline"):
        advantages.compute("maxrl_t", r, T=2, baseline="mean")
    with pytest.raises(ValueError, match="shape"):
        advantages.compute("maxrl", torch.zeros(4))


# ---- end to end through autograd ----


def _categorical_policy_check(name, n, target_grad, groups=100_000, seed=0, **params):
    """Average the surrogate-loss gradient over sampled groups; compare with the exact gradient.

    Policy: softmax over 6 outcomes, outcomes {0, 1} succeed. Returns (estimate, exact, stderr,
    per-group variance trace).
    """
    torch.manual_seed(seed)
    theta = torch.tensor([-1.2, -0.4, 0.3, 0.0, 0.5, -0.2], dtype=torch.float64, requires_grad=True)
    success = torch.tensor([1.0, 1, 0, 0, 0, 0], dtype=torch.float64)
    probs = torch.softmax(theta, 0)
    z = torch.multinomial(probs.detach().expand(groups, -1), n, replacement=True)
    r = success[z]
    adv = advantages.compute(name, r, **params)
    logp = torch.log_softmax(theta, 0)[z]
    # the library's convention: group gradient = MEAN over rollouts of A_i * grad log pi(z_i)
    loss = -(adv * logp).mean(1).mean(0)
    (est,) = torch.autograd.grad(-loss, theta)
    # per-group gradient estimates, analytically: (1/N) sum_i A_i (onehot(z_i) - pi)
    onehot = torch.nn.functional.one_hot(z, 6).double()
    per_group = (adv[..., None] * (onehot - probs.detach())).mean(1)
    torch.testing.assert_close(per_group.mean(0), est, rtol=1e-10, atol=1e-12)
    stderr = per_group.std(0) / math.sqrt(groups)
    p = (probs * success).sum()
    (exact,) = torch.autograd.grad(target_grad(p), theta)
    return est, exact, stderr, float(per_group.var(0).sum())


@pytest.mark.parametrize(
    "name,n,params,target",
    [
        ("maxrl", 8, {}, lambda p: objectives.truncated_objective(p, 7)),
        ("maxrl_t", 8, {"T": 8}, lambda p: objectives.truncated_objective(p, 8)),
        ("maxrl_t", 8, {"T": 3}, lambda p: objectives.truncated_objective(p, 3)),
        ("pass_at_k", 8, {"k": 4}, lambda p: objectives.pass_at_k(p, 4)),
        ("rloo", 4, {}, lambda p: p),
    ],
)
def test_surrogate_loss_gradient_matches_exact_objective(name, n, params, target):
    est, exact, stderr, _ = _categorical_policy_check(name, n, target, **params)
    # 100k groups: each coordinate within 4.5 standard errors (about 1 in 150k chance per coord)
    assert torch.all((est - exact).abs() < 4.5 * stderr), (est, exact, stderr)


def test_autograd_check_is_sharp_enough_to_tell_j_n_minus_1_from_j_n():
    est, _, stderr, _ = _categorical_policy_check(
        "maxrl", 8, lambda p: objectives.truncated_objective(p, 7)
    )
    *_, exact_jn, _, _ = (
        None,
        *_categorical_policy_check(
            "maxrl", 8, lambda p: objectives.truncated_objective(p, 8), groups=10
        )[1:],
    )
    assert torch.any((est - exact_jn).abs() > 10 * stderr)


def test_exact_check_is_sharp_enough_to_reject_wrong_targets():
    # maxrl (Algorithm 1) with N = 8 must not pass as J_8, nor dr_grpo as J_1
    assert (
        abs(expected_gradient_ratio("maxrl", 8, 0.3) - objectives.truncated_objective_grad(0.3, 8))
        > 1e-3
    )
    assert abs(expected_gradient_ratio("dr_grpo", 8, 0.3) - 1.0) > 1e-3
    np.testing.assert_allclose(
        expected_gradient_ratio("grpo", 8, 0.5), 1 / math.sqrt(0.25), rtol=0.2
    )
