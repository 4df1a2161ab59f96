"""Classification as RL: the trainer's losses have the gradients docs/method.md says, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maxrl import objectives, passk
from maxrl.config import ConfigError, load_config
from maxrl.methods import MethodSpec
from maxrl.metrics import read_metrics
from maxrl.tasks.classification import (
    CompositeClassification,
    build_classifier,
    compose,
    label_rewards,
    load_arrays,
    sample_labels,
)
from maxrl.train.classify import (
    ClassifyConfig,
    evaluate,
    main,
    method_loss,
    policy_gradient_loss,
    run,
)

log_pass_at_k = passk.exact_log_pass_at_k

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fixed_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Four examples, ten classes, true-class probabilities 0.05, 0.15, 0.3 and 0.6.

    Moderate p, where (1 - p)^T still tells neighbouring truncation orders apart.
    """
    gen = torch.Generator().manual_seed(0)
    pass_rate = torch.tensor([0.05, 0.15, 0.3, 0.6], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    rest = torch.rand(4, 10, generator=gen, dtype=torch.float64) + 0.1
    rest[torch.arange(4), labels] = 0.0
    probs = rest / rest.sum(-1, keepdim=True) * (1 - pass_rate[:, None])
    probs[torch.arange(4), labels] = pass_rate
    return probs.log(), labels


def _truncated_grad(logits: torch.Tensor, labels: torch.Tensor, order: int) -> torch.Tensor:
    """Exact gradient of the loss -mean_b J_T(p_b) with respect to the logits."""
    leaf = logits.clone().requires_grad_(True)
    p = torch.softmax(leaf, dim=-1).gather(1, labels[:, None]).squeeze(1)
    (-objectives.truncated_objective(p, order).mean()).backward()
    return leaf.grad


@pytest.mark.parametrize(
    ("estimator", "params", "order"),
    [
        ("maxrl_t", {"T": 8}, 8),  # T = N: unbiased for J_N
        ("maxrl", {}, 7),  # Algorithm 1: unbiased for J_{N-1} (docs/method.md, section 3)
        ("reinforce", {}, 1),  # expected reward
    ],
)
def test_rl_loss_gradient_is_unbiased_for_truncated_objective(estimator, params, order):
    """Averaged over M sampled label sets, the trainer's gradient approaches grad J_T exactly.

    Tolerance: 5 standard errors per logit coordinate, the standard error measured from the M
    independent per-set gradients (40 coordinates; a false alarm has probability below 1e-4).
    The same test rejects the neighbours J_{T-1} and J_{T+1}, so it has the power to pin T.
    """
    samples, repeats = 8, 20_000
    logits, labels = _fixed_logits()
    batch = logits.repeat(repeats, 1).requires_grad_(True)  # one row per (set, example)
    loss, _ = method_loss(
        MethodSpec(estimator=estimator, samples=samples, params=params),
        batch,
        labels.repeat(repeats),
        torch.Generator().manual_seed(1),
    )
    loss.backward()
    # The loss is a mean over M * B rows; M times a set's rows' gradients is that set's estimate.
    per_set = batch.grad.reshape(repeats, 4, 10) * repeats
    mean = per_set.mean(0)
    stderr = per_set.std(0) / math.sqrt(repeats)
    exact = _truncated_grad(logits, labels, order)
    assert torch.all((mean - exact).abs() <= 5 * stderr)
    for other in (order - 1, order + 1):
        if other >= 1:
            neighbour = _truncated_grad(logits, labels, other)
            assert torch.any((mean - neighbour).abs() > 5 * stderr)


def test_cross_entropy_gradient_is_the_gradient_of_minus_log_p():
    torch.manual_seed(0)
    model = build_classifier(12, [16], 7).double()
    torch.nn.init.normal_(model[-1].weight)  # leave the zero start so p differs per example
    x = torch.randn(9, 12, dtype=torch.float64)
    y = torch.randint(7, (9,))
    loss, pass_rate = method_loss(MethodSpec(estimator="ce"), model(x), y, None)
    trainer_grads = torch.autograd.grad(loss, list(model.parameters()))
    p = torch.softmax(model(x), dim=-1).gather(1, y[:, None]).squeeze(1)
    direct_grads = torch.autograd.grad(-torch.log(p).mean(), list(model.parameters()))
    for got, want in zip(trainer_grads, direct_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert pass_rate == pytest.approx(p.mean().item(), rel=1e-12)


def test_maxrl_with_many_samples_points_where_cross_entropy_does():
    """maxrl at N samples is unbiased for J_{N-1}; with (1 - p)^(N-1) ~ 0 that is log p."""
    torch.manual_seed(0)
    model = build_classifier(12, [32], 10)
    torch.nn.init.normal_(model[-1].weight, std=0.3)
    x = torch.randn(32, 12)
    y = torch.randint(10, (32,))
    params = list(model.parameters())

    def flat_grad(method):
        loss, _ = method_loss(method, model(x), y, torch.Generator().manual_seed(0))
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    ce = flat_grad(MethodSpec(estimator="ce"))
    maxrl = flat_grad(MethodSpec(estimator="maxrl", samples=4096))
    reinforce = flat_grad(MethodSpec(estimator="reinforce", samples=4096))
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(maxrl, ce, dim=0) > 0.95
    # REINFORCE weights examples by p instead of 1: a visibly different direction.
    assert cosine(reinforce, ce, dim=0) < cosine(maxrl, ce, dim=0) - 0.05


def test_sampled_labels_follow_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]])
    n = 200_000
    actions = sample_labels(logits, n, torch.Generator().manual_seed(0))
    assert actions.shape == (2, n) and actions.dtype == torch.int64
    freq = torch.stack([torch.bincount(row, minlength=3) for row in actions]).double() / n
    probs = torch.softmax(logits.double(), dim=-1)
    # 5 binomial standard errors per cell
    assert torch.all((freq - probs).abs() <= 5 * torch.sqrt(probs * (1 - probs) / n))


