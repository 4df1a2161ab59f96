"""The paper's Table 3 baselines and its noisy-verifier study: the entropy bonus, Differential
Smoothing, verifier noise, and what evaluation reports about them."""

from __future__ import annotations

import math

import pytest
import torch

from maxrl import advantages, passk
from maxrl.groups import flip_rewards
from maxrl.metrics import read_metrics
from maxrl.train import rl
from maxrl.train.checkpoints import latest_checkpoint
from maxrl.train.loss import policy_loss


def test_entropy_coef_adds_exactly_the_entropy_gradient():
    """The loss with an entropy bonus has the gradient of the hand-written loss
    -(1/tokens) sum_{i,t} (A_i log pi_{i,t} + c H_{i,t}), in float64."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(7, (5, 4), generator=gen)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 2:] = False
    adv = torch.randn(5, generator=gen, dtype=torch.float64)
    coef = 0.37

    def parts():
        logp_all = logits.log_softmax(-1)
        logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
        return logp, -(logp_all.exp() * logp_all).sum(-1)

    logp, ent = parts()
    ours = policy_loss(
        logp, None, adv, mask, agg="token_mean", denom=float(mask.sum()), clip_eps=0.2,
        on_policy=True, entropy=ent, entropy_coef=coef,
    ).loss  # fmt: skip
    (got,) = torch.autograd.grad(ours, logits)
    logp, ent = parts()
    m = mask.double()
    hand = -((adv[:, None] * logp + coef * ent) * m).sum() / m.sum()
    (want,) = torch.autograd.grad(hand, logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # and the bonus is not negligible here: without it the gradient differs
    (plain,) = torch.autograd.grad(-(adv[:, None] * parts()[0] * m).sum() / m.sum(), logits)
    assert (got - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no per-token entropies"):
        policy_loss(logp, None, adv, mask, agg="token_mean", denom=1.0, clip_eps=0.2,
                    on_policy=True, entropy_coef=0.1)  # fmt: skip


def test_differential_smoothing_by_value():
    """GRPO with the population std (eps 1e-6), then -c m_i for a correct rollout and +c m_i for
    a wrong one, computed here by hand for known mean log-probabilities."""
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
    m = torch.tensor([[-0.5, -1.0, -2.0, -0.1], [-1.0, -0.3, -0.2, -4.0], [-0.2, -0.4, -0.6, -0.8]])
    got = advantages.compute("differential_smoothing", rewards, mean_logprob=m)
    want = torch.zeros(3, 4, dtype=torch.float64)
    for g in range(3):
        r = rewards[g].double()
        std = float(((r - r.mean()) ** 2).mean().sqrt())
        base = (r - r.mean()) / (std + 1e-6)
        want[g] = base - 0.05 * m[g].double() * r + 0.05 * m[g].double() * (1 - r)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    assert got[1].tolist() == pytest.approx([-0.05, -0.015, -0.01, -0.2], rel=1e-6)
    prepared = advantages.prepare("differential_smoothing", 4, c_correct=0.1, c_incorrect=0.0)
    scaled = prepared(rewards, mean_logprob=m)
    assert scaled[0, 0].item() == pytest.approx(0.5 / (0.5 + 1e-6) + 0.05, rel=1e-6)
    assert scaled[0, 1].item() == pytest.approx(-0.5 / (0.5 + 1e-6), rel=1e-6)
    with pytest.raises(ValueError, match="pass mean_logprob="):
        advantages.compute("differential_smoothing", rewards)
    assert advantages.get("differential_smoothing").target.startswith("none")


def test_a_noisy_verifier_flips_at_its_rates():
    """Each flip is a Bernoulli draw: with 100,000 wrong and 100,000 right rollouts the counts
    lie within 5 binomial standard deviations of fp * 1e5 and fn * 1e5 (a failure has
    probability below 1e-6 for a correct implementation; the draws are seeded)."""
    from dataclasses import replace

    rewards = torch.cat([torch.zeros(100_000), torch.ones(100_000)]).reshape(2000, 100)
    record = _record(rewards)
    for fp, fn in ((0.1, 0.0), (0.0, 0.25), (0.25, 0.1)):
        noisy, flips = flip_rewards(record, fp, fn, torch.Generator().manual_seed(1))
        for rate, count in ((fp, flips["flips_to_1"]), (fn, flips["flips_to_0"])):
            assert abs(count - rate * 1e5) <= 5 * math.sqrt(1e5 * rate * (1 - rate))
        assert torch.equal(noisy.clean_rewards, rewards)
        changed = noisy.rewards != rewards
        assert int(changed.sum()) == flips["flips_to_1"] + flips["flips_to_0"]
        assert bool((noisy.rewards[changed] == 1 - rewards[changed]).all())
    same, _ = flip_rewards(replace(record), 0.2, 0.2, torch.Generator().manual_seed(7))
    again, _ = flip_rewards(replace(record), 0.2, 0.2, torch.Generator().manual_seed(7))
    assert torch.equal(same.rewards, again.rewards)


def _record(rewards):
    from maxrl.groups import RolloutGroups
    from maxrl.rollout import SamplingParams
    from maxrl.rollout.base import empty_rollouts

    params = SamplingParams(2)
    p, n = rewards.shape
    return RolloutGroups(
        items=[None] * p, prompt_ids=[[1]] * p, group_size=n,
        rollouts=empty_rollouts(p * n, params, 0), completions=[""] * (p * n),
        rewards=rewards, params=params, pad_token_id=0,
    )  # fmt: skip


def test_noisy_training_evaluates_clean_counts_flips_and_resumes_exactly(tmp_path, tiny_init):
    from test_trainer import FirstMoveTask, _deterministic, tiny_cfg

    noise = ["task.false_positive_rate=0.25", "task.false_negative_rate=0.25"]
    clean_dir, noisy_dir, crashed = tmp_path / "clean", tmp_path / "noisy", tmp_path / "crashed"
    rl.train(tiny_cfg(clean_dir, tiny_init, "run.steps=4"), task=FirstMoveTask())
    rl.train(tiny_cfg(noisy_dir, tiny_init, "run.steps=4", *noise), task=FirstMoveTask())
    clean, noisy = (
        read_metrics(clean_dir / "metrics.jsonl"),
        read_metrics(noisy_dir / "metrics.jsonl"),
    )
    # step 0 is evaluated before any update: the clean verifier scores it, noise or not
    assert {k: v for k, v in clean[0].items() if k.startswith("eval/")} == {
        k: v for k, v in noisy[0].items() if k.startswith("eval/")
    }
    train = [r for r in noisy if "train/reward_mean" in r]
    assert sum(r["train/flips_to_1"] + r["train/flips_to_0"] for r in train) > 0
    assert any(r["train/reward_mean"] != r["train/clean_reward_mean"] for r in train)
    assert all("train/flips_to_1" not in r for r in clean)
    # a crash and a resume replay the same flips
    real = rl.optimise

    def crash_at_3(*args, step, **kwargs):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, step=step, **kwargs)

    rl.optimise = crash_at_3
    try:
        with pytest.raises(KeyboardInterrupt):
            rl.train(tiny_cfg(crashed, tiny_init, "run.steps=4", *noise), task=FirstMoveTask())
    finally:
        rl.optimise = real
    assert latest_checkpoint(crashed).name == "step_0000002"
    rl.train(tiny_cfg(crashed, tiny_init, "run.steps=4", *noise), task=FirstMoveTask())
    assert _deterministic(read_metrics(crashed / "metrics.jsonl")) == _deterministic(noisy)


def test_evaluation_reports_the_pass_rate_distribution(tmp_path, tiny_init):
    from test_trainer import FirstMoveTask, tiny_cfg

    rl.train(tiny_cfg(tmp_path, tiny_init, "run.steps=2"), task=FirstMoveTask())
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/pass@1" in r]
    for record in evals:
        bins = {b.name: record[f"eval/pass_rate/{b.name}"] for b in passk.PASS_RATE_BINS}
        assert sum(bins.values()) == pytest.approx(1.0, rel=1e-12)
        # 4 prompts x 8 samples: the mean pass rate is the pass@1 the record reports
        assert all(4 * v == pytest.approx(round(4 * v)) for v in bins.values())
    assert (tmp_path / "pass_rate_histogram.png").read_bytes()[:4] == b"\x89PNG"


def test_majority_vote_metrics_by_value():
    """eval/maj@k from crafted votes: every correct sample votes for the correct answer."""
    from maxrl.eval.evaluate import majority_metrics
    from maxrl.majority import maj_at_k

    completions = ["A", "A", "B", "x", "A", "B", "B", "none"]  # 2 prompts x 4 samples
    rewards = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]])
    record = _record(rewards)
    record.completions = completions
    keys = {"A": "a", "B": "b", "x": "c", "none": None}
    got = majority_metrics(record, keys.get, (1, 2, 4))
    # prompt 0: correct 2 (A, A), wrong B 1, wrong x 1; prompt 1: A 1, B 2, unanswered 1, no
    # correct sample
    for k in (1, 2, 4):
        want = (maj_at_k([2, 1, 1], 0, k) + maj_at_k([1, 2], None, k, unanswered=1)) / 2
        assert got[f"eval/maj@{k}"] == pytest.approx(want, rel=1e-12)
    assert got["eval/maj@1"] == pytest.approx(0.25, rel=1e-12)
