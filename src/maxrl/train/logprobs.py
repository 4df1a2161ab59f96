"""Per-token log-probabilities of sampled responses under the policy being trained.

:func:`policy_logprobs` is the forward pass of the update: it takes a slice of a
:class:`maxrl.groups.RolloutGroups` (the prompts of some groups and the response tokens of their
rollouts, as the sampler returned them) and gives log pi(token) at every response position, in
the same layout as ``Rollouts.logprobs``. On the fast-path models it runs the packed forward of
:mod:`maxrl.train.packed`; on any other causal LM, :func:`response_logprobs`, the model's own
``forward`` (each prompt once with its KV cache shared by its rollouts, or every sequence whole
under gradient checkpointing).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("float32", "bfloat16", "auto")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls beat float32 by a wide margin here: a GPU, or a CPU with AMX tiles or
    AVX-512 BF16 instructions (on one AMX core a 6000 x 256 x 1024 product ran about 8x faster in
    bf16; on an AMD EPYC with AVX-512 BF16 the main job's update ran 1.65x faster)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def compute_precision(model, precision: str):
    """The context to run the training forward and backward in: ``bfloat16`` autocasts the
    linear layers to bf16 (weights, gradients and the optimiser stay in the model's dtype);
    ``auto`` does so where :func:`bf16_is_fast`, and stays in float32 elsewhere."""
    if not autocasts_to_bf16(model, precision):
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def autocasts_to_bf16(model, precision: str) -> bool:
    """Whether ``precision`` (float32 | bfloat16 | auto) means bf16 linear layers for ``model``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = next(model.parameters()).device
    return precision == "bfloat16" or (precision == "auto" and bf16_is_fast(device))


def policy_logprobs(
    model,
    prompts: list[list[int]],
    responses: torch.Tensor,
    lengths: torch.Tensor,
    n: int,
    pad_id: int,
    temperature: float = 1.0,
    entropy: bool = False,
    packed: bool = True,
):
    """(logp, mask, entropies or None) of ``responses``, by the fastest exact forward the model
    supports (see the module docstring; ``packed=False`` skips the packed one); the arguments of
    :func:`response_logprobs`."""
    from maxrl.train.packed import packed_logprobs, supports_packed

    if packed and supports_packed(model):
        return packed_logprobs(model, prompts, responses, lengths, n, temperature, entropy)
    # the shared-prefix forward needs the model's KV cache, which checkpointing turns off
    shared = not recomputes_activations(model)
    return response_logprobs(
        model, prompts, responses, lengths, n, pad_id, temperature, entropy, shared_prefix=shared
    )


def enable_activation_checkpointing(model) -> None:
    """Turn gradient (activation) checkpointing on, by the new name where transformers has it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


def recomputes_activations(model) -> bool:
    """Whether gradient (activation) checkpointing is on; transformers 5.2x renamed the flag to
    ``is_activation_checkpointing`` and warns on the old name."""
    value = getattr(model, "is_activation_checkpointing", None)  # also through a peft wrapper
    if value is None:
        value = getattr(model, "is_gradient_checkpointing", False)
    return bool(value)


def response_logprobs(
    model,
    prompts: list[list[int]],
    responses: torch.Tensor,
    lengths: torch.Tensor,
    n: int,
    pad_id: int,
    temperature: float = 1.0,
    entropy: bool = False,
    shared_prefix: bool = True,
):
    """Per-token log-probabilities of ``responses`` (group-major: ``n`` per prompt), (B, Lr).

    ``responses`` is (B, Lr) token ids with ``lengths`` (B,) real tokens per row and ``pad_id``
    after them (``Rollouts.tokens`` cut to the longest row).

    With ``shared_prefix`` each prompt runs once and its KV cache is repeated for its ``n``
    rollouts; gradients flow through the shared cache, so the result and its gradient equal a
    full forward over every (prompt + response), at a fraction of the cost when prompts are long
    next to responses (a 9x9 maze: 94 prompt tokens, about 15 response tokens). Without it (e.g.
    under gradient checkpointing, which disables the cache) each sequence runs whole.

    Returns (logp, mask, entropies or None), each (B, Lr), in response coordinates: column j is
    response token j, the same layout as ``Rollouts.logprobs``.
    """
    n_seq = responses.shape[0]
    if n_seq != len(prompts) * n or lengths.shape != (n_seq,):
        raise ValueError(
            f"{n_seq} responses with {tuple(lengths.shape)} lengths for {len(prompts)} prompts "
            f"x {n} rollouts"
        )
    resp = responses
    r_mask = torch.arange(resp.shape[1])[None, :] < lengths[:, None]
    if shared_prefix:
        logits = _shared_prefix_logits(model, prompts, resp, r_mask, n, pad_id)
    else:
        ids, attn, starts = full_sequences(prompts, n, resp, lengths, pad_id)
        all_logits = model(input_ids=ids, attention_mask=attn).logits
        cols = (starts[:, None] - 1 + torch.arange(resp.shape[1])[None, :]).clamp_max(
            ids.shape[1] - 1
        )
        logits = all_logits.gather(1, cols[..., None].expand(-1, -1, all_logits.shape[-1]))
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, resp[..., None]).squeeze(-1) * r_mask
    ent = -(logp_all.exp() * logp_all).sum(-1) * r_mask if entropy else None
    return logp, r_mask, ent


def full_sequences(
    prompts: list[list[int]], n: int, responses: torch.Tensor, lengths: torch.Tensor, pad_id: int
):
    """Right-padded (prompt + response) rows, ``n`` per prompt, for one full forward pass.

    Returns (input_ids, attention_mask, response_starts): (B, L), (B, L) and (B,), where row i's
    response begins at column ``response_starts[i]``.
    """
    starts = torch.tensor([len(p) for p in prompts]).repeat_interleave(n)
    total = starts + lengths
    ids = torch.full((len(starts), int(total.max())), pad_id, dtype=torch.long)
    for g, prompt in enumerate(prompts):
        ids[g * n : (g + 1) * n, : len(prompt)] = torch.tensor(prompt)
    cols = starts[:, None] + torch.arange(responses.shape[1])[None, :]
    real = torch.arange(responses.shape[1])[None, :] < lengths[:, None]
    rows = torch.arange(len(starts))[:, None].expand_as(cols)
    ids[rows[real], cols[real]] = responses[real]
    attention_mask = (torch.arange(ids.shape[1])[None, :] < total[:, None]).long()
    return ids, attention_mask, starts


def _shared_prefix_logits(model, prompts, resp, r_mask, n: int, pad_id: int):
    from maxrl.models.loading import cache_argument, output_cache

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    p_mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left-pad, so every prompt's last token is the last column
        ids[i, width - len(p) :] = torch.tensor(p)
        p_mask[i, width - len(p) :] = 1
    positions = (p_mask.cumsum(1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=p_mask, position_ids=positions, use_cache=True)
    cache = output_cache(out)
    cache.batch_repeat_interleave(n)
    first = out.logits[:, -1:].repeat_interleave(n, 0)  # predicts response token 0
    p_len = p_mask.sum(1).repeat_interleave(n)
    mask = torch.cat([p_mask.repeat_interleave(n, 0), r_mask.long()], 1)
    pos = p_len[:, None] + torch.arange(resp.shape[1])[None, :]
    rest = model(
        input_ids=resp,
        attention_mask=mask,
        position_ids=pos,
        use_cache=True,
        **{cache_argument(model): cache},
    ).logits
    return torch.cat([first, rest[:, :-1]], 1)
