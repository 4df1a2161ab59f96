"""Evaluation: many samples per held-out prompt, scored by the task's verifier, summarised by
the unbiased pass@k of :mod:`maxrl.passk` (never the biased bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from maxrl import passk
from maxrl.rollout import SamplingParams, make_sampler
from maxrl.tasks.base import Item, Task
from maxrl.train.common import encode_prompts, generator, safe_verify, stop_ids


def make_rollout_sampler(backend: str, max_batch_size: int | None = None, model_path: str = ""):
    if backend == "vllm":
        return make_sampler("vllm", model=model_path)
    if backend == "kv":
        return make_sampler("kv", max_batch_size=max_batch_size)
    return make_sampler(backend)


@dataclass
class SampledGroups:
    """``n`` rollouts for each of several items, flattened item-major."""

    items: list[Item]  # one per rollout
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    completions: list[str]
    logprobs: torch.Tensor  # (B, T) sampling log-probabilities, 0 after the stop
    lengths: torch.Tensor
    truncated: torch.Tensor
    rewards: torch.Tensor  # (B,)
    verifier_errors: int = 0
    group_size: int = 1
    extras: dict = field(default_factory=dict)


@torch.no_grad()
def sample_groups(
    model,
    tokenizer,
    task: Task,
    items: list[Item],
    n: int,
    sampler,
    params: SamplingParams,
    gen: torch.Generator,
    zero_reward_if_truncated: bool = False,
) -> SampledGroups:
    """Sample ``n`` rollouts per item and score them."""
    prompts = encode_prompts(tokenizer, items)
    flat_items = [it for it in items for _ in range(n)]
    flat_prompts = [p for p in prompts for _ in range(n)]
    was_training = model.training
    model.eval()
    out = sampler.generate(
        model, flat_prompts, params, pad_token_id=tokenizer.pad_token_id, generator=gen
    )
    model.train(was_training)
    lengths = out.lengths.tolist()
    responses = [out.tokens[i, :length].tolist() for i, length in enumerate(lengths)]
    completions = tokenizer.batch_decode(responses, skip_special_tokens=True)
    rewards, errors = safe_verify(task, flat_items, completions)
    rewards = torch.tensor(rewards, dtype=torch.float32)
    if zero_reward_if_truncated:
        rewards = torch.where(out.truncated, torch.zeros_like(rewards), rewards)
    return SampledGroups(
        flat_items,
        flat_prompts,
        responses,
        completions,
        out.logprobs,
        out.lengths,
        out.truncated,
        rewards,
        errors,
        n,
    )


def group_stats(rewards: torch.Tensor, n: int) -> dict[str, float]:
    """Fractions of all-fail and all-success groups, and the mean reward."""
    r = rewards.reshape(-1, n)
    solved = (r > 0).sum(1)
    return {
        "reward_mean": float(r.mean()),
        "frac_all_fail": float((solved == 0).float().mean()),
        "frac_all_success": float((solved == n).float().mean()),
    }


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
    correct = (groups.rewards.reshape(len(items), samples) > 0).sum(1).numpy()
    curve = passk.pass_at_k_curve(samples, correct)
    metrics = {f"eval/{k}": v for k, v in curve.as_dict().items()}
    metrics.update({f"eval/{k}": v for k, v in group_stats(groups.rewards, samples).items()})
    metrics["eval/response_length"] = float(groups.lengths.float().mean())
    metrics["eval/truncated_frac"] = float(groups.truncated.float().mean())
    metrics["eval/verifier_errors"] = groups.verifier_errors
    return metrics, curve


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

    from maxrl.config import parse_cli
    from maxrl.tasks import make_task
    from maxrl.train.common import load_policy
    from maxrl.train.config import TaskConfig

    cfg = parse_cli(EvalCommandConfig, argv, "eval", __doc__)
    if cfg is None:
        return 0
    if not cfg.checkpoint:
        raise SystemExit("maxrl eval: give checkpoint=PATH (a folder written by save_pretrained)")
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
    for key, value in metrics.items():
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(metrics, indent=1))
    return 0
