"""The training forward of the fast path: log-probabilities of packed responses, each prompt run
once for its N rollouts (Qwen2 and Llama families, the kv sampler's fast-path models).

What it computes is what a full forward over every (prompt + response) computes: the
log-probability, under ``log_softmax(logits / temperature)``, of every response token, with
gradients to every parameter (``tests/test_trainer.py`` checks both against a plain full
forward). What it saves over the model's ``forward`` on a padded batch:

- every linear layer, norm and MLP runs on packed tokens, with no padding: a prompt's tokens
  once (not once per rollout), and each response's real tokens only (the maze batches of the
  main job pad 14 real response tokens to 24);
- a response row attends to its prompt's keys and values, then its own row's, under one
  softmax, so the attention is the model's. The prompt's keys and values are computed once. On
  CPU the two key sets run as two flash-attention calls merged by their log-sum-exp
  (:class:`_SplitAttention`): the prompt part as one call per prompt over the queries of all
  its N rows, the own part as one causal call per row, and the backward as the two flash
  backwards under the merged output, so the prompt's key and value gradients are computed per
  prompt, not broadcast to the rows and summed back. Elsewhere one
  ``scaled_dot_product_attention`` call spans both key sets, the prompt's broadcast to its rows.
  Grouped-query heads are not repeated;
- the last layer computes only keys and values at prompt positions other than the last, and no
  response row computes the position after its last token (neither feeds a needed logit);
- norms run as one fused ``rms_norm`` call; each projection is its own GEMM, so that its
  output is contiguous for the elementwise ops after it (RoPE, SwiGLU).

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

    # attention masks. Prompt queries are causal over their prompt: right padding sits after
    # every real query, so a causal mask alone is exact for them (the padded queries' outputs are
    # dropped). At the last layer only each prompt's last query runs, over its real keys.
    # Response queries see their prompt's real keys, then their own row's keys up to themselves
    # (causal again: a row's padded keys come after its real queries).
    neg = torch.finfo(torch.float32).min
    p_key_bias = torch.zeros((n_prompts, 1, 1, lp), device=device).masked_fill_(
        ~p_real[:, None, None], neg
    )  # (P, 1, 1, Lp)
    split = _splits_attention(device)
    if split:
        r_bias = None if bool(p_real.all()) else p_key_bias
    else:
        own_ok = (r_cols[None, :] <= r_cols[:, None])[None] & r_real[:, None, :]  # (B, W, W)
        key_ok = torch.cat([p_real[row_prompt][:, None, :].expand(-1, w, -1), own_ok], dim=-1)
        r_bias = torch.zeros(key_ok.shape, device=device).masked_fill_(~key_ok, neg)
        r_bias = r_bias[:, None]  # (B, 1, W, Lp + W)

    # the residual stream: the prompts' packed tokens, then the responses' (Tp + Tr, hidden)
    h = inner.embed_tokens(torch.cat([p_ids[p_real], r_ids]))
    positions = torch.cat([p_cols.expand(n_prompts, -1)[p_real], r_pos])
    cos, sin = inner.rotary_emb(h, positions[None])
    cos, sin = cos[0], sin[0]  # (Tp + Tr, d), broadcast over heads by apply_rope
    tp = len(p_flat)
    final = len(inner.layers) - 1
    for i, layer in enumerate(inner.layers):
        sa = layer.self_attn
        x = _rms_norm(layer.input_layernorm, h)
        # one GEMM per projection: each output contiguous (the slices of one GEMM over the
        # concatenated weights are strided, and bf16 elementwise ops on strided rows ran 2-4x
        # slower than on contiguous ones here)
        q = sa.q_proj(x).view(-1, n_heads, head_dim)
        k = sa.k_proj(x).view(-1, n_kv, head_dim)
        v = sa.v_proj(x).view(-1, n_kv, head_dim)
        q, k = apply_rope(q, k, cos, sin, unsqueeze_dim=1)
        # attention runs in float32 (see _attention): cast the packed q/k/v once, before the
        # layouts that repeat them
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        # prompt keys and values padded to (P, Lp, kv, d)
        k_p = _unpack(k[:tp], p_flat, (n_prompts, lp))
        v_p = _unpack(v[:tp], p_flat, (n_prompts, lp))
        # prompt attention (only each prompt's last position at the last layer)
        if i == final:
            q_p = q[:tp][p_last][:, None]  # (P, 1, heads, d)
            out_p = _attention(q_p, k_p, v_p, p_key_bias, scaling, group > 1)
            out_p = out_p.reshape(-1, n_heads * head_dim)
            # from here on the stream holds each prompt's last token, then the responses'
            h = h[torch.cat([p_last, torch.arange(tp, h.shape[0], device=device)])]
        else:
            q_p = _unpack(q[:tp], p_flat, (n_prompts, lp))
            out_p = _attention(q_p, k_p, v_p, None, scaling, group > 1, causal=True)
            out_p = out_p.reshape(-1, n_heads * head_dim)[p_flat]
        # response attention: each row's queries over its prompt's keys, then its own
        q_r = _unpack(q[tp:], r_flat, (n_rows, w))  # (B, W, heads, d)
        k_r = _unpack(k[tp:], r_flat, (n_rows, w))  # (B, W, kv, d)
        v_r = _unpack(v[tp:], r_flat, (n_rows, w))
        if split:
            bias = None if r_bias is None else r_bias.to(q_r.dtype)
            out_r = _SplitAttention.apply(q_r, k_p, v_p, k_r, v_r, bias, scaling)
        else:
            keys = _after_prompt(k_p.transpose(1, 2), k_r.transpose(1, 2), n)
            values = _after_prompt(v_p.transpose(1, 2), v_r.transpose(1, 2), n)
            out_r = _attention(
                q_r, keys.transpose(1, 2), values.transpose(1, 2), r_bias, scaling, group > 1
            )
        out_r = out_r.reshape(n_rows * w, -1)[r_flat]
        h = h + sa.o_proj(torch.cat([out_p, out_r]))
        mlp = layer.mlp
        x = _rms_norm(layer.post_attention_layernorm, h)
        h = h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))

    # the hidden state that predicts each response token: the prompt's last for token 0, the
    # row's own position j - 1 for token j
    real = torch.arange(width, device=device)[None, :] < lengths[:, None]
    first = torch.zeros_like(real)
    first[:, 0] = True
    slots = torch.zeros_like(real)
    slots[:, 1:] = r_real[:, : width - 1]
    index = torch.zeros((n_rows, width), dtype=torch.long, device=device)
    index[first] = row_prompt
    index[slots] = n_prompts + torch.arange(len(r_flat), device=device)
    states = h[index[real]]
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


def _attention(q, k, v, bias, scale: float, gqa: bool, causal: bool = False) -> torch.Tensor:
    """SDPA in float32 whatever the autocast: its CPU backward in bf16 ran six times slower
    than in float32 here, while the projections gain from bf16. ``q``, ``k`` and ``v`` are
    (batch, L, heads, d); returns (batch, L, heads, d) in q's dtype."""
    out_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = (x.transpose(1, 2).to(dtype) for x in (q, k, v))
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if bias is None else bias.to(dtype), is_causal=causal,
            scale=scale, enable_gqa=gqa,
        )  # fmt: skip
    return out.transpose(1, 2).to(out_dtype)


