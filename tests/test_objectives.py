"""Population quantities of a pass rate: closed forms, limits and numerical soundness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maxrl import objectives as obj


def test_pass_and_fail_at_k_closed_forms():
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(obj.pass_at_k(p, 3), 1 - (1 - p) ** 3, rtol=1e-15, atol=0)
    np.testing.assert_allclose(obj.fail_at_k(p, 3), (1 - p) ** 3, rtol=1e-15, atol=0)
    # tiny p keeps its digits: pass@k ~ k p
    assert obj.pass_at_k(1e-15, 7) == pytest.approx(7e-15, rel=1e-9)


def test_truncated_objective_against_direct_sum_and_limits():
    for p in (0.01, 0.3, 0.99):
        for t in (1, 2, 5, 40):
            direct = -math.fsum((1 - p) ** k / k for k in range(1, t + 1))
            assert obj.truncated_objective(p, t) == pytest.approx(direct, rel=1e-13)
    # T = 1 is RL up to a constant: J_1 = p - 1
    assert obj.truncated_objective(0.3, 1) == pytest.approx(0.3 - 1, rel=1e-15)
    # T -> infinity is log p, even for T in the thousands
    for p in (0.05, 0.5):
        assert obj.truncated_objective(p, 5000) == pytest.approx(math.log(p), rel=1e-12)
    assert obj.truncated_objective(0.0, 4) == pytest.approx(-obj.harmonic(4), rel=1e-15)
    assert obj.truncated_objective(1.0, 3000) == 0.0


def test_gradient_closed_form_matches_autograd_and_limits():
    p = torch.tensor([1e-9, 0.02, 0.4, 0.97], dtype=torch.float64, requires_grad=True)
    for t in (1, 3, 64, 2000):
        (g,) = torch.autograd.grad(obj.truncated_objective(p, t).sum(), p)
        torch.testing.assert_close(
            obj.truncated_objective_grad(p.detach(), t), g, rtol=1e-10, atol=0
        )
    assert obj.truncated_objective_grad(0.0, 17) == 17.0  # the limit at p = 0
    assert obj.truncated_objective_grad(0.25, 1) == pytest.approx(1.0, rel=1e-15)  # RL
    assert obj.truncated_objective_grad(0.25, 10_000) == pytest.approx(4.0, rel=1e-12)  # ML


def test_log_p_series_identity():
    # grad log p = sum_k (1/k) grad pass@k: with d pass@k/dp = k (1-p)^(k-1) the terms sum to 1/p
    p = 0.2
    total = math.fsum(obj.pass_at_k_grad(p, k) / k for k in range(1, 400))
    assert total == pytest.approx(1 / p, rel=1e-12)


def test_weights():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(obj.weight("rl", p), np.ones(3))
    np.testing.assert_allclose(obj.weight("grpo", p), 1 / np.sqrt(p * (1 - p)), rtol=1e-15)
    np.testing.assert_allclose(obj.weight("ml", p), 1 / p, rtol=1e-15)
    np.testing.assert_allclose(obj.weight("maxrl", p, T=4), (1 - (1 - p) ** 4) / p, rtol=1e-14)
    np.testing.assert_allclose(obj.weight("pass_at_k", p, k=3), 3 * (1 - p) ** 2, rtol=1e-14)
    # GRPO's weight rises again as p -> 1; MaxRL's is monotone decreasing
    grid = np.linspace(0.01, 0.99, 99)
    assert np.all(np.diff(obj.weight("maxrl", grid, T=16)) < 0)
    assert obj.weight("grpo", 0.99) > obj.weight("grpo", 0.5)


def test_tensor_in_tensor_out_and_bad_input():
    out = obj.pass_at_k(torch.tensor([0.5]), 2)
    assert isinstance(out, torch.Tensor) and out.item() == 0.75
    assert isinstance(obj.pass_at_k(0.5, 2), float)
    with pytest.raises(ValueError, match="pass rate"):
        obj.pass_at_k(1.2, 2)
    with pytest.raises(ValueError, match="pass rate"):
        obj.truncated_objective(float("nan"), 2)
    with pytest.raises(ValueError, match="T must be an integer >= 1; got 0"):
        obj.truncated_objective(0.5, 0)
    with pytest.raises(ValueError, match="unknown weight method"):
        obj.weight("ppo", 0.5)
    with pytest.raises(ValueError, match="needs the truncation order"):
        obj.weight("maxrl", 0.5)
