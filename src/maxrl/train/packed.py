"""The training forward of the fast path: log-probabilities of packed responses, each prompt run
once for its N rollouts (Qwen2 and Llama families, the kv sampler's fast-path models).

What it computes is what a full forward over every (prompt + response) computes: the
log-probability, under ``log_softmax(logits / temperature)``, of every response token, with
gradients to every parameter (``tests/test_trainer.py`` checks both against a plain full
forward). What it saves over the model's ``forward`` on a padded batch:

- every linear layer, norm and MLP runs on packed tokens, with no padding: a prompt's tokens
  once (not once per rollout), and each response's real tokens only (the maze batches of the
  main job pad 14 real response tokens to 24);
- a response row attends to its prompt's keys and values, then its own row's, in one
  ``scaled_dot_product_attention`` call over all rows, so one softmax spans both and the
  attention is the model's. The prompt's keys and values are computed once and broadcast to
  its N rows (their gradient is a sum over the rows); grouped-query heads are not repeated;
- the last layer computes only keys and values at prompt positions other than the last, and no
  response row computes the position after its last token (neither feeds a needed logit);
- norms run as one fused ``rms_norm`` call, and the q/k/v projections (and the MLP's gate and
  up projections) as one GEMM each over their concatenated weights.

Models outside the fast path, and models under gradient checkpointing or with adapters that the
fast path does not know, use :func:`maxrl.train.logprobs.response_logprobs` instead.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from maxrl.rollout.kv import supports_fast_path
from maxrl.train.logprobs import recomputes_activations


def supports_packed(model) -> bool:
    """Whether :func:`packed_logprobs` reproduces this model's forward pass: a Qwen2 or Llama
    decoder with plain RoPE and its own modules (no gradient checkpointing, no peft wrapper)."""
    if recomputes_activations(model) or hasattr(model, "peft_config"):
        return False
    if not supports_fast_path(model):
        return False
    rotary = model.model.rotary_emb
    layers = model.model.layers
    norms = [model.model.norm] + [n for layer in layers for n in _norms(layer)]
    return (
        getattr(rotary, "rope_type", "default") == "default"
        and all(hasattr(n, "variance_epsilon") and hasattr(n, "weight") for n in norms)
        and all(getattr(layer.self_attn, "attention_dropout", 0.0) == 0.0 for layer in layers)
    )


def _norms(layer):
    return layer.input_layernorm, layer.post_attention_layernorm


def _rms_norm(module, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), module.weight, module.variance_epsilon)


def packed_logprobs(
    model,
    prompts: list[list[int]],
    responses: torch.Tensor,
    lengths: torch.Tensor,
    n: int,
    temperature: float = 1.0,
    entropy: bool = False,
):
    """Per-token log-probabilities of ``responses`` (group-major: ``n`` per prompt), (B, Lr).

    Same contract as :func:`maxrl.train.logprobs.response_logprobs`: ``responses`` (B, Lr) with
    ``lengths`` (B,) real tokens per row, every length >= 1; returns (logp, mask, entropies or
    None), each (B, Lr), column j being response token j.
    """
    inner = model.model
    device = inner.embed_tokens.weight.device
    n_rows, width = responses.shape
    n_prompts = len(prompts)
    if n_rows != n_prompts * n or lengths.shape != (n_rows,) or bool((lengths < 1).any()):
        raise ValueError(
            f"{n_rows} responses with lengths {tuple(lengths.shape)} (each >= 1) for "
            f"{n_prompts} prompts x {n} rollouts"
        )
    attn = inner.layers[0].self_attn
    apply_rope = inspect.getmodule(type(attn)).apply_rotary_pos_emb
    head_dim = attn.head_dim
    n_heads = attn.q_proj.out_features // head_dim
    n_kv = attn.k_proj.out_features // head_dim
    group = n_heads // n_kv
    scaling = attn.scaling
    q_width, kv_width = n_heads * head_dim, n_kv * head_dim

    # -- layout ------------------------------------------------------------------------------
    # prompts right-padded to (P, Lp): a real query never sees the padding behind it
    p_len = torch.tensor([len(p) for p in prompts], device=device)
    lp = int(p_len.max())
    p_cols = torch.arange(lp, device=device)
    p_real = p_cols[None, :] < p_len[:, None]  # (P, Lp)
    p_ids = torch.zeros((n_prompts, lp), dtype=torch.long, device=device)
    p_ids[p_real] = torch.tensor([t for p in prompts for t in p], device=device)
    p_flat = p_real.reshape(-1).nonzero()[:, 0]  # packed prompt token -> (P * Lp) slot
    p_last = torch.cumsum(p_len, 0) - 1  # packed index of each prompt's last token
    # response inputs: tokens 0 .. len - 2 of each row (token len - 1 predicts nothing needed)
    lengths = lengths.to(device)
    w = max(width - 1, 1)
    r_cols = torch.arange(w, device=device)
    r_real = r_cols[None, :] < (lengths - 1)[:, None]  # (B, W)
    r_flat = r_real.reshape(-1).nonzero()[:, 0]
    r_ids = responses.to(device)[:, :w][r_real]
    row_prompt = torch.arange(n_prompts, device=device).repeat_interleave(n)
    r_pos = (p_len[row_prompt][:, None] + r_cols[None, :])[r_real]

    # attention biases: prompt queries are causal over their prompt; response queries see their
    # prompt's real keys, then their own row's keys up to themselves
    neg = torch.finfo(torch.float32).min
    causal = p_cols[None, :] <= p_cols[:, None]
    p_bias = torch.zeros((n_prompts, 1, lp, lp), device=device)
    p_bias.masked_fill_(~(causal[None] & p_real[:, None, :])[:, None], neg)
    own_ok = (r_cols[None, :] <= r_cols[:, None])[None] & r_real[:, None, :]  # (B, W, W)
    key_ok = torch.cat([p_real[row_prompt][:, None, :].expand(-1, w, -1), own_ok], dim=-1)
    r_bias = torch.zeros(key_ok.shape, device=device).masked_fill_(~key_ok, neg)
    r_bias = r_bias[:, None]  # (B, 1, W, Lp + W)

    h_p = inner.embed_tokens(p_ids[p_real])  # (Tp, hidden)
    h_r = inner.embed_tokens(r_ids)  # (Tr, hidden)
    positions = torch.cat([p_cols.expand(n_prompts, -1)[p_real], r_pos])
    cos, sin = inner.rotary_emb(h_p, positions[None])
    cos, sin = cos[0], sin[0]  # (Tp + Tr, d), broadcast over heads by apply_rope
    tp = h_p.shape[0]
    final = len(inner.layers) - 1
    for i, layer in enumerate(inner.layers):
        sa = layer.self_attn
        x = _rms_norm(layer.input_layernorm, torch.cat([h_p, h_r]))
        qkv = _linear(x, (sa.q_proj, sa.k_proj, sa.v_proj))
        q = qkv[:, :q_width].view(-1, n_heads, head_dim)
        k = qkv[:, q_width : q_width + kv_width].view(-1, n_kv, head_dim)
        v = qkv[:, q_width + kv_width :].view(-1, n_kv, head_dim)
        q, k = apply_rope(q, k, cos, sin, unsqueeze_dim=1)
        # attention runs in float32 (see _attention): cast the packed q/k/v once, before the
        # layouts that repeat them
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        # prompt keys and values padded to (P, kv, Lp, d)
        k_p = _unpack(k[:tp], p_flat, (n_prompts, lp)).transpose(1, 2)
        v_p = _unpack(v[:tp], p_flat, (n_prompts, lp)).transpose(1, 2)
        # prompt attention (only each prompt's last position at the last layer)
        if i == final:
            q_p = q[:tp][p_last][:, None].transpose(1, 2)  # (P, heads, 1, d)
            bias = p_bias[torch.arange(n_prompts), :, p_len - 1][:, :, None]
            h_p = h_p[p_last]
        else:
            q_p = _unpack(q[:tp], p_flat, (n_prompts, lp)).transpose(1, 2)
            bias = p_bias
        out_p = _attention(q_p, k_p, v_p, bias, scaling, group > 1)
        out_p = out_p.transpose(1, 2).reshape(-1, n_heads * head_dim)
        if i != final:
            out_p = out_p[p_flat]
        # response attention: each row's queries over its prompt's keys, then its own
        q_r = _unpack(q[tp:], r_flat, (n_rows, w)).transpose(1, 2)  # (B, heads, W, d)
        k_r = _unpack(k[tp:], r_flat, (n_rows, w)).transpose(1, 2)  # (B, kv, W, d)
        v_r = _unpack(v[tp:], r_flat, (n_rows, w)).transpose(1, 2)
        keys, values = _after_prompt(k_p, k_r, n), _after_prompt(v_p, v_r, n)
        out_r = _attention(q_r, keys, values, r_bias, scaling, group > 1)
        out_r = out_r.transpose(1, 2).reshape(n_rows * w, -1)[r_flat]
        h = torch.cat([h_p, h_r]) + sa.o_proj(torch.cat([out_p, out_r]))
        mlp = layer.mlp
        x = _rms_norm(layer.post_attention_layernorm, h)
        gate, up = _linear(x, (mlp.gate_proj, mlp.up_proj)).chunk(2, dim=-1)
        h = h + mlp.down_proj(mlp.act_fn(gate) * up)
        tp = h_p.shape[0]
        h_p, h_r = h[:tp], h[tp:]

    # the hidden state that predicts each response token: the prompt's last for token 0, the
    # row's own position j - 1 for token j
    real = torch.arange(width, device=device)[None, :] < lengths[:, None]
    first = torch.zeros_like(real)
    first[:, 0] = True
    slots = torch.zeros_like(real)
    slots[:, 1:] = r_real[:, : width - 1]
    index = torch.zeros((n_rows, width), dtype=torch.long, device=device)
    index[first] = row_prompt
    index[slots] = n_prompts + torch.arange(h_r.shape[0], device=device)
    states = torch.cat([h_p, h_r])[index[real]]
    logits = model.lm_head(_rms_norm(inner.norm, states)).float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    targets = responses.to(device)[real]
    logp = torch.zeros((n_rows, width), dtype=logp_all.dtype, device=device)
    logp[real] = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    ent = None
    if entropy:
        ent = torch.zeros_like(logp)
        ent[real] = -(logp_all.exp() * logp_all).sum(-1)
    return logp, real, ent


def _after_prompt(prompt: torch.Tensor, own: torch.Tensor, n: int) -> torch.Tensor:
    """(B, kv, Lp + W, d): each row's prompt keys (or values), then its own. The prompt part is
    the (P, kv, Lp, d) tensor broadcast over its n rows, so its gradient is a sum over them rather
    than a scatter; one ``cat`` writes the result, and its backward only slices the gradient
    (writing into slices of an empty tensor instead cost a full copy and fill of the gradient
    per slice in the backward)."""
    n_prompts, heads, lp, dim = prompt.shape
    parts = (prompt[:, None].expand(-1, n, -1, -1, -1), own.view(n_prompts, n, heads, -1, dim))
    return torch.cat(parts, dim=3).view(n_prompts * n, heads, lp + own.shape[2], dim)


def _linear(x: torch.Tensor, layers) -> torch.Tensor:
    """Several linear layers on one input as one GEMM over their concatenated weights (one
    input cast under autocast, one kernel); gradients reach each layer's own weights."""
    weight = torch.cat([layer.weight for layer in layers])
    biases = [layer.bias for layer in layers]
    if all(b is None for b in biases):
        return F.linear(x, weight)
    bias = torch.cat(
        [
            b if b is not None else weight.new_zeros(layer.out_features)
            for b, layer in zip(biases, layers)
        ]
    )
    return F.linear(x, weight, bias)


def _attention(q, k, v, bias, scale: float, gqa: bool) -> torch.Tensor:
    """SDPA in float32 whatever the autocast: its CPU backward in bf16 ran six times slower
    than in float32 here, while the projections gain from bf16. Returns q's dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(
            q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=bias.to(dtype), scale=scale,
            enable_gqa=gqa,
        )  # fmt: skip
    return out.to(q.dtype)


def _unpack(x: torch.Tensor, slots: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Packed rows ``x`` (T, ...) placed at flat ``slots`` of a zero (rows, width, ...) tensor."""
    out = x.new_zeros((shape[0] * shape[1], *x.shape[1:]))
    out = out.index_copy(0, slots, x)
    return out.view(*shape, *x.shape[1:])