def _splits_attention(device: torch.device) -> bool:
    """Whether the response attention runs as :class:`_SplitAttention` (CPU flash attention,
    whose forward returns the log-sum-exp that merging the two key sets needs)."""
    return device.type == "cpu" and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"
    )


class _SplitAttention(torch.autograd.Function):
    """Response rows' attention over their prompt's keys, then their own, as two flash-attention
    calls merged by log-sum-exp: softmax over the union of two key sets is each part's output
    weighted by ``exp(lse_part - lse)``. Both parts see the queries in their own layout, so no
    key or query is copied or repeated: the prompt part runs once per prompt over the queries of
    its N rows, (P, heads, N * W, d) against (P, kv, Lp, d); the own part once per row, causal,
    (B, heads, W, d) against (B, kv, W, d).

    The backward is exact: each part's flash backward, given the merged output and the merged
    log-sum-exp, recomputes that part's share of the one softmax, and its correction term
    (the row sums of grad_out x out) is the merged one; the query gradient is the sum of both.
    ``tests/test_trainer.py`` checks values and gradients against the model's own forward in
    float64.

    Inputs (float32 or float64, not autocast): ``q`` (B, W, heads, d); ``k_p``, ``v_p``
    (P, Lp, kv, d); ``k_r``, ``v_r`` (B, W, kv, d), B = P x N rows, group-major; ``prompt_bias``
    None or (P, 1, 1, Lp) additive (the prompts' padded keys). Returns (B, W, heads, d).
    """

    @staticmethod
    def forward(ctx, q, k_p, v_p, k_r, v_r, prompt_bias, scale):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        n_rows, width, heads, dim = q.shape
        n_prompts = k_p.shape[0]
        with torch.autocast("cpu", enabled=False):
            out_p, lse_p = flash(
                _by_prompt(q, n_prompts), k_p.transpose(1, 2), v_p.transpose(1, 2),
                attn_mask=prompt_bias, scale=scale,
            )  # fmt: skip
            out_r, lse_r = flash(
                q.transpose(1, 2), k_r.transpose(1, 2), v_r.transpose(1, 2), is_causal=True,
                scale=scale,
            )  # fmt: skip
            # (P, heads, N * W) -> (B, heads, W)
            lse_p = lse_p.view(n_prompts, heads, -1, width).transpose(1, 2)
            lse_p = lse_p.reshape(n_rows, heads, width)
            lse = torch.logaddexp(lse_p, lse_r)
            w_p = (lse_p - lse).exp_().transpose(1, 2)[..., None]
            w_r = (lse_r - lse).exp_().transpose(1, 2)[..., None]
            out = out_p.transpose(1, 2).reshape(q.shape) * w_p + out_r.transpose(1, 2) * w_r
        ctx.save_for_backward(q, k_p, v_p, k_r, v_r, prompt_bias, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        q, k_p, v_p, k_r, v_r, prompt_bias, out, lse = ctx.saved_tensors
        grad = grad.contiguous()
        n_rows, width, heads, dim = q.shape
        n_prompts = k_p.shape[0]
        lse_p = lse.view(n_prompts, -1, heads, width).transpose(1, 2).reshape(n_prompts, heads, -1)
        gq_p, gk_p, gv_p = backward(
            _by_prompt(grad, n_prompts), _by_prompt(q, n_prompts), k_p.transpose(1, 2),
            v_p.transpose(1, 2), _by_prompt(out, n_prompts), lse_p, 0.0, False,
            attn_mask=prompt_bias, scale=ctx.scale,
        )  # fmt: skip
        gq_r, gk_r, gv_r = backward(
            grad.transpose(1, 2), q.transpose(1, 2), k_r.transpose(1, 2), v_r.transpose(1, 2),
            out.transpose(1, 2), lse, 0.0, True, scale=ctx.scale,
        )  # fmt: skip
        gq = gq_r.transpose(1, 2) + gq_p.transpose(1, 2).reshape(q.shape)
        return (
            gq, gk_p.transpose(1, 2), gv_p.transpose(1, 2), gk_r.transpose(1, 2),
            gv_r.transpose(1, 2), None, None,
        )  # fmt: skip


def _by_prompt(x: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """(B, W, h, d) rows, group-major, viewed as (P, h, N * W, d): each prompt's N rows as one
    sequence of queries (a view, no copy)."""
    return x.view(n_prompts, -1, x.shape[2], x.shape[3]).transpose(1, 2)


def _unpack(x: torch.Tensor, slots: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Packed rows ``x`` (T, ...) placed at flat ``slots`` of a zero (rows, width, ...) tensor."""
    out = x.new_zeros((shape[0] * shape[1], *x.shape[1:]))
    out = out.index_copy(0, slots, x)
    return out.view(*shape, *x.shape[1:])
