"""One rollout batch from the sampler to the loss: N rollouts of each of P prompts, scored.

This is the stage of an RL step (and of every evaluation) between the task and the update:
items -> prompt token ids -> N rollouts each (``maxrl.rollout``) -> decoded completions ->
verifier rewards. :func:`sample_groups` runs it and returns one :class:`RolloutGroups`, which
keeps the group structure and the sampler's tensors as they came: rollout ``j`` of prompt ``g``
is row ``g * N + j`` of every per-rollout tensor, and the rewards are shaped (P, N). The loss
slices its tensors out of the record; nothing downstream rediscovers the groups.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from maxrl.rollout import Rollouts, SamplingParams, make_sampler
from maxrl.tasks.base import Item, Task


@dataclass
class RolloutGroups:
    """N rollouts of each of P prompts.

    Attributes:
        items: the P task items, one per group.
        prompt_ids: the P prompts' token ids.
        group_size: N, rollouts per prompt.
        rollouts: the sampler's output, P * N rows, group-major (row ``g * N + j``).
        completions: the P * N decoded completions, in the same order.
        rewards: (P, N) verifier rewards.
        params: how the rollouts were sampled (the loss needs the temperature).
        pad_token_id: the id that fills ``rollouts.tokens`` after each rollout's end.
        verifier_errors: rollouts whose verification raised (each scored 0).
        clean_rewards: the verifier's own (P, N) rewards when ``rewards`` went through a noisy
            verifier (:func:`flip_rewards`), else None.
    """

    items: list[Item]
    prompt_ids: list[list[int]]
    group_size: int
    rollouts: Rollouts
    completions: list[str]
    rewards: torch.Tensor
    params: SamplingParams
    pad_token_id: int
    verifier_errors: int = 0
    clean_rewards: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def lengths(self) -> torch.Tensor:
        """(P * N,) tokens of each rollout, its stop token included."""
        return self.rollouts.lengths

    @property
    def truncated(self) -> torch.Tensor:
        """(P * N,) whether each rollout hit ``max_new_tokens`` without a stop token."""
        return self.rollouts.truncated

    def mean_logprobs(self) -> torch.Tensor:
        """(P, N) mean sampling log-probability of each rollout over its response tokens."""
        total = self.rollouts.logprobs.sum(1)
        return (total / self.rollouts.lengths.clamp_min(1)).reshape(self.rewards.shape)

    def rows(self, groups: torch.Tensor) -> torch.Tensor:
        """Row indices of every rollout of the prompts ``groups`` (a 1-D index tensor)."""
        return (groups[:, None] * self.group_size + torch.arange(self.group_size)).reshape(-1)

    def responses(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, lengths) of the rollouts ``rows``, the tokens cut to the longest of them."""
        lengths = self.rollouts.lengths[rows]
        width = int(lengths.max()) if lengths.numel() else 0
        return self.rollouts.tokens[rows, :width], lengths


def encode_prompts(tokenizer, items: Sequence[Item]) -> list[list[int]]:
    """Prompt token ids: ``Item.prompt`` is complete text, so no special tokens are added."""
    return [tokenizer(item.prompt, add_special_tokens=False)["input_ids"] for item in items]


def make_rollout_sampler(
    backend: str,
    max_batch_size: int | None = None,
    model_path: str = "",
    precision="float32",
    workers: int | None = None,
):
    """The sampler of ``rollout.backend`` (``kv``, ``hf`` or ``vllm``); ``precision`` and
    ``workers`` are the kv sampler's (``KVCacheSampler(precision=..., workers=...)``)."""
    if backend == "vllm":
        return make_sampler("vllm", model=model_path)
    if backend == "kv":
        return make_sampler(
            "kv", max_batch_size=max_batch_size, precision=precision, workers=workers
        )
    return make_sampler(backend)