def test_exact_pass_at_k_matches_the_direct_formula():
    p = torch.tensor([0.5, 0.1, 1e-3], dtype=torch.float64)
    for k in (1, 2, 7, 64, 1024):
        direct = torch.tensor([1 - (1 - v) ** k for v in p.tolist()], dtype=torch.float64)
        torch.testing.assert_close(log_pass_at_k(p.log(), k).exp(), direct, rtol=1e-12, atol=0)
    # Tiny p: 1 - (1-p)^k loses every digit in floating point; the series k p - C(k,2) p^2 not.
    tiny = 1e-12
    series = 1000 * tiny - 1000 * 999 / 2 * tiny**2
    assert log_pass_at_k(torch.tensor([math.log(tiny)]), 1000).exp().item() == pytest.approx(
        series, rel=1e-12
    )
    # p below the smallest double: pass@k = k p to all printed digits, in log space.
    assert log_pass_at_k(torch.tensor([-800.0]), 8).item() == pytest.approx(-800 + math.log(8))


def test_evaluate_reports_exact_test_metrics():
    logits, labels = _fixed_logits()
    ks = passk.powers_of_two(16)
    assert ks == [1, 2, 4, 8, 16]
    metrics = evaluate(torch.nn.Identity(), logits, labels, ks)
    p = torch.softmax(logits, dim=-1)[torch.arange(4), labels]
    for k in ks:
        direct = 1 - (1 - p) ** k
        assert metrics[f"eval/pass@{k}"] == pytest.approx(direct.mean().item(), rel=1e-12)
        assert metrics[f"eval/neg_log_pass@{k}"] == pytest.approx(
            (-direct.log()).mean().item(), rel=1e-12
        )
    assert metrics["eval/mean_log_p"] == pytest.approx(p.log().mean().item(), rel=1e-12)
    top1 = (logits.argmax(-1) == labels).double().mean().item()
    assert metrics["eval/top1"] == top1
    assert passk.powers_of_two(100)[-2:] == [64, 100]


