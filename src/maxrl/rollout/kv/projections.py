"""The fast runner's fused projections and its attention over one cache that many rows read."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Projections:
    """Every layer's query, key and value projections as one GEMM (their weights concatenated
    and transposed once per ``generate`` call, shared by the worker streams), and layer 0's as
    a table indexed by token when the vocabulary is small.

    Layer 0's input is the normed embedding of the token, so its projections are a function of
    the token alone: with a vocabulary of ``table_max_vocab`` tokens or fewer (the maze models'
    32, under the CPU settings), they are computed once per token id and looked up.

    With ``dtype=torch.bfloat16`` on a float32 model the weights are cast once, here, and each
    GEMM rounds its input to bf16 and returns bf16, as the training forward's autocast does
    (:class:`Linears` does the same for the other linear layers).
    """

    @torch.no_grad()
    def __init__(self, model, table_max_vocab: int, dtype: torch.dtype | None = None):
        layers = model.model.layers

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t if dtype is None else t.to(dtype)

        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor | None] = []
        for layer in layers:
            projs = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
            self.weights.append(cast(torch.cat([p.weight for p in projs]).t().contiguous()))
            has_bias = [p.bias is not None for p in projs]
            if any(has_bias) and not all(has_bias):
                raise ValueError("q/k/v projections must all have biases or none")
            bias = cast(torch.cat([p.bias for p in projs])) if all(has_bias) else None
            self.biases.append(bias)
        self.table = None
        embed = model.model.embed_tokens.weight
        if embed.shape[0] <= table_max_vocab:
            self.table = self._gemm(0, layers[0].input_layernorm(embed), slice(None))
        self.norms = [layer.input_layernorm for layer in layers]

    def _gemm(self, i: int, x: torch.Tensor, cols: slice) -> torch.Tensor:
        w, b = self.weights[i][:, cols], self.biases[i]
        x = x.to(w.dtype)
        return x @ w if b is None else torch.addmm(b[cols], x, w)

    def __call__(
        self, i: int, h: torch.Tensor, tokens: torch.Tensor, cols: slice = slice(None)
    ) -> torch.Tensor:
        """Columns ``cols`` of the concatenated (q, k, v) projections of layer ``i`` at
        positions with residual stream ``h`` (n, hidden) and input ``tokens`` (n,)."""
        if i == 0 and self.table is not None:
            return self.table[tokens, cols]
        return self._gemm(i, self.norms[i](h), cols)


class Linears:
    """Every layer's attention output and MLP projections and the lm head, as the fast runner
    applies them after attention. With ``dtype=None`` they are the model's own weights, and the
    products are its modules' (``F.linear`` is ``nn.Linear.forward``). With
    ``dtype=torch.bfloat16`` on a float32 model they are bf16 copies cast once per ``generate``
    call and shared by the worker streams: each product rounds its input to bf16, multiplies in
    bf16 and returns bf16, while norms, RoPE, attention, the residual stream and the logits'
    softmax stay in float32, the numerics of the training forward under bf16 autocast
    (``model.precision``)."""

    @torch.no_grad()
    def __init__(self, model, dtype: torch.dtype | None = None):
        self.dtype = dtype
        cast = self._cast
        self.layers = [
            (cast(layer.self_attn.o_proj), cast(layer.mlp.gate_proj), cast(layer.mlp.up_proj),
             cast(layer.mlp.down_proj), layer.mlp.act_fn)
            for layer in model.model.layers
        ]  # fmt: skip
        self.head = cast(model.lm_head)

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.dtype is None else t.to(self.dtype)

    def _cast(self, linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = None if linear.bias is None else self._to(linear.bias)
        return self._to(linear.weight), bias

    def finish_layer(self, i: int, layer, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The layer after attention: ``h + o(attn)``, then ``h + down(act(gate(x)) * up(x))``
        with ``x`` the post-attention norm of ``h``, the product taken in place."""
        o, gate, up, down, act = self.layers[i]
        h = h + F.linear(self._to(attn_out), *o)
        x = self._to(layer.post_attention_layernorm(h))
        return h + F.linear(act(F.linear(x, *gate)).mul_(F.linear(x, *up)), *down)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The lm head's logits of normed states ``x`` (float32 where the product ran in a
        lower precision)."""
        out = F.linear(self._to(x), *self.head)
        return out if self.dtype is None else out.float()


def one_cache_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores of queries ``q`` (rows, kv_heads, group, dim) against one cache's ``keys``
    (kv_heads, time, dim) that all the rows read: one GEMM per kv head over all their
    queries. Returns (rows, kv_heads, group, time)."""
    return one_cache_output(q, keys.mT)


def one_cache_output(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention output of ``weights`` (rows, kv_heads, group, time) over one cache's
    ``values`` (kv_heads, time, dim) that all the rows read (or, with ``values`` a cache's
    transposed keys, the scores of queries): one GEMM per kv head. Returns (rows, kv_heads,
    group, dim)."""
    rows, n_kv, group, time = weights.shape
    out = torch.matmul(weights.transpose(0, 1).reshape(n_kv, rows * group, time), values)
    return out.view(n_kv, rows, group, -1).transpose(0, 1)
