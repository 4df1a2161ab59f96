"""``maxrl classify``: classification as RL, where exact maximum likelihood is cross-entropy.

The small-scale version of the paper's ImageNet experiment (docs/method.md, section 5). The
policy is a softmax classifier (an MLP trained from scratch on composite digit tuples, see
``maxrl.tasks.classification``); an action is a sampled label with reward 1 if it is the true
label, so the pass rate of an example is exactly p = softmax probability of its true class and
pass@k = 1 - (1 - p)^k is known without sampling. Every method sees the same batches of examples
for a given seed and takes one optimiser step per batch:

- ``ce``: cross-entropy, -log p per example: the exact gradient of J_ML = E[log p].
- any estimator of ``maxrl.advantages`` (maxrl, maxrl_t, grpo, rloo, reinforce, ...): N labels
  per example are sampled from the current policy (one ``torch.multinomial`` call for the batch),
  rewarded, turned into advantages A_i per example (one group per example), and the loss is
  -(1/N) sum_i A_i log pi(a_i | x) averaged over the batch.

Departures from textbook policy-gradient RL, as in the paper: strictly on-policy, so there is no
importance ratio and no clipping; no KL term, no entropy bonus. The default optimiser is the
paper's SGD with momentum 0.9 and lr 0.1; on SGD the size of each method's gradient matters, which
is the whole effect (REINFORCE's gradient is p times the CE gradient).

Outputs in ``out_dir``: ``<method>/seed<s>/metrics.jsonl`` (one record per evaluation, as
``maxrl train`` writes them), ``summary.md`` (the final table, mean ± sd over seeds, also
printed), ``pass1_vs_step.png``, ``passk_vs_k.png`` and ``config.yaml``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maxrl import advantages, passk
from maxrl.config import ConfigError, parse_cli, save_config
from maxrl.eval.classify_report import plot, summary_table
from maxrl.groups import noisy_rewards
from maxrl.methods import CROSS_ENTROPY, MethodSpec, check_unique
from maxrl.metrics import MetricsLogger, read_metrics
from maxrl.seeding import generator, step_seed
from maxrl.tasks.classification import (
    CompositeClassification,
    build_classifier,
    label_rewards,
    sample_labels,
)

__all__ = ["ClassifyConfig", "MethodSpec", "evaluate", "main", "method_loss", "run"]


def _default_methods() -> list[MethodSpec]:
    """The paper's ImageNet set: MaxRL at 16 / 128 / 1024 labels, GRPO and REINFORCE at 1024."""
    return [
        MethodSpec(estimator=CROSS_ENTROPY),
        MethodSpec(estimator="maxrl", samples=16),
        MethodSpec(estimator="maxrl", samples=128),
        MethodSpec(estimator="maxrl", samples=1024),
        MethodSpec(estimator="grpo", samples=1024),
        MethodSpec(estimator="reinforce", samples=1024),
    ]


