"""MaxRL advantages inside TRL's GRPO trainer (TRL 1.16).

``MaxRLTrainer`` is ``trl.GRPOTrainer`` with one change: the group advantage of each completion
comes from :func:`maxrl.advantages.compute` (estimator ``args.estimator``, default ``"maxrl"``)
instead of TRL's mean/std normalisation. Everything else (generation, reward functions, the
clipped policy loss, its aggregation, logging) is TRL's own.

How it hooks in: TRL computes advantages inline in ``_generate_and_score_completions`` from the
rewards that ``_calculate_rewards`` gathers across processes (groups of ``num_generations``
consecutive completions may straddle processes), then keeps this process's slice. The trainer
overrides ``_calculate_rewards`` only to keep the gathered rewards, and replaces
``output["advantages"]`` after the parent method returns, with the same gather-then-slice.

Settings that interact with the library's convention (a group's gradient estimate is the MEAN
over its rollouts of A_i * grad log pi(z_i), docs/integrations.md has the details):

- ``scale_rewards`` must be ``"none"`` (the default here): the estimator alone sets the scale;
  use ``estimator="grpo"`` for std-normalised advantages.
- ``loss_type``: TRL's default ``"dapo"`` divides the summed token losses by the number of
  completion tokens in the batch (the paper's token-mean aggregation), which is the convention
  times 1/(mean completion length). ``"dr_grpo"`` divides by (completions x
  max_completion_length): exactly the convention scaled by the constant 1/max_completion_length.
  ``"grpo"`` divides each completion by its own length, which reweights rollouts by 1/|z_i|.
- ``beta=0`` (TRL's default, no KL term) and ``num_iterations=1`` (ratio 1, clipping idle) match
  the paper's on-policy setting.
- Multiple reward functions are summed with ``reward_weights``; ``multi_objective_aggregation``
  must be ``"sum_then_normalize"``. A completion for which every reward function returned None
  gets advantage 0 and is left out of its group (the estimator sees a smaller group).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from maxrl import advantages as adv_lib
from maxrl.tasks.base import Item, Task

__all__ = ["MaxRLConfig", "MaxRLTrainer", "task_dataset", "task_reward"]


@dataclass
class MaxRLConfig(GRPOConfig):
    """``GRPOConfig`` plus the choice of group advantage estimator."""

    estimator: str = field(
        default="maxrl",
        metadata={
            "help": "Group advantage estimator of maxrl.advantages: maxrl (Tajwar et al. 2026, "
            "Algorithm 1), maxrl_t (needs T), pass_at_k (needs k), rloo, grpo, dr_grpo, reinforce."
        },
    )
    estimator_params: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": 'Estimator parameters as a dict or JSON string, e.g. {"T": 4} for maxrl_t or '
            '{"k": 8} for pass_at_k.'
        },
    )
    reward_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Binarise the summed reward as r >= threshold before estimating. Binary "
            "estimators (maxrl, maxrl_t, pass_at_k) reject rewards other than 0 and 1 without it."
        },
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "Must stay 'none': the estimator sets the advantage scale (estimator='grpo' "
            "gives TRL's group std normalisation)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.estimator_params, str):
            try:
                self.estimator_params = json.loads(self.estimator_params)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"estimator_params must be a dict or a JSON object string; got "
                    f"{self.estimator_params!r} ({exc})"
                ) from None
        self.estimator_params = dict(self.estimator_params or {})
        if self.scale_rewards != "none":
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r} does not apply to MaxRLTrainer: the "
                f"estimator sets the advantage scale. Leave scale_rewards='none', and use "
                f"estimator='grpo' for group std normalisation"
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} normalises "
                f"each reward function before the estimator sees it; MaxRLTrainer needs "
                f"'sum_then_normalize' (rewards summed with reward_weights)"
            )
        sizes = [self.num_generations, self.num_generations_eval or self.num_generations]
        adv_lib.validate_params(
            self.estimator,
            min(sizes),
            reward_threshold=self.reward_threshold,
            **self.estimator_params,
        )


class MaxRLTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose group advantages come from :func:`maxrl.advantages.compute`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MaxRLConfig):
            raise TypeError(
                f"MaxRLTrainer needs args=MaxRLConfig(...); got {type(self.args).__name__}"
            )
        self._gathered_rewards: torch.Tensor | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._gathered_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func, self._gathered_rewards = self._gathered_rewards, None
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        all_advantages = self.group_advantages(rewards_per_func, num_generations)

        local = output["prompt_ids"].size(0)
        start = self.accelerator.process_index * local
        local_advantages = all_advantages[start : start + local]
        output["advantages"] = local_advantages.to(output["advantages"])

        # TRL logged its own advantages for the completions table; show the ones trained with
        logged = self._logs["advantages"]
        for _ in range(min(len(all_advantages), len(logged))):
            logged.pop()
        logged.extend(all_advantages.tolist())
        return output

    def group_advantages(
        self, rewards_per_func: torch.Tensor, num_generations: int
    ) -> torch.Tensor:
        """Advantages of all gathered completions (consecutive groups of ``num_generations``).

        The reward of a completion is the ``reward_weights``-weighted sum of its reward
        functions (None counts as 0 unless every function returned None: such a completion is
        unscorable, gets advantage 0 and is left out of its group).
        """
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)
        group_ids = torch.arange(rewards.numel(), device=rewards.device) // num_generations
        est = adv_lib.get(self.args.estimator)
        if not bool(scorable.all()):
            # a group left with too few scorable rollouts carries no group baseline: drop it
            kept = torch.zeros_like(group_ids).index_add_(0, group_ids, scorable.long())
            scorable &= kept[group_ids] >= est.min_group
        result = torch.zeros_like(rewards)
        if bool(scorable.any()):
            result[scorable] = adv_lib.compute(
                self.args.estimator,
                rewards[scorable].cpu(),
                group_ids=group_ids[scorable].cpu(),
                reward_threshold=self.args.reward_threshold,
                **self.args.estimator_params,
            ).to(result)
        return result


def task_dataset(items: Sequence[Item]):
    """A ``datasets.Dataset`` of task items for TRL: columns ``prompt`` and ``item_id``."""
    import datasets

    return datasets.Dataset.from_dict(
        {"prompt": [item.prompt for item in items], "item_id": [item.id for item in items]}
    )


def task_reward(
    task: Task,
    items: Sequence[Item],
    eos_token_ids: Sequence[int] | int | None = None,
    zero_reward_if_truncated: bool = False,
) -> Callable[..., list[float]]:
    """A TRL reward function that scores completions with ``task.verify``.

    It finds each completion's item through the ``item_id`` column of :func:`task_dataset`, and
    scores through :func:`maxrl.groups.verify_rewards`: a verifier that raises scores that
    completion 0. With ``zero_reward_if_truncated`` (the paper's GSM8K setting), a completion
    that does not end in one of ``eos_token_ids`` was cut at ``max_completion_length`` and
    scores 0 unchecked, the rule of the native trainer's ``rollout.zero_reward_if_truncated``.
    """
    from maxrl.groups import verify_rewards

    by_id = {item.id: item for item in items}
    if isinstance(eos_token_ids, int):
        eos_token_ids = [eos_token_ids]
    if zero_reward_if_truncated and not eos_token_ids:
        raise ValueError(
            "zero_reward_if_truncated=True needs eos_token_ids (the ids a finished completion "
            "ends with), e.g. eos_token_ids=tokenizer.eos_token_id"
        )
    eos = set(eos_token_ids or ())

    def reward(prompts, completions, item_id, completion_ids=None, **kwargs) -> list[float]:
        missing = [i for i in item_id if i not in by_id]
        if missing:
            raise ValueError(f"item_id {missing[0]!r} is not among the task items given")
        batch = [by_id[i] for i in item_id]
        truncated = None
        if zero_reward_if_truncated:
            if completion_ids is None:
                raise ValueError("TRL passed no completion_ids; cannot tell truncated ones")
            truncated = [not ids or ids[-1] not in eos for ids in completion_ids]
        return verify_rewards(task, batch, completions, truncated)[0]

    reward.__name__ = f"{task.name}_reward"
    return reward
