"""The fast runner's fused projections and its attention over one cache that many rows read."""

from __future__ import annotations

import torch


class Projections:
    """Every layer's query, key and value projections as one GEMM (their weights concatenated
    and transposed once per ``generate`` call, shared by the worker streams), and layer 0's as
    a table indexed by token when the vocabulary is small.

    Layer 0's input is the normed embedding of the token, so its projections are a function of
    the token alone: with a vocabulary of ``table_max_vocab`` tokens or fewer (the maze models'
    32, under the CPU settings), they are computed once per token id and looked up.
    """

    @torch.no_grad()
    def __init__(self, model, table_max_vocab: int):
        layers = model.model.layers
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor | None] = []
        for layer in layers:
            projs = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
            self.weights.append(torch.cat([p.weight for p in projs]).t().contiguous())
            has_bias = [p.bias is not None for p in projs]
            if any(has_bias) and not all(has_bias):
                raise ValueError("q/k/v projections must all have biases or none")
            self.biases.append(torch.cat([p.bias for p in projs]) if all(has_bias) else None)
        self.table = None
        embed = model.model.embed_tokens.weight
        if embed.shape[0] <= table_max_vocab:
            self.table = self._gemm(0, layers[0].input_layernorm(embed), slice(None))
        self.norms = [layer.input_layernorm for layer in layers]

    def _gemm(self, i: int, x: torch.Tensor, cols: slice) -> torch.Tensor:
        w, b = self.weights[i][:, cols], self.biases[i]
        return x @ w if b is None else torch.addmm(b[cols], x, w)

    def __call__(
        self, i: int, h: torch.Tensor, tokens: torch.Tensor, cols: slice = slice(None)
    ) -> torch.Tensor:
        """Columns ``cols`` of the concatenated (q, k, v) projections of layer ``i`` at
        positions with residual stream ``h`` (n, hidden) and input ``tokens`` (n,)."""
        if i == 0 and self.table is not None:
            return self.table[tokens, cols]
        return self._gemm(i, self.norms[i](h), cols)


def one_cache_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores of queries ``q`` (rows, kv_heads, group, dim) against one cache's ``keys``
    (kv_heads, time, dim) that all the rows read: one GEMM per kv head over all their
    queries. Returns (rows, kv_heads, group, time)."""
    rows, n_kv, group, dim = q.shape
    scores = torch.matmul(q.transpose(0, 1).reshape(n_kv, rows * group, dim), keys.mT)
    return scores.view(n_kv, rows, group, -1).transpose(0, 1)


def one_cache_output(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention output of ``weights`` (rows, kv_heads, group, time) over one cache's
    ``values`` (kv_heads, time, dim): one GEMM per kv head. Returns (rows, kv_heads, group,
    dim)."""
    rows, n_kv, group, time = weights.shape
    out = torch.matmul(weights.transpose(0, 1).reshape(n_kv, rows * group, time), values)
    return out.view(n_kv, rows, group, -1).transpose(0, 1)