def rollout_workers(cfg_rollout, model) -> int | None:
    """``rollout.workers`` for a model on CPU; None (the sampler's own choice, one stream)
    on other devices."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return cfg_rollout.workers if on_cpu else None


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
) -> RolloutGroups:
    """Sample ``n`` rollouts of each item's prompt and score them with the task's verifier."""
    prompts = encode_prompts(tokenizer, items)
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        out = sampler.generate(model, prompts, params, n=n, pad_token_id=pad, generator=gen)
    finally:
        model.train(was_training)
    lengths = out.lengths.tolist()
    completions = tokenizer.batch_decode(
        [out.tokens[i, :length].tolist() for i, length in enumerate(lengths)],
        skip_special_tokens=True,
    )
    rewards, errors = verify_rewards(
        task,
        [item for item in items for _ in range(n)],
        completions,
        out.truncated.tolist() if zero_reward_if_truncated else None,
    )
    return RolloutGroups(
        items=list(items),
        prompt_ids=prompts,
        group_size=n,
        rollouts=out,
        completions=completions,
        rewards=torch.tensor(rewards, dtype=torch.float32).reshape(len(items), n),
        params=params,
        pad_token_id=pad,
        verifier_errors=errors,
    )


def verify_rewards(
    task: Task,
    items: Sequence[Item],
    completions: Sequence[str],
    truncated: Sequence[bool] | None = None,
    **kwargs,
) -> tuple[list[float], int]:
    """Rewards of a batch; a verifier that raises scores that rollout 0 and is counted.

    ``truncated`` (one flag per completion, or None): flagged completions were cut at the
    maximum response length and score 0 unchecked (the paper's GSM8K setting; the trainer's
    ``rollout.zero_reward_if_truncated``). A non-finite reward scores 0.

    Returns (rewards as a float list, number of rollouts whose verification raised).
    """
    if truncated is None:
        return _safe_verify(task, items, completions, **kwargs)
    if len(truncated) != len(completions):
        raise ValueError(f"got {len(truncated)} truncated flags for {len(completions)} completions")
    todo = [i for i, cut in enumerate(truncated) if not cut]
    checked, errors = _safe_verify(
        task, [items[i] for i in todo], [completions[i] for i in todo], **kwargs
    )
    rewards = [0.0] * len(completions)
    for i, reward in zip(todo, checked):
        rewards[i] = reward
    return rewards, errors


def _safe_verify(task: Task, items, completions, **kwargs) -> tuple[list[float], int]:
    if not items:
        return [], 0
    try:
        rewards = task.verify(items, completions, **kwargs)
        return [_as_reward(r) for r in rewards], 0
    except Exception:
        pass
    rewards, errors = [], 0
    for item, completion in zip(items, completions):
        try:
            rewards.append(_as_reward(task.verify([item], [completion], **kwargs)[0]))
        except Exception as exc:  # one bad rollout must not stop the run
            errors += 1
            rewards.append(0.0)
            if errors == 1:
                warnings.warn(
                    f"verifier raised on item {item.id!r}: {exc!r}; that rollout scores 0",
                    stacklevel=3,
                )
    return rewards, errors


def _as_reward(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def noisy_rewards(
    rewards: torch.Tensor,
    false_positive_rate: float,
    false_negative_rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, int]]:
    """A noisy verifier on binary rewards: each wrong one (0) becomes 1 with probability
    ``false_positive_rate`` and each right one 0 with probability ``false_negative_rate``,
    independently, from ``generator``. Returns the noisy rewards and the flips each way."""
    draws = torch.rand(rewards.shape, generator=generator)
    right = rewards > 0
    to_one = ~right & (draws < false_positive_rate)
    to_zero = right & (draws < false_negative_rate)
    noisy = torch.where(to_one, torch.ones_like(rewards), rewards)
    noisy = torch.where(to_zero, torch.zeros_like(rewards), noisy)
    return noisy, {"flips_to_1": int(to_one.sum()), "flips_to_0": int(to_zero.sum())}


def flip_rewards(
    groups: RolloutGroups,
    false_positive_rate: float,
    false_negative_rate: float,
    generator: torch.Generator,
) -> tuple[RolloutGroups, dict[str, int]]:
    """The record as a noisy verifier scores it (:func:`noisy_rewards`, ``generator`` seeded per
    step so that a resumed run draws the same flips), the clean rewards kept in
    ``clean_rewards``; and the counts of flips each way."""
    noisy, flips = noisy_rewards(
        groups.rewards, false_positive_rate, false_negative_rate, generator
    )
    return dataclasses.replace(groups, rewards=noisy, clean_rewards=groups.rewards), flips


def group_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Mean reward and the fractions of all-fail and all-success groups of (P, N) rewards."""
    solved = (rewards > 0).sum(1)
    return {
        "reward_mean": float(rewards.mean()),
        "frac_all_fail": float((solved == 0).float().mean()),
        "frac_all_success": float((solved == rewards.shape[1]).float().mean()),
    }
