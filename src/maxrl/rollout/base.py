"""What every sampling backend shares: the request, the result, and the token-selection rule.

The trainer computes the policy gradient from ``Rollouts.logprobs``, so all backends define a
sampled token's log-probability the same way: ``log_softmax(logits / temperature)`` of the
model's full distribution at that position, before any top-k/top-p truncation. That is the
quantity a full forward pass over (prompt + rollout) reproduces, which keeps the sampler and the
trainer comparable (and the tests exact). Greedy decoding (temperature 0) reports the
temperature-1 log-probability of the chosen token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    """How to sample one batch of rollouts.

    Attributes:
        max_new_tokens: most tokens generated per rollout (the paper's maze uses 180).
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off); applied after top-k, as in HF and vLLM.
        top_k: keep only the k most likely tokens (0 = off).
        stop_token_ids: a rollout ends right after emitting any of these; the stop token is kept
            and counts in ``Rollouts.lengths``.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int; got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off); got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off); got {self.top_k!r}")
        stops = tuple(self.stop_token_ids)
        if any(not isinstance(s, int) or s < 0 for s in stops):
            raise ValueError(f"stop_token_ids must be non-negative ints; got {stops!r}")
        self.stop_token_ids = stops


@dataclass
class Rollouts:
    """A batch of sampled continuations: ``n`` rows per prompt, group-major (row ``g * n + j``
    is rollout ``j`` of prompt ``g``).

    Attributes:
        tokens: (B, max_new_tokens) generated ids; ``pad_token_id`` after the stop token.
        logprobs: (B, max_new_tokens) float32 ``log_softmax(logits / temperature)`` of each
            sampled token (temperature-1 distribution when greedy); 0 after the stop token.
        lengths: (B,) generated tokens including the stop token.
        truncated: (B,) True where the rollout hit ``max_new_tokens`` without a stop token.
    """

    tokens: torch.LongTensor
    logprobs: torch.FloatTensor
    lengths: torch.LongTensor
    truncated: torch.BoolTensor


@runtime_checkable
class Sampler(Protocol):
    """A sampling backend: the trainer and evaluator code against this and nothing else."""

    def generate(
        self,
        model,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        pad_token_id: int,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """``n`` rollouts of each prompt, ``len(prompt_ids) * n`` rows, group-major."""
        ...


def check_prompts(prompt_ids: Sequence[Sequence[int]], n: int = 1) -> None:
    """Raise a ValueError naming the first malformed prompt (or a bad ``n``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (rollouts per prompt) must be an integer >= 1; got {n!r}")
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty; pass at least one prompt (a list of token ids)")
    for i, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token id")


def left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-pad prompts so that every row's next token sits at the same column.

    Returns ``(ids, prompt_lengths)``: ids is (B, longest prompt).
    """
    lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
    return ids.to(device), lengths.to(device)


def filter_logits(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set the logits outside the top-k set, then outside the top-p nucleus, to -inf.

    Top-p keeps the smallest set of most likely tokens whose mass (under the top-k-renormalised
    distribution) reaches ``top_p``: a token stays when the mass ranked strictly above it is
    below ``top_p``. Ties at the k-th value are all kept, as in HF's TopKLogitsWarper.
    """
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_above >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def select_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """Choose the next token of every row and return it with its log-probability.

    ``logits`` is (B, vocab); it is upcast to float32 so the returned log-probabilities have
    fp32 precision whatever the model dtype.
    """
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
        logprobs = logits.log_softmax(dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        return tokens, logprobs
    scaled = logits / params.temperature
    logprobs = scaled.log_softmax(dim=-1)
    if params.top_k or params.top_p < 1.0:
        probs = filter_logits(scaled, params.top_k, params.top_p).softmax(dim=-1)
    else:
        probs = logprobs.exp()
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def empty_rollouts(batch: int, params: SamplingParams, pad_token_id: int) -> Rollouts:
    """Rollouts filled as if every row stopped before its first token; backends write into it."""
    width = params.max_new_tokens
    return Rollouts(
        tokens=torch.full((batch, width), pad_token_id, dtype=torch.long),
        logprobs=torch.zeros((batch, width), dtype=torch.float32),
        lengths=torch.zeros(batch, dtype=torch.long),
        truncated=torch.zeros(batch, dtype=torch.bool),
    )


def finish_rollouts(
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    params: SamplingParams,
    pad_token_id: int,
) -> Rollouts:
    """Cut raw (B, T <= max_new_tokens) samples at the first stop token and pad the rest.

    For backends whose raw output does not already follow the stop rule of
    :class:`SamplingParams` (HF ``generate`` pads after its own eos handling, vLLM may not).
    """
    batch, steps = tokens.shape
    if params.stop_token_ids:
        stops = torch.tensor(params.stop_token_ids, dtype=tokens.dtype, device=tokens.device)
        is_stop = torch.isin(tokens, stops)
    else:
        is_stop = torch.zeros_like(tokens, dtype=torch.bool)
    # a column is kept when no stop token occurred strictly before it
    stops_before = is_stop.long().cumsum(dim=1) - is_stop.long()
    keep = stops_before == 0
    out = empty_rollouts(batch, params, pad_token_id)
    out.tokens[:, :steps] = torch.where(keep, tokens, pad_token_id).cpu()
    out.logprobs[:, :steps] = torch.where(keep, logprobs.float(), 0.0).cpu()
    out.lengths[:] = keep.sum(dim=1).cpu()
    # a backend may end before max_new_tokens only once every row has stopped
    out.truncated[:] = ~is_stop.any(dim=1).cpu()
    return out
