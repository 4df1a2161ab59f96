"""``maxrl classify``: classification as RL, where exact maximum likelihood is cross-entropy.

The small-scale version of the paper's ImageNet experiment (MAXRL.md section 5). The policy is a
softmax classifier (an MLP trained from scratch on composite digit tuples, see
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

Outputs in ``out_dir``: ``METHOD.jsonl`` (one line per evaluation and seed), ``summary.md`` (the
final table, also printed), ``pass1_vs_step.png``, ``passk_vs_k.png`` and ``config.yaml``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maxrl import objectives
from maxrl.advantages import compute as compute_advantages
from maxrl.advantages import validate_params
from maxrl.config import ConfigError, parse_cli, save_config
from maxrl.tasks.classification import CompositeClassification

CROSS_ENTROPY = "ce"


@dataclass
class MethodSpec:
    """One training method of the comparison."""

    estimator: str = field(
        default=CROSS_ENTROPY,
        metadata={"help": "'ce' for cross-entropy, else a maxrl.advantages estimator name"},
    )
    samples: int = field(
        default=0, metadata={"help": "labels sampled per example, N (0 for ce, >= 1 otherwise)"}
    )
    params: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "extra estimator parameters, e.g. {T: 16} for maxrl_t"},
    )
    name: str = field(
        default="",
        metadata={"help": "label in files and plots; empty = estimator_N<samples>[_param<v>]"},
    )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.estimator == CROSS_ENTROPY:
            return CROSS_ENTROPY
        extras = "".join(f"_{key}{value}" for key, value in sorted(self.params.items()))
        return f"{self.estimator}_N{self.samples}{extras}"


def _default_methods() -> list[MethodSpec]:
    """The paper's ImageNet set: MaxRL at 16 / 128 / 1024 labels, GRPO and REINFORCE at 1024."""
    return [
        MethodSpec(CROSS_ENTROPY),
        MethodSpec("maxrl", 16),
        MethodSpec("maxrl", 128),
        MethodSpec("maxrl", 1024),
        MethodSpec("grpo", 1024),
        MethodSpec("reinforce", 1024),
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
    out_dir: str = field(
        default="runs/classify", metadata={"help": "where metrics, summary and plots go"}
    )

    def validate(self) -> None:
        positive = {
            "arity": self.arity,
            "test_size": self.test_size,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "max_k": self.max_k,
            "threads": self.threads,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}={value} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of 'sgd', 'adam'")
        if any(width < 1 for width in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes={self.hidden_sizes} must hold positive widths")
        if not self.methods:
            raise ConfigError("methods is empty; list at least one, e.g. methods=[{estimator: ce}]")
        if not self.seeds:
            raise ConfigError("seeds is empty; give at least one, e.g. seeds=[0]")
        labels = [method.label for method in self.methods]
        for method, label in zip(self.methods, labels):
            if labels.count(label) > 1:
                raise ConfigError(f"two methods are named {label!r}; give them distinct names")
            if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", label):
                raise ConfigError(
                    f"method name {label!r} must use only letters, digits and _.=+- (a file name)"
                )
            _check_method(method)


def _check_method(method: MethodSpec) -> None:
    """Fail at start-up, not mid-run, on an unknown estimator or bad parameters."""
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
        validate_params(method.estimator, method.samples, **method.params)
    except ValueError as exc:
        raise ConfigError(f"method {method.label!r}: {exc}") from exc


# -- model ------------------------------------------------------------------------------------


def build_classifier(input_dim: int, hidden_sizes: Sequence[int], num_classes: int) -> nn.Module:
    """An MLP whose output layer starts at zero, so every example starts at p = 1/num_classes.

    The zero output layer makes the starting pass rate exactly chance, the regime the paper's
    from-scratch ImageNet run starts in, rather than a seed-dependent spread around it.
    """
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    head = nn.Linear(width, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


# -- losses -----------------------------------------------------------------------------------


def sample_labels(logits: Tensor, samples: int, generator: torch.Generator | None) -> Tensor:
    """``samples`` labels per row drawn from softmax(logits): (B, samples) int64, one call."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return torch.multinomial(probs, samples, replacement=True, generator=generator)


def label_rewards(actions: Tensor, labels: Tensor) -> Tensor:
    """Reward 1 where a sampled label (B, N) equals the example's true label (B,), else 0."""
    if actions.ndim != 2 or labels.ndim != 1 or actions.shape[0] != labels.shape[0]:
        raise ValueError(
            f"actions must be (B, N) and labels (B,) with the same B; got actions "
            f"{tuple(actions.shape)} and labels {tuple(labels.shape)}"
        )
    return (actions == labels[:, None]).to(torch.float32)


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
    method: MethodSpec, logits: Tensor, labels: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, float]:
    """The method's training loss on a batch, and the mean reward of its sampled labels.

    For ``ce`` the second value is the mean pass rate p itself (what the reward estimates).
    """
    if method.estimator == CROSS_ENTROPY:
        loss = F.cross_entropy(logits, labels)
        pass_rate = torch.exp(-F.cross_entropy(logits.detach(), labels, reduction="none"))
        return loss, pass_rate.mean().item()
    actions = sample_labels(logits, method.samples, generator)
    rewards = label_rewards(actions, labels)
    advantages = compute_advantages(method.estimator, rewards, **method.params)
    return policy_gradient_loss(logits, actions, advantages), rewards.mean().item()


# -- evaluation -------------------------------------------------------------------------------


def k_values(max_k: int) -> list[int]:
    """1, 2, 4, ... up to ``max_k`` (``max_k`` itself included)."""
    ks = [2**i for i in range(max_k.bit_length()) if 2**i <= max_k]
    return ks if ks[-1] == max_k else ks + [max_k]


def log_pass_at_k(log_p: Tensor, k: int) -> Tensor:
    """log(1 - (1 - p)^k) from log p, finite even where p underflows (then it is log k + log p)."""
    log_p = log_p.double()
    p = log_p.exp()
    direct = torch.log(objectives.pass_at_k(p, k))
    return torch.where(p > 0, direct, log_p + math.log(k))


@torch.no_grad()
def evaluate(model: nn.Module, features: Tensor, labels: Tensor, ks: Sequence[int]) -> dict:
    """Exact test metrics: pass@k and mean -log pass@k for each k, mean log p, top-1 accuracy."""
    logits = model(features)
    log_p = torch.log_softmax(logits.double(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    metrics = {
        "test_top1": (logits.argmax(dim=-1) == labels).double().mean().item(),
        "test_mean_log_p": log_p.mean().item(),
    }
    for k in ks:
        log_pass = log_pass_at_k(log_p, k)
        metrics[f"test_pass@{k}"] = log_pass.exp().mean().item()
        metrics[f"test_neg_log_pass@{k}"] = (-log_pass).mean().item()
    return metrics


# -- training ---------------------------------------------------------------------------------


def make_optimizer(cfg: ClassifyConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_method(
    cfg: ClassifyConfig, task: CompositeClassification, method: MethodSpec, seed: int
) -> list[dict]:
    """Train one method from scratch with one seed; the metrics of every evaluation."""
    torch.manual_seed(seed)
    model = build_classifier(task.input_dim, cfg.hidden_sizes, task.num_classes)
    optimizer = make_optimizer(cfg, model.parameters())
    # Separate streams: every method sees the same batches for a seed, whatever it samples.
    batch_gen = torch.Generator().manual_seed(seed)
    label_gen = torch.Generator().manual_seed(seed + 1_000_003)
    test_x, test_y = task.test_set()
    ks = k_values(cfg.max_k)
    records = [{"step": 0, "seed": seed, **evaluate(model, test_x, test_y, ks)}]
    losses, rewards = [], []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x, y = task.train_batch(cfg.batch_size, batch_gen)
        loss, reward = method_loss(method, model(x), y, label_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        rewards.append(reward)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            records.append(
                {
                    "step": step,
                    "seed": seed,
                    "train_loss": sum(losses) / len(losses),
                    "train_reward": sum(rewards) / len(rewards),
                    "wall_s": time.perf_counter() - start,
                    **evaluate(model, test_x, test_y, ks),
                }
            )
            losses, rewards = [], []
    return records


def run(cfg: ClassifyConfig) -> dict[str, list[dict]]:
    """Train every method with every seed; write metrics, summary and plots; return metrics."""
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
    results: dict[str, list[dict]] = {}
    try:
        for method in cfg.methods:
            records = []
            for seed in cfg.seeds:
                records += train_method(cfg, task, method, seed)
                last = records[-1]
                print(
                    f"{method.label:<20} seed {seed}: pass@1 {last['test_pass@1']:.4f}  "
                    f"pass@{cfg.max_k} {last[f'test_pass@{cfg.max_k}']:.4f}  "
                    f"{last['wall_s']:.1f} s"
                )
            with open(out / f"{method.label}.jsonl", "w") as fh:
                for record in records:
                    fh.write(json.dumps({"method": method.label, **record}) + "\n")
            results[method.label] = records
    finally:
        torch.set_num_threads(previous_threads)
    table = summary_table(results, cfg)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    plot(results, cfg, out, task.num_classes)
    return results


# -- reporting --------------------------------------------------------------------------------


def _final(records: list[dict]) -> list[dict]:
    last_step = max(r["step"] for r in records)
    return [r for r in records if r["step"] == last_step]


def _mean_std(values: list[float], digits: int) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(results: dict[str, list[dict]], cfg: ClassifyConfig) -> str:
    """Markdown table of the final evaluation, mean (± std over seeds when there are several)."""
    k = cfg.max_k
    head = (
        f"| method | test pass@1 | top-1 acc | pass@{k} | -log pass@1 | -log pass@{k} "
        "| mean log p | wall s |"
    )
    lines = [head, "|" + "---|" * 8]
    for label, records in results.items():
        final = _final(records)
        cells = [
            _mean_std([r["test_pass@1"] for r in final], 4),
            _mean_std([r["test_top1"] for r in final], 4),
            _mean_std([r[f"test_pass@{k}"] for r in final], 4),
            _mean_std([r["test_neg_log_pass@1"] for r in final], 3),
            _mean_std([r[f"test_neg_log_pass@{k}"] for r in final], 3),
            _mean_std([r["test_mean_log_p"] for r in final], 3),
            _mean_std([r["wall_s"] for r in final], 2),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], cfg: ClassifyConfig, out: Path, num_classes: int) -> None:
    """Test pass@1 against step, and final pass@k against k, one line per method (seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = k_values(cfg.max_k)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for label, records in results.items():
        steps = sorted({r["step"] for r in records})
        curve = [
            sum(r["test_pass@1"] for r in records if r["step"] == s)
            / sum(1 for r in records if r["step"] == s)
            for s in steps
        ]
        ax.plot(steps, curve, label=label)
    ax.axhline(1 / num_classes, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("test pass@1 (mean p of true class)")
    ax.set_title(f"classification as RL: {_task_title(cfg)}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pass1_vs_step.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for label, records in results.items():
        final = _final(records)
        curve = [sum(r[f"test_pass@{k}"] for r in final) / len(final) for k in ks]
        ax.plot(ks, curve, marker="o", markersize=3, label=label)
    chance = [1 - (1 - 1 / num_classes) ** k for k in ks]
    ax.plot(ks, chance, color="grey", linestyle=":", label="chance (start)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("test pass@k (exact)")
    ax.set_ylim(0, 1)
    ax.set_title(f"pass@k after {cfg.steps} steps: {_task_title(cfg)}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "passk_vs_k.png", dpi=120)
    plt.close(fig)


def _task_title(cfg: ClassifyConfig) -> str:
    name = Path(cfg.data).stem
    return f"{name} x{cfg.arity}" if cfg.arity > 1 else name


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ClassifyConfig, list(argv or []), "classify", __doc__)
    if cfg is None:
        return 0
    run(cfg)
    return 0
