"""Evaluation: many samples per held-out prompt, scored by the task's verifier, summarised by
the unbiased pass@k of :mod:`maxrl.passk` (never the biased bootstrap), the distribution of
per-prompt pass rates (``eval/pass_rate/<bin>``: the fraction of prompts in each bin of
:data:`maxrl.passk.PASS_RATE_BINS`), and, for a task whose answers compare (one with an
``answer_key(completion)`` method, such as math), the unbiased majority-vote accuracy maj@k of
:mod:`maxrl.majority`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from maxrl import passk
from maxrl.groups import group_stats, make_rollout_sampler, sample_groups
from maxrl.models.loading import stop_ids
from maxrl.rollout import SamplingParams
from maxrl.seeding import generator
from maxrl.tasks.base import Item, Task


def evaluate(
    model,
    tokenizer,
    task: Task,
    items: list[Item],
    *,
    samples: int,
    sampler,
    params: SamplingParams,
    seed: int,
    step: int,
) -> tuple[dict, passk.PassAtKCurve]:
    """Unbiased pass@k for k = 1, 2, 4, ..., samples over ``items``, plus reward statistics."""
    groups = sample_groups(
        model, tokenizer, task, items, samples, sampler, params, generator(seed, step, "eval")
    )
    correct = (groups.rewards > 0).sum(1).numpy()
    curve = passk.pass_at_k_curve(samples, correct)
    metrics = {f"eval/{k}": v for k, v in curve.as_dict().items()}
    metrics.update({f"eval/{k}": v for k, v in group_stats(groups.rewards).items()})
    metrics["eval/response_length"] = float(groups.lengths.float().mean())
    metrics["eval/truncated_frac"] = float(groups.truncated.float().mean())
    metrics["eval/verifier_errors"] = groups.verifier_errors
    histogram = passk.pass_rate_histogram_from_counts(samples, correct)
    metrics.update({f"eval/pass_rate/{name}": v for name, v in histogram.items()})
    answer_key = getattr(task, "answer_key", None)
    if callable(answer_key):
        metrics.update(majority_metrics(groups, answer_key, curve.ks))
    return metrics, curve


def majority_metrics(groups, answer_key, ks) -> dict[str, float]:
    """``eval/maj@k``: the unbiased maj@k from each prompt's samples, averaged over prompts.

    A sample's vote is ``answer_key(completion)`` (None: no answer, which never wins). Every
    sample the verifier scored correct votes for the one correct answer, so equivalent correct
    answers written differently ("1/2", "0.5") are not split; a wrong sample votes for its own
    answer string.
    """
    from maxrl.majority import maj_at_k

    n = groups.group_size
    totals = dict.fromkeys(ks, 0.0)
    for g in range(groups.num_prompts):
        right = groups.rewards[g] > 0
        keys = [answer_key(c) for c in groups.completions[g * n : (g + 1) * n]]
        wrong = Counter(k for k, ok in zip(keys, right.tolist()) if not ok and k is not None)
        unanswered = sum(1 for k, ok in zip(keys, right.tolist()) if not ok and k is None)
        counts = [int(right.sum()), *wrong.values()]
        for k in ks:
            totals[k] += maj_at_k(counts, 0 if counts[0] else None, k, unanswered)
    return {f"eval/maj@{k}": v / groups.num_prompts for k, v in totals.items()}


def evaluator(cfg, model, tokenizer, task: Task, sampler):
    """``run_eval(step) -> metrics`` for the ``eval`` settings of a ``TrainConfig``."""
    items = task.test_items(min(cfg.eval.prompts, cfg.task.test_count))
    params = SamplingParams(
        cfg.rollout.max_new_tokens,
        cfg.eval.temperature,
        cfg.eval.top_p,
        stop_token_ids=stop_ids(tokenizer),
    )

    def run_eval(step: int) -> dict:
        return evaluate(
            model,
            tokenizer,
            task,
            items,
            samples=cfg.eval.samples,
            sampler=sampler,
            params=params,
            seed=cfg.run.seed,
            step=step,
        )[0]

    return run_eval


@dataclass
class EvalCommandConfig:
    checkpoint: str = field(default="", metadata={"help": "model folder (save_pretrained)"})
    task: str = field(default="maze", metadata={"help": "maze | math"})
    maze_size: int = field(default=9, metadata={"help": "maze side length"})
    data: str = field(
        default="",
        metadata={"help": "held-out data (math; maze: a test.json of the paper's format)"},
    )
    prompts: int = field(default=64, metadata={"help": "held-out prompts"})
    samples: int = field(default=64, metadata={"help": "samples per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass"})
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens per sample"})
    backend: str = field(default="kv", metadata={"help": "sampler: kv | hf | vllm"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    out: str = field(default="", metadata={"help": "write the metrics here as JSON (optional)"})


def main(argv: list[str]) -> int:
    import json

    from maxrl.config import ConfigError, parse_cli
    from maxrl.models.loading import load_policy
    from maxrl.tasks import TaskConfig, make_task

    cfg = parse_cli(EvalCommandConfig, argv, "eval", __doc__)
    if cfg is None:
        return 0
    if not cfg.checkpoint:
        raise ConfigError("give checkpoint=PATH (a model folder written by save_pretrained)")
    model, tokenizer = load_policy(cfg.checkpoint)
    task = make_task(
        TaskConfig(
            name=cfg.task, maze_size=cfg.maze_size, test_data=cfg.data, test_count=cfg.prompts
        ),
        tokenizer,
    )
    items = task.test_items(cfg.prompts)
    params = SamplingParams(
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, stop_token_ids=stop_ids(tokenizer)
    )
    try:
        metrics, _ = evaluate(
            model,
            tokenizer,
            task,
            items,
            samples=cfg.samples,
            sampler=make_rollout_sampler(cfg.backend, 4096, cfg.checkpoint),
            params=params,
            seed=cfg.seed,
            step=0,
        )
    finally:
        getattr(task, "close", lambda: None)()  # a math task's answer-checking workers
    for key, value in metrics.items():
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(metrics, indent=1))
    return 0