@dataclass
class ClassifyConfig:
    """Options of ``maxrl classify`` (see the module docstring)."""

    data: str = field(
        default="digits",
        metadata={"help": "'digits' (scikit-learn) or the path of an .npz with arrays X and y"},
    )
    arity: int = field(
        default=3,
        metadata={"help": "base examples per composite example: C**arity classes, p0 = C**-arity"},
    )
    test_fraction: float = field(
        default=0.3, metadata={"help": "fraction of base examples held out for testing"}
    )
    test_size: int = field(
        default=2000, metadata={"help": "composite test examples (arity > 1), fixed by data_seed"}
    )
    data_seed: int = field(
        default=0, metadata={"help": "seed of the train/test split and of the test tuples"}
    )
    hidden_sizes: list[int] = field(
        default_factory=lambda: [256],
        metadata={"help": "widths of the MLP's hidden ReLU layers ([] = linear softmax)"},
    )
    optimizer: str = field(default="sgd", metadata={"help": "'sgd' (with momentum) or 'adam'"})
    lr: float = field(default=0.1, metadata={"help": "learning rate (paper: SGD lr 0.1)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (paper: 0.9)"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay"})
    batch_size: int = field(default=128, metadata={"help": "examples per optimiser step"})
    steps: int = field(default=2000, metadata={"help": "optimiser steps per method and seed"})
    eval_every: int = field(
        default=100, metadata={"help": "evaluate on the test set every this many steps"}
    )
    max_k: int = field(
        default=1024, metadata={"help": "pass@k is reported for k = 1, 2, 4, ... up to max_k"}
    )
    methods: list[MethodSpec] = field(
        default_factory=_default_methods,
        metadata={"help": "methods to compare: a list of {estimator, samples, params, name}"},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "training seeds (model init, batches, sampled labels)"},
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads while training"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to TensorBoard"})
    false_positive_rate: float = field(
        default=0.0,
        metadata={"help": "noisy verifier: chance a wrong label scores 1 (RL methods only)"},
    )
    false_negative_rate: float = field(
        default=0.0,
        metadata={"help": "noisy verifier: chance the true label scores 0 (RL methods only)"},
    )
    out_dir: str = field(
        default="runs/classify", metadata={"help": "where metrics, summary and plots go"}
    )

    def validate(self) -> None:
        for key in ("arity", "test_size", "batch_size", "steps", "eval_every", "max_k", "threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        for key in ("false_positive_rate", "false_negative_rate"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be in [0, 1)")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of 'sgd', 'adam'")
        if any(width < 1 for width in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes={self.hidden_sizes} must hold positive widths")
        if not self.methods:
            raise ConfigError("methods is empty; list at least one, e.g. methods=[{estimator: ce}]")
        if not self.seeds:
            raise ConfigError("seeds is empty; give at least one, e.g. seeds=[0]")
        for method in self.methods:
            _check_method(method)
        try:
            check_unique(self.methods)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _check_method(method: MethodSpec) -> None:
    """Fail at start-up, not mid-run, on an unknown estimator or bad parameters."""
    if method.overrides:
        raise ConfigError(f"method {method.label!r}: overrides apply to maxrl sweep, not classify")
    if method.estimator == CROSS_ENTROPY:
        if method.samples or method.params:
            raise ConfigError(
                f"method {method.label!r}: ce samples no labels; drop samples and params"
            )
        return
    if method.samples < 1:
        raise ConfigError(
            f"method {method.label!r}: samples={method.samples}; an RL estimator needs >= 1 "
            "sampled labels per example"
        )
    try:
        method.validate(method.samples)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# -- losses -----------------------------------------------------------------------------------


def policy_gradient_loss(logits: Tensor, actions: Tensor, advantages: Tensor) -> Tensor:
    """Surrogate loss -(1/B) sum_b (1/N) sum_i A_bi log pi(a_bi | x_b).

    Its gradient is the batch mean of each example's estimate (1/N) sum_i A_i grad log pi(a_i),
    the library's convention for a group of N rollouts.
    """
    if actions.ndim != 2 or advantages.shape != actions.shape:
        raise ValueError(
            f"advantages must have the (B, N) shape of the sampled labels; got advantages "
            f"{tuple(advantages.shape)} for labels {tuple(actions.shape)}"
        )
    if logits.ndim != 2 or logits.shape[0] != actions.shape[0]:
        raise ValueError(
            f"logits must be (B, classes) with B = {actions.shape[0]} rows of sampled labels; "
            f"got {tuple(logits.shape)}"
        )
    log_pi = torch.log_softmax(logits, dim=-1).gather(1, actions)
    return -(advantages.detach().to(log_pi.dtype) * log_pi).mean(dim=1).mean()


def method_loss(
    method: MethodSpec,
    logits: Tensor,
    labels: Tensor,
    generator: torch.Generator | None,
    estimator: advantages.PreparedEstimator | None = None,
    noise: tuple[float, float, torch.Generator] | None = None,
) -> tuple[Tensor, float]:
    """The method's training loss on a batch, and the mean reward of its sampled labels.

    For ``ce`` the second value is the mean pass rate p itself (what the reward estimates).
    ``estimator`` is the method's prepared estimator (prepared here when None); ``noise`` =
    (false positive rate, false negative rate, generator) scores the sampled labels with a noisy
    verifier (:func:`maxrl.groups.noisy_rewards`); cross-entropy reads the true labels and is
    unaffected.
    """
    if method.estimator == CROSS_ENTROPY:
        loss = F.cross_entropy(logits, labels)
        pass_rate = torch.exp(-F.cross_entropy(logits.detach(), labels, reduction="none"))
        return loss, pass_rate.mean().item()
    if estimator is None:
        estimator = advantages.prepare(method.estimator, method.samples, **method.params)
    actions = sample_labels(logits, method.samples, generator)
    rewards = label_rewards(actions, labels)
    if noise is not None:
        rewards, _ = noisy_rewards(rewards, *noise)
    return policy_gradient_loss(logits, actions, estimator(rewards)), rewards.mean().item()


# -- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, features: Tensor, labels: Tensor, ks: Sequence[int]) -> dict:
    """Exact test metrics: pass@k and mean -log pass@k for each k, mean log p, top-1 accuracy.

    The pass rate of an example is the softmax probability of its true label, so pass@k =
    1 - (1 - p)^k exactly (:func:`maxrl.passk.exact_log_pass_at_k`), with no sampling.
    """
    logits = model(features)
    log_p = torch.log_softmax(logits.double(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    metrics = {
        "eval/top1": (logits.argmax(dim=-1) == labels).double().mean().item(),
        "eval/mean_log_p": log_p.mean().item(),
    }
    for k in ks:
        log_pass = passk.exact_log_pass_at_k(log_p, k)
        metrics[f"eval/pass@{k}"] = log_pass.exp().mean().item()
        metrics[f"eval/neg_log_pass@{k}"] = (-log_pass).mean().item()
    return metrics


# -- training ---------------------------------------------------------------------------------


def make_optimizer(cfg: ClassifyConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def run_dir(cfg: ClassifyConfig, method: MethodSpec, seed: int) -> Path:
    return Path(cfg.out_dir) / method.label / f"seed{seed}"


def train_method(
    cfg: ClassifyConfig, task: CompositeClassification, method: MethodSpec, seed: int
) -> list[dict]:
    """Train one method from scratch with one seed into ``run_dir``; return its evaluations.

    The model's initialisation, the batches and the sampled labels each come from their own
    stream of ``maxrl.seeding`` (seed, stream name), so every method sees the same batches for a
    seed, whatever it samples.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(seed, 0, "init"))
        model = build_classifier(task.input_dim, cfg.hidden_sizes, task.num_classes)
    optimizer = make_optimizer(cfg, model.parameters())
    batch_gen = generator(seed, 0, "batches")
    label_gen = generator(seed, 0, "labels")
    noise = None
    if cfg.false_positive_rate or cfg.false_negative_rate:
        noise = (cfg.false_positive_rate, cfg.false_negative_rate, generator(seed, 0, "noise"))
    estimator = None
    if method.estimator != CROSS_ENTROPY:
        estimator = advantages.prepare(method.estimator, method.samples, **method.params)
    test_x, test_y = task.test_set()
    ks = passk.powers_of_two(cfg.max_k)
    out = run_dir(cfg, method, seed)
    out.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out, cfg.tensorboard)
    logger.log(0, evaluate(model, test_x, test_y, ks))
    losses, rewards = [], []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x, y = task.train_batch(cfg.batch_size, batch_gen)
        loss, reward = method_loss(method, model(x), y, label_gen, estimator, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        rewards.append(reward)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record = {
                "train/loss": sum(losses) / len(losses),
                "train/reward_mean": sum(rewards) / len(rewards),
                "time/wall_s": time.perf_counter() - start,
                **evaluate(model, test_x, test_y, ks),
            }
            logger.log(step, record)
            losses, rewards = [], []
    logger.close()
    return read_metrics(out / "metrics.jsonl")


def run(cfg: ClassifyConfig) -> dict[str, dict[int, list[dict]]]:
    """Train every method with every seed; write metrics, summary and plots.

    Returns {method label: {seed: evaluation records}}.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    task = CompositeClassification.from_source(
        cfg.data, cfg.arity, cfg.test_fraction, cfg.test_size, cfg.data_seed
    )
    print(
        f"{task.num_classes} classes (base {task.base_classes}, arity {task.arity}), "
        f"input {task.input_dim}, chance p0 = {1 / task.num_classes:.4g}, "
        f"{len(task.train_labels)} train base examples, {len(task.test_labels)} test examples"
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    results: dict[str, dict[int, list[dict]]] = {}
    k = cfg.max_k
    try:
        for method in cfg.methods:
            results[method.label] = {}
            for seed in cfg.seeds:
                records = train_method(cfg, task, method, seed)
                results[method.label][seed] = records
                last = records[-1]
                print(
                    f"{method.label:<20} seed {seed}: pass@1 {last['eval/pass@1']:.4f}  "
                    f"pass@{k} {last[f'eval/pass@{k}']:.4f}  {last['time/wall_s']:.1f} s"
                )
    finally:
        torch.set_num_threads(previous_threads)
    table = summary_table(results, cfg)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    plot(results, cfg, out, task.num_classes)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ClassifyConfig, list(argv or []), "classify", __doc__)
    if cfg is None:
        return 0
    run(cfg)
    return 0