def test_shape_mismatches_raise():
    actions = torch.zeros(4, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"labels \(3,\)"):
        label_rewards(actions, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="actions must be"):
        label_rewards(torch.zeros(8, dtype=torch.int64), torch.zeros(8, dtype=torch.int64))
    logits = torch.zeros(4, 5, requires_grad=True)
    with pytest.raises(ValueError, match=r"advantages \(4, 7\)"):
        policy_gradient_loss(logits, actions, torch.zeros(4, 7))
    with pytest.raises(ValueError, match="logits must be"):
        policy_gradient_loss(torch.zeros(3, 5), actions, torch.zeros(4, 8))


def test_composite_labels_read_the_tuple_in_base_c():
    features = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x, y = compose(features, labels, torch.tensor([[1, 2], [5, 3], [4, 4]]), base_classes=3)
    assert y.tolist() == [1 * 3 + 2, 2 * 3 + 0, 1 * 3 + 1]
    assert x.tolist() == [[2, 3, 4, 5], [10, 11, 6, 7], [8, 9, 8, 9]]


def test_npz_data_split_and_test_tuples_are_held_out(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    names = np.array(["cat", "dog", "eel"])[np.arange(60) % 3]
    path = tmp_path / "toy.npz"
    np.savez(path, X=features, y=names)
    task = CompositeClassification.from_source(str(path), arity=2, test_size=50, seed=3)
    assert (task.base_classes, task.num_classes, task.input_dim) == (3, 9, 6)
    assert task.test_features.shape == (50, 6) and task.test_labels.shape == (50,)
    assert 0 <= task.test_labels.min() and task.test_labels.max() < 9
    train_rows = {tuple(np.round(r, 5)) for r in task.train_features.tolist()}
    for row in task.test_features.reshape(100, 3).tolist():
        assert tuple(np.round(row, 5)) not in train_rows
    again = CompositeClassification.from_source(str(path), arity=2, test_size=50, seed=3)
    assert torch.equal(again.test_features, task.test_features)
    x, y = task.train_batch(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 6) and y.shape == (5,)
    _, labels = load_arrays(str(path))
    assert labels.tolist() == (np.arange(60) % 3).tolist()


def test_bad_data_raises(tmp_path):
    with pytest.raises(ValueError, match="neither 'digits' nor"):
        load_arrays(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['X'\]"):
        load_arrays(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="arity=0"):
        CompositeClassification.from_source("digits", arity=0)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("stepz=10", "unknown config key 'stepz'"),
        ("optimizer=rmsprop", "optimizer='rmsprop'"),
        ("methods=[{estimator: maxrlx, samples: 4}]", "maxrlx"),
        ("methods=[{estimator: maxrl_t, samples: 4, params: {T: 8}}]", "T=8 exceeds"),
        ("methods=[{estimator: grpo}]", "samples=0"),
        ("methods=[{estimator: ce, samples: 16}]", "ce samples no labels"),
        ("methods=[{estimator: ce}, {estimator: ce}]", "two methods are labelled 'ce'"),
        ("methods=[{estimator: grpo, samples: 4, overrides: [a=1]}]", "apply to maxrl sweep"),
        ("seeds=[]", "seeds is empty"),
    ],
)
def test_bad_config_raises_a_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ClassifyConfig, CONFIGS / "classify_quick.yaml", [override])


