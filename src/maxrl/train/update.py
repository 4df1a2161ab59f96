"""The update of an RL step: the policy loss over one rollout batch, and the optimiser step(s).

On-policy by default (one optimiser step per rollout batch, the paper's setting);
``algo.ppo_epochs`` and ``algo.minibatches`` give PPO-style reuse of the batch with the clipped
ratio. Minibatches and micro-batches are made of whole groups, so each prompt's forward pass is
shared by its rollouts (:func:`maxrl.train.logprobs.policy_logprobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from maxrl.groups import RolloutGroups
from maxrl.seeding import generator
from maxrl.train.config import AlgoConfig, OptimConfig
from maxrl.train.logprobs import compute_precision, policy_logprobs
from maxrl.train.loss import aggregation_denominator, policy_loss
from maxrl.train.streams import backward_in_streams, shards, update_workers


@dataclass
class UpdateStats:
    """What one update did: means over its optimiser steps, per-token means over its tokens."""

    finite: bool
    loss: float
    grad_norm: float
    entropy: float
    clip_frac: float
    kl: float

    def metrics(self) -> dict[str, float]:
        return {
            "train/loss": self.loss,
            "train/grad_norm": self.grad_norm,
            "train/entropy": self.entropy,
            "train/clip_frac": self.clip_frac,
            "train/kl": self.kl,
            "train/skipped": int(not self.finite),
        }


def optimise(
    model,
    optimizer,
    groups: RolloutGroups,
    adv: torch.Tensor,
    algo: AlgoConfig,
    optim: OptimConfig,
    *,
    micro_batch_size: int,
    seed: int,
    step: int,
    ref_model=None,
    precision: str = "float32",
    packed: bool = True,
    workers: int = 1,
) -> UpdateStats:
    """PPO-style epochs x minibatches over one rollout batch (one plain step by default).

    ``adv`` is (prompts, N), one advantage per rollout. An update whose loss or gradient is not
    finite is skipped (the optimiser does not step) and reported with ``finite=False``.
    Minibatch order (PPO only) is drawn from the ``(seed, step)`` streams. ``precision`` is
    the matmul precision of the forward and backward (:func:`compute_precision`); ``packed``
    allows the packed forward (:func:`policy_logprobs`); ``workers`` streams share each
    micro-batch's groups (:mod:`maxrl.train.streams`).
    """
    workers = update_workers(workers, model)
    n = groups.group_size
    prompts = groups.prompt_ids
    n_groups = groups.num_prompts
    adv = adv.reshape(-1)
    on_policy = algo.ppo_epochs == 1 and algo.minibatches == 1
    temp = groups.params.temperature
    pad_id = groups.pad_token_id
    ref_logp = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logp = _logprobs_by_groups(ref_model, groups, micro_batch_size, packed)
    per_mb = n_groups // algo.minibatches
    groups_per_micro = max(1, micro_batch_size // n)
    totals = {"loss": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "kl": 0.0}
    finite = True
    ent_sum, ent_count = 0.0, 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = optim.grad_clip if optim.grad_clip > 0 else math.inf
    width_all = groups.rollouts.logprobs.shape[1]

    def shard_loss(g_idx: torch.Tensor, epoch: int, denom):
        """The loss of groups ``g_idx`` (its backward is the caller's) and its statistics."""
        seqs = groups.rows(g_idx)
        tokens, lengths = groups.responses(seqs)
        with compute_precision(model, precision):
            logp, mask, ent = policy_logprobs(
                model,
                [prompts[i] for i in g_idx.tolist()],
                tokens,
                lengths,
                n,
                pad_id,
                temp,
                entropy=epoch == 0 or algo.entropy_coef != 0,
                packed=packed,
            )
        width = logp.shape[1]
        out = policy_loss(
            logp,
            None if on_policy else groups.rollouts.logprobs[seqs, :width],
            adv[seqs],
            mask,
            agg=algo.loss_agg,
            denom=denom,
            clip_eps=algo.clip_eps,
            on_policy=on_policy,
            ref_logp=None if ref_logp is None else ref_logp[seqs, :width],
            kl_coef=algo.kl_coef,
            entropy=ent,
            entropy_coef=algo.entropy_coef,
        )
        info = (
            out.loss.item(),
            float(out.clip_frac),
            float(out.kl),
            float(ent.detach().sum()) if epoch == 0 else 0.0,
            float(mask.sum()),
        )
        return out.loss, info

    for epoch in range(algo.ppo_epochs):
        order = (
            torch.arange(n_groups)
            if on_policy
            else torch.randperm(n_groups, generator=generator(seed, step, f"minibatch{epoch}"))
        )
        for mb in range(algo.minibatches):
            mb_groups = order[mb * per_mb : (mb + 1) * per_mb]
            mb_mask = (
                torch.arange(width_all)[None, :] < groups.lengths[groups.rows(mb_groups), None]
            )
            denom = aggregation_denominator(algo.loss_agg, mb_mask)
            optimizer.zero_grad(set_to_none=True)
            mb_loss = 0.0
            for sub in _chunks(len(mb_groups), groups_per_micro):
                parts = shards(mb_groups[sub], workers)
                losses = [partial(shard_loss, part, epoch, denom) for part in parts]
                for loss, clip_frac, kl, ent_total, count in backward_in_streams(losses, params):
                    mb_loss += loss
                    totals["clip_frac"] += clip_frac
                    totals["kl"] += kl
                    if epoch == 0:
                        ent_sum += ent_total
                        ent_count += count
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not (math.isfinite(mb_loss) and math.isfinite(grad_norm)):
                finite = False
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            totals["loss"] += mb_loss
            totals["grad_norm"] += grad_norm
    updates = algo.ppo_epochs * algo.minibatches
    tokens = float(groups.lengths.sum()) * algo.ppo_epochs
    return UpdateStats(
        finite=finite,
        loss=totals["loss"] / updates,
        grad_norm=totals["grad_norm"] / updates,
        entropy=ent_sum / max(ent_count, 1.0),
        clip_frac=totals["clip_frac"] / max(tokens, 1.0),
        kl=totals["kl"] / max(tokens, 1.0),
    )


def _logprobs_by_groups(model, groups: RolloutGroups, micro: int, packed: bool) -> torch.Tensor:
    """Response log-probabilities of a whole batch, micro-batch by micro-batch, (B, longest)."""
    n = groups.group_size
    width = int(groups.lengths.max())
    out = torch.zeros(groups.num_prompts * n, width)
    for sub in _chunks(groups.num_prompts, max(1, micro // n)):
        seqs = slice(sub.start * n, sub.stop * n)
        tokens, lengths = groups.responses(seqs)
        logp, _, _ = policy_logprobs(
            model,
            groups.prompt_ids[sub],
            tokens,
            lengths,
            n,
            groups.pad_token_id,
            groups.params.temperature,
            packed=packed,
        )
        out[seqs, : logp.shape[1]] = logp
    return out


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
