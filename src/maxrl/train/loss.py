r"""The policy loss: pure functions over per-token tensors.

For rollout i with advantage A_i, token log-probabilities l_{i,t} (mask m_{i,t} on response
tokens) and the log-probabilities the rollout was sampled with, o_{i,t}:

    ratio_{i,t} = exp(l_{i,t} - o_{i,t})
    u_{i,t} = -min(ratio A_i, clip(ratio, 1 - eps, 1 + eps) A_i)  [+ beta * k3 KL to a reference]
                                                                   [- gamma * H_{i,t}]

with H_{i,t} the entropy of the policy's next-token distribution at that position (an entropy
bonus of weight gamma, the paper's "GRPO + entropy" baseline; it works with any advantage).

On-policy (one optimiser step per rollout batch, the paper's setting) the ratio is exactly 1 and
clipping never fires; ``on_policy=True`` then uses ratio = exp(l - stop_grad(l)), whose gradient is
A_i grad l_{i,t}: exactly REINFORCE with the group advantage, no dependence on the sampler's
numerics. Aggregation over tokens:

- ``token_mean``: sum_{i,t} m u / sum_{i,t} m   (the paper's; a batch-level constant per token)
- ``seq_mean``:   mean_i (sum_t m u / sum_t m)
- ``seq_sum``:    mean_i sum_t m u  = -(1/B) sum_i A_i log pi(z_i): the estimator convention
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # to backpropagate (already divided by the aggregation denominator)
    clip_frac: torch.Tensor  # tokens (summed, not normalised) where clipping was active
    kl: torch.Tensor  # summed masked KL


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: str,
    denom: float,
    clip_eps: float,
    on_policy: bool,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossOutput:
    """Loss of one micro-batch; ``denom`` is the aggregation denominator of the whole minibatch.

    Args:
        logp, old_logp, ref_logp, mask: (B, T) aligned per-token tensors.
        advantages: (B,) one advantage per sequence.
        agg: token_mean | seq_mean | seq_sum.
        denom: token_mean: response tokens in the minibatch; seq_*: sequences in the minibatch.
        entropy, entropy_coef: (B, T) per-token entropies with their gradient, and the weight
            of the bonus (``entropy`` is needed when ``entropy_coef`` is not 0).
    """
    mask = mask.to(logp.dtype)
    adv = advantages[:, None].to(logp.dtype)
    if on_policy:
        ratio = torch.exp(logp - logp.detach())
        per_token = -ratio * adv
        clipped = torch.zeros_like(logp)
    else:
        ratio = torch.exp(logp - old_logp)
        unclipped = ratio * adv
        clip = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
        per_token = -torch.minimum(unclipped, clip)
        clipped = (clip < unclipped).to(logp.dtype)
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef > 0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1  # k3: unbiased, non-negative
        per_token = per_token + kl_coef * kl
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef is set but no per-token entropies were given")
        per_token = per_token - entropy_coef * entropy
    if agg == "token_mean":
        total = (per_token * mask).sum()
    elif agg == "seq_mean":
        total = ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()
    elif agg == "seq_sum":
        total = (per_token * mask).sum()
    else:
        raise ValueError(f"loss aggregation must be token_mean, seq_mean or seq_sum; got {agg!r}")
    return LossOutput(total / denom, (clipped * mask).sum().detach(), (kl * mask).sum().detach())


def aggregation_denominator(agg: str, mask: torch.Tensor) -> float:
    """The denominator of a minibatch: its response tokens (token_mean) or sequences."""
    return float(mask.sum()) if agg == "token_mean" else float(mask.shape[0])