def test_shipped_configs_name_the_methods_they_run():
    cfg = load_config(ClassifyConfig, CONFIGS / "classify.yaml")
    assert (cfg.arity, cfg.optimizer, cfg.lr, cfg.momentum) == (3, "sgd", 0.1, 0.9)
    assert [(m.estimator, m.samples) for m in cfg.methods] == [
        ("ce", 0),
        ("maxrl", 16),
        ("maxrl", 128),
        ("maxrl", 1024),
        ("grpo", 1024),
        ("reinforce", 1024),
    ]
    quick = load_config(ClassifyConfig, CONFIGS / "classify_quick.yaml")
    assert [m.label for m in quick.methods] == [
        "ce",
        "maxrl_N16",
        "maxrl_t_N16_T8",
        "grpo_N16",
        "reinforce_N16",
    ]


def test_quick_config_runs_end_to_end(tmp_path, capsys):
    assert main([str(CONFIGS / "classify_quick.yaml"), f"out_dir={tmp_path}"]) == 0
    cfg = load_config(ClassifyConfig, CONFIGS / "classify_quick.yaml")
    ks = passk.powers_of_two(cfg.max_k)
    assert ks[-1] == 1024
    for method in cfg.methods:
        records = read_metrics(tmp_path / method.label / "seed0" / "metrics.jsonl")
        assert [r["step"] for r in records] == [0, 20, 40]
        for record in records:
            passes = [record[f"eval/pass@{k}"] for k in ks]
            assert all(0.0 <= v <= 1.0 for v in passes)
            assert all(a <= b for a, b in zip(passes, passes[1:]))
            assert 0.0 <= record["eval/top1"] <= 1.0
        # The zero output layer starts every example at chance, p = 1/100.
        assert records[0]["eval/pass@1"] == pytest.approx(0.01, rel=1e-9)
        assert records[0]["eval/mean_log_p"] == pytest.approx(-math.log(100), rel=1e-9)
    ce = read_metrics(tmp_path / "ce" / "seed0" / "metrics.jsonl")
    assert ce[-1]["eval/pass@1"] > 0.05  # cross-entropy learns within 40 steps
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {m.label} |" in summary for m in cfg.methods)
    assert summary in capsys.readouterr().out
    for png in ("pass1_vs_step.png", "passk_vs_k.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_config(ClassifyConfig, tmp_path / "config.yaml")
    assert saved.methods == cfg.methods and saved.out_dir == str(tmp_path)


def test_runs_are_deterministic_in_the_seed(tmp_path):
    overrides = [
        "steps=6",
        "eval_every=3",
        "seeds=[0,1]",
        "methods=[{estimator: maxrl, samples: 8}]",
    ]
    first = load_config(ClassifyConfig, CONFIGS / "classify_quick.yaml", overrides)
    first.out_dir = str(tmp_path / "a")
    second = load_config(ClassifyConfig, CONFIGS / "classify_quick.yaml", overrides)
    second.out_dir = str(tmp_path / "b")

    def strip(by_seed):
        return {
            seed: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]
            for seed, records in by_seed.items()
        }

    a, b = strip(run(first)["maxrl_N8"]), strip(run(second)["maxrl_N8"])
    assert a == b
    assert a[0][-1]["eval/pass@1"] != a[1][-1]["eval/pass@1"]


def test_a_noisy_verifier_scores_the_sampled_labels_and_spares_cross_entropy():
    logits, labels = _fixed_logits()
    spec = MethodSpec(estimator="maxrl", samples=64)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    _, clean = method_loss(spec, logits, labels, gen())
    # every label scored the wrong way round: the reward is 1 - the clean reward
    _, inverted = method_loss(spec, logits, labels, gen(), noise=(1.0, 1.0, gen()))
    assert inverted == pytest.approx(1 - clean, rel=1e-12)
    # every right label scored 0: all groups fail, so MaxRL's advantages and loss are 0
    loss, reward = method_loss(spec, logits, labels, gen(), noise=(0.0, 1.0, gen()))
    assert reward == 0.0 and loss.item() == 0.0
    ce = MethodSpec(estimator="ce")
    assert method_loss(ce, logits, labels, None, noise=(1.0, 1.0, gen()))[0].item() == (
        method_loss(ce, logits, labels, None)[0].item()
    )
