"""Batched sampling on a preallocated KV cache (the "kv" backend).

Two runners share one decode loop (sampling, stop rule, dropping finished rows):

- ``_DecoderRunner`` (Qwen2 and Llama families): runs the model's own decoder modules (norms,
  projections, MLP, rotary embedding and ``apply_rotary_pos_emb`` from the model's module) layer
  by layer on preallocated key/value buffers. Over the model's ``forward`` it saves: the cache
  concatenation and 4D mask building of every step, the last layer's work at prompt positions
  other than the last (only its keys and values are needed there), the prefill and the cache of
  a prompt repeated in the batch (prefilled once, its cache shared by its rollouts), and it
  runs grouped-query attention without repeating K/V, in the operand layout MKL is fast on.
- ``_ModelForwardRunner`` (any HF causal LM): the model's own ``forward`` with its default
  ``DynamicCache`` and explicit position ids. Slower, but needs nothing from the architecture.

See docs/rollout.md for the measurements behind each choice."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from .base import Rollouts, SamplingParams, check_prompts, empty_rollouts, left_pad, select_tokens

# model_type values whose decoder layers are (norm -> q/k/v/o attention with RoPE -> norm -> MLP)
# with pre-norm residuals, which is all the fast runner assumes
FAST_PATH_MODEL_TYPES = ("qwen2", "llama")

# below this many rows per stream, splitting the batch over cores costs more than it gains
MIN_ROWS_PER_WORKER = 16

# mean rollouts per distinct prompt from which prompts' caches are shared rather than copied:
# below it the per-prompt loop in shared attention costs more than the reads it saves
MIN_ROWS_PER_SHARED_PROMPT = 16

# computed tokens per prefill pass on CPU: its activations stay in cache and its GEMMs run near
# the one-core peak (``benchmarks/rollout.py --ablations --new-tokens 1`` against 2,048)
PREFILL_TOKENS_PER_PASS = 512

# layer 0's q/k/v projections are looked up by token id for vocabularies up to this size
TABLE_MAX_VOCAB = 4096

# on CPU, decode attention's output is an ``embedding_bag`` sum over value rows (False: a
# batched matmul, as on other devices); ``benchmarks/rollout.py --ablations`` compares them
VALUE_SUMS_BY_ROWS = True

# a prefix of at least this many tokens that all of a stream's distinct prompts share (a chat
# template and system prompt, few-shot examples, a maze's border) is cached once for all its
# rows, and decode attention reads it with one GEMM per kv head instead of once per row
MIN_COMMON_PREFIX = 8

# On a GPU a small model's decode is bound by kernel launches and host work, not by memory
# traffic, so the settings differ (``benchmarks/rollout.py --device cuda --ablations``;
# docs/rollout.md): few large prefill passes; no token table and no common prefix cached
# once, each of which adds launches per step; and no shared mode, whose attention loops over
# prompts in Python
PREFILL_TOKENS_PER_PASS_GPU = 16384
TABLE_MAX_VOCAB_GPU = 0
MIN_COMMON_PREFIX_GPU = 10**9
MIN_ROWS_PER_SHARED_PROMPT_GPU = 10**9


def supports_fast_path(model) -> bool:
    """Whether ``_DecoderRunner`` reproduces this model's forward pass."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FAST_PATH_MODEL_TYPES:
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


def _rope_type(model) -> str:
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    return getattr(rotary, "rope_type", "default")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _PrefixPass:
    """One prefill pass over consecutive prompts ``first ... stop - 1`` of a ``_PrefixPlan``.

    Packed "own" tokens (the positions a prompt computes itself) and the cache copies that
    fill its other positions from the earlier prompt that owns them. Columns are cache
    columns: a prompt of length L in a cache of width W sits at columns W - L ... W - 1.
    """

    first: int
    stop: int
    tokens: torch.Tensor  # (n,) own token ids, prompt by prompt
    positions: torch.Tensor  # (n,) their positions in their prompt
    own_rows: torch.Tensor  # (n,) their prompt's index
    own_cols: torch.Tensor  # (n,) their cache column
    slots: torch.Tensor  # (n,) index among their prompt's own tokens
    starts: torch.Tensor  # (prompts,) first own position of each prompt
    pads: torch.Tensor  # (prompts,) left padding of each prompt
    last: torch.Tensor  # (prompts,) packed index of each prompt's last token
    max_own: int
    copy_rows: torch.Tensor  # (m,) prompt receiving a copied key/value
    copy_dst_cols: torch.Tensor
    copy_src_rows: torch.Tensor  # (m,) the prompt that computed it
    copy_cols: torch.Tensor  # (m,) its column there
    copy_positions: torch.Tensor  # (m,) the copied positions


class _PrefixPlan:
    """Which prompt computes which prompt positions, so that shared prefixes run once.

    The distinct prompts (by their real tokens) are sorted; each computes the positions from
    its longest common prefix with the previous one, and takes the keys and values before it
    from the prompt that computed them (the keys and values at a position depend only on the
    tokens up to it). Sorted order makes that prefix the longest shared with any earlier
    prompt, so every position of the prompt trie is computed exactly once.
    """

    def __init__(self, ids: torch.Tensor, prompt_lengths: torch.Tensor):
        width = ids.shape[1]
        rows = [tuple(r[width - n :]) for r, n in zip(ids.tolist(), prompt_lengths.tolist())]
        self.prompts = sorted(set(rows))
        index = {p: u for u, p in enumerate(self.prompts)}
        self.inverse = torch.tensor([index[p] for p in rows])
        self.count = len(self.prompts)
        self.pads = torch.tensor([width - len(p) for p in self.prompts])
        self.starts: list[int] = []
        self.owners: list[np.ndarray] = []  # owner prompt of each position
        previous: tuple[int, ...] = ()
        for u, p in enumerate(self.prompts):
            start = _common_prefix(previous, p)
            owner = np.full(len(p), u, dtype=np.int64)
            if start:
                owner[:start] = self.owners[-1][:start]
            self.starts.append(start)
            self.owners.append(owner)
            previous = p

    def common_prefix(self) -> int:
        """Length of the prefix all the distinct prompts share (sorted, the least of the
        neighbours' common prefixes)."""
        return min(self.starts[1:]) if self.count > 1 else len(self.prompts[0])

    def computed_tokens(self) -> int:
        """Prompt positions the prefill computes (the size of the prompt trie)."""
        return sum(len(p) - s for p, s in zip(self.prompts, self.starts))

    def passes(self, tokens_per_pass: int | None = None):
        """Consecutive prompts in passes of about ``tokens_per_pass`` own tokens (default
        ``PREFILL_TOKENS_PER_PASS``, read at call time)."""
        tokens_per_pass = tokens_per_pass or PREFILL_TOKENS_PER_PASS
        first, budget = 0, 0
        for u, (p, start) in enumerate(zip(self.prompts, self.starts)):
            budget += len(p) - start
            if budget >= tokens_per_pass or u == self.count - 1:
                yield self._pass(first, u + 1)
                first, budget = u + 1, 0

    def _pass(self, first: int, stop: int) -> _PrefixPass:
        prompts = range(first, stop)
        own = [len(self.prompts[u]) - self.starts[u] for u in prompts]
        positions = np.concatenate(
            [np.arange(self.starts[u], len(self.prompts[u])) for u in prompts]
        )
        own_rows = np.repeat(np.arange(first, stop), own)
        pads = self.pads[first:stop].numpy()
        tokens = np.concatenate([self.prompts[u][self.starts[u] :] for u in prompts])
        copy_rows = np.repeat(np.arange(first, stop), [self.starts[u] for u in prompts])
        copy_cols = np.concatenate([np.arange(self.starts[u]) for u in prompts])
        copy_src = np.concatenate([self.owners[u][: self.starts[u]] for u in prompts])
        pad_of = self.pads.numpy()
        tensor = torch.from_numpy
        return _PrefixPass(
            first=first,
            stop=stop,
            tokens=tensor(tokens.astype(np.int64)),
            positions=tensor(positions),
            own_rows=tensor(own_rows),
            own_cols=tensor(positions + pad_of[own_rows]),
            slots=tensor(positions - np.asarray(self.starts)[own_rows]),
            starts=torch.tensor(self.starts[first:stop]),
            pads=tensor(pads.copy()),
            last=tensor(np.cumsum(own) - 1),
            max_own=max(own),
            copy_rows=tensor(copy_rows),
            copy_dst_cols=tensor(copy_cols + pad_of[copy_rows]),
            copy_src_rows=tensor(copy_src),
            copy_cols=tensor(copy_cols + pad_of[copy_src]),
            copy_positions=tensor(copy_cols),
        )


class _Projections:
    """Every layer's query, key and value projections as one GEMM (their weights concatenated
    and transposed once per ``generate`` call, shared by the worker streams), and layer 0's as
    a table indexed by token when the vocabulary is small.

    Layer 0's input is the normed embedding of the token, so its projections are a function of
    the token alone: on CPU, with a vocabulary of ``TABLE_MAX_VOCAB`` tokens or fewer (the maze
    models'), they are computed once per token id and looked up.
    """

    @torch.no_grad()
    def __init__(self, model):
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
        table_max = TABLE_MAX_VOCAB if embed.device.type == "cpu" else TABLE_MAX_VOCAB_GPU
        if embed.shape[0] <= table_max:
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


def _one_cache_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores of queries ``q`` (rows, kv_heads, group, dim) against one cache's ``keys``
    (kv_heads, time, dim) that all the rows read: one GEMM per kv head over all their
    queries. Returns (rows, kv_heads, group, time)."""
    rows, n_kv, group, dim = q.shape
    scores = torch.matmul(q.transpose(0, 1).reshape(n_kv, rows * group, dim), keys.mT)
    return scores.view(n_kv, rows, group, -1).transpose(0, 1)


def _one_cache_output(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention output of ``weights`` (rows, kv_heads, group, time) over one cache's
    ``values`` (kv_heads, time, dim): one GEMM per kv head. Returns (rows, kv_heads, group,
    dim)."""
    rows, n_kv, group, time = weights.shape
    out = torch.matmul(weights.transpose(0, 1).reshape(n_kv, rows * group, time), values)
    return out.view(n_kv, rows, group, -1).transpose(0, 1)


class _DecoderRunner:
    """Qwen2/Llama decoder stack over preallocated K/V buffers, using the model's own modules.

    Keys and values are stored (batch, kv_heads, time, head_dim). Decode attention takes the
    scores as one batched GEMM ``K @ q^T`` per layer (the orientation MKL runs fastest for a
    (time x head_dim) by (head_dim x group) product), and on CPU the output as an
    ``embedding_bag`` weighted sum of each row's filled value rows, which streams the cache
    faster than a batched GEMM does (docs/rollout.md).
    """

    def __init__(self, model, max_new_tokens: int, projections: _Projections | None = None):
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = model.lm_head
        attn = self.layers[0].self_attn
        self.apply_rope = inspect.getmodule(type(attn)).apply_rotary_pos_emb
        self.head_dim = attn.head_dim
        self.n_heads = attn.q_proj.out_features // self.head_dim
        self.n_kv = attn.k_proj.out_features // self.head_dim
        self.scaling = attn.scaling
        self.max_new_tokens = max_new_tokens
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.q_width = self.n_heads * self.head_dim
        self.kv_width = self.n_kv * self.head_dim
        self.projections = projections or _Projections(model)
        # On CPU, fp32 decode attention beats bf16 (bf16 batched GEMMs copy strided operands),
        # so a bf16 model's keys and values are cached as exact fp32 upcasts
        self.on_cpu = self.device.type == "cpu"
        self.cache_dtype = torch.float32 if self.on_cpu else self.dtype
        self.by_rows = self.on_cpu and VALUE_SUMS_BY_ROWS

    def _finish_layer(self, layer, h, attn_out):
        h = h + layer.self_attn.o_proj(attn_out)
        mlp = layer.mlp
        x = layer.post_attention_layernorm(h)
        # down(act(gate(x)) * up(x)), the product taken in place
        return h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)).mul_(mlp.up_proj(x)))

    def _buffers(self, batch: int, total: int) -> tuple[list, list]:
        k_shape = (batch, self.n_kv, total, self.head_dim)
        v_shape = (batch, self.n_kv, total, self.head_dim)
        new = partial(torch.empty, dtype=self.cache_dtype, device=self.device)
        return [new(k_shape) for _ in self.layers], [new(v_shape) for _ in self.layers]

    def _pad_bias(self, pad_cols: torch.Tensor, total: int) -> torch.Tensor:
        """(rows, 1, 1, total) additive attention bias that hides each row's left padding."""
        cols = torch.arange(total, device=self.device)
        bias = torch.zeros((len(pad_cols), 1, 1, total), dtype=self.cache_dtype, device=self.device)
        return bias.masked_fill_(cols < pad_cols[:, None, None, None], float("-inf"))

    def prefill(self, ids: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
        """Cache the left-padded prompts; return the last position's logits.

        Distinct prompts are prefilled once each, and a prefix they share with another prompt
        is computed once (``_PrefixPlan``). When each distinct prompt is repeated at least
        ``MIN_ROWS_PER_SHARED_PROMPT`` times on average (``MIN_ROWS_PER_SHARED_PROMPT_GPU``
        off CPU), its keys and values are also kept once ("shared" mode): decode attention
        then reads the prompt part with one GEMM per prompt instead of once per row, and only
        the generated part is cached per row. Otherwise each row gets its own copy of its
        prompt's cache, less the prefix all the prompts share when it has at least
        ``MIN_COMMON_PREFIX`` tokens (``MIN_COMMON_PREFIX_GPU`` off CPU): that is cached once
        (``prefix_keys``/``prefix_values``, positions ``0 ... prefix - 1``), and each row's
        cache holds its left padding, the rest of its prompt and its generated tokens.
        """
        batch, width = ids.shape
        self.positions = prompt_lengths.clone()
        self.padded = bool((prompt_lengths < width).any())
        plan = _PrefixPlan(ids, prompt_lengths)
        inverse = plan.inverse.to(self.device)
        least_rows = MIN_ROWS_PER_SHARED_PROMPT if self.on_cpu else MIN_ROWS_PER_SHARED_PROMPT_GPU
        self.shared = batch >= least_rows * plan.count
        self.prefix = 0
        # the passes write each distinct prompt's keys and values straight into the cache
        # row that decodes it first (``row_of``); repeats are copied from it afterwards
        if self.shared:
            self.prompt_keys, self.prompt_values = self._buffers(plan.count, width)
            self.keys, self.values = self._buffers(batch, self.max_new_tokens - 1)
            self.filled = 0
            self.group = inverse
            self._set_members()
            if self.padded:
                self.row_bias = self._pad_bias(plan.pads.to(self.device), width)[inverse]
            target_k, target_v = self.prompt_keys, self.prompt_values
            row_of = torch.arange(plan.count, device=self.device)
        else:
            common = plan.common_prefix()
            least = MIN_COMMON_PREFIX if self.on_cpu else MIN_COMMON_PREFIX_GPU
            self.prefix = common if common >= least else 0
            self.prefix_keys, self.prefix_values = self._buffers(1, self.prefix)
            per_row = width - self.prefix + self.max_new_tokens - 1
            self.keys, self.values = self._buffers(batch, per_row)
            self.filled = width - self.prefix
            if self.padded:  # (the shared prefix's columns come first in the scores)
                bias = self._pad_bias(width - prompt_lengths, per_row)
                self.key_bias = F.pad(bias, (self.prefix, 0))
            target_k, target_v = self.keys, self.values
            rows = torch.arange(batch, device=self.device)
            row_of = torch.full((plan.count,), batch, device=self.device)
            row_of = row_of.scatter_reduce_(0, inverse, rows, "amin")
        if self.padded:  # padding columns are masked, but must hold finite values
            for buffer in (*target_k, *target_v):
                buffer[:, :, : width - self.prefix].zero_()
        logits = torch.cat(
            [
                self._prefill_pass(part, width, target_k, target_v, row_of)
                for part in plan.passes(
                    PREFILL_TOKENS_PER_PASS if self.on_cpu else PREFILL_TOKENS_PER_PASS_GPU
                )
            ]
        )
        if not self.shared:
            repeats = (row_of[inverse] != rows).nonzero()[:, 0]
            if len(repeats):
                sources = row_of[inverse[repeats]]
                prompt = width - self.prefix
                for buffer in (*self.keys, *self.values):
                    buffer[repeats, :, :prompt] = buffer[sources, :, :prompt]
        return logits[inverse]

    def _set_members(self) -> None:
        """Row indices of each shared prompt (empty groups dropped)."""
        order = torch.argsort(self.group, stable=True)
        counts = torch.bincount(self.group).tolist()
        self.members = [(u, rows) for u, rows in enumerate(torch.split(order, counts)) if len(rows)]

    def _prefill_pass(
        self, part, width: int, target_k: list, target_v: list, row_of: torch.Tensor
    ) -> torch.Tensor:
        """Run the prompts ``part.first ... part.stop - 1`` through the model at the positions
        they own, fill all their keys and values in the caches ``target_k``/``target_v``
        (``(rows, kv_heads, time, head_dim)``; prompt ``u`` in row ``row_of[u]``; positions
        owned by earlier prompts are copied) and, for the first ``self.prefix`` positions,
        in the shared prefix cache; return their last logits."""
        dev = self.device
        nb, n_kv, dim = part.stop - part.first, self.n_kv, self.head_dim
        group = self.n_heads // n_kv
        rows = row_of[part.first : part.stop]
        first_row = int(rows[0])
        # the block's cache rows as a slice when they are consecutive (no repeated prompt)
        block = slice(first_row, first_row + nb) if int(rows[-1]) - first_row == nb - 1 else rows
        prefix = self.prefix
        # own positions before ``prefix`` go to the shared prefix cache (only the first
        # prompt owns any); the others (``rest``: all when None) to their row's cache,
        # ``prefix`` columns to the left
        own_rows, own_cols = part.own_rows.to(dev), part.own_cols.to(dev) - prefix
        in_prefix = part.positions < prefix
        rest = None
        if in_prefix.any():
            prefix_at = in_prefix.nonzero()[:, 0].to(dev)
            prefix_positions = part.positions.to(dev)[prefix_at]
            rest = (~in_prefix).nonzero()[:, 0].to(dev)
            own_rows, own_cols = own_rows[rest], own_cols[rest]
        own = (row_of[own_rows], own_cols)
        kept = part.copy_positions >= prefix  # copies within the shared prefix are moot
        copy_dst = (row_of[part.copy_rows[kept].to(dev)], part.copy_dst_cols[kept].to(dev) - prefix)
        copy_src = (row_of[part.copy_src_rows[kept].to(dev)], part.copy_cols[kept].to(dev) - prefix)
        slot = ((part.own_rows - part.first).to(dev), part.slots.to(dev))
        last = part.last.to(dev)
        pads = part.pads.to(dev)
        # a query sees the real keys at positions up to its own: the shared prefix's columns
        # (positions 0 ... prefix - 1), then its row's (column c holds position
        # c - pad + prefix from its first real token on)
        query_positions = part.starts.to(dev)[:, None] + torch.arange(part.max_own, device=dev)
        cols = torch.arange(width - prefix, device=dev)
        key_positions = torch.cat(
            [
                torch.arange(prefix, device=dev).expand(nb, prefix),
                cols - pads[:, None] + prefix,
            ],
            dim=1,
        )
        real = torch.cat(
            [torch.ones((nb, prefix), dtype=torch.bool, device=dev), cols >= pads[:, None]], dim=1
        )
        visible = real[:, None] & (key_positions[:, None] <= query_positions[:, :, None])
        bias = torch.zeros(visible.shape, dtype=self.cache_dtype, device=dev)
        bias = bias.masked_fill_(~visible, float("-inf"))[:, None, None]  # (nb, 1, 1, q, width)
        last_bias = bias[:, :, :, -1]  # the last query column sees the whole prompt

        tokens = part.tokens.to(dev)
        h = self.embed(tokens)[None]
        cos, sin = self.rotary(h, part.positions.to(dev)[None])
        final = len(self.layers) - 1
        nq, nk, n = self.q_width, self.kv_width, len(tokens)
        for i, (layer, cache_k, cache_v) in enumerate(zip(self.layers, target_k, target_v)):
            if i == final:
                # the last layer's output is needed only at each prompt's last position (for
                # the first logits); at the others only its keys and values are
                kv = self.projections(i, h[0], tokens, slice(nq, None))
                k = kv[:, :nk].view(1, n, n_kv, dim).transpose(1, 2)
                v = kv[:, nk:]
                q = self.projections(i, h[0, last], tokens[last], slice(None, nq))
                q = q.view(nb, self.n_heads, 1, dim)
                q, _ = self.apply_rope(q, q, cos[0, last, None], sin[0, last, None])
                _, k = self.apply_rope(k, k, cos, sin)
            else:
                qkv = self.projections(i, h[0], tokens)
                q = qkv[:, :nq].view(1, n, self.n_heads, dim).transpose(1, 2)
                k = qkv[:, nq : nq + nk].view(1, n, n_kv, dim).transpose(1, 2)
                v = qkv[:, nq + nk :]
                q, k = self.apply_rope(q, k, cos, sin)
            # (rows, time, kv_heads, dim) views: a (row, column) index moves whole positions
            by_col_k, by_col_v = cache_k.transpose(1, 2), cache_v.transpose(1, 2)
            k_by_token = k[0].transpose(0, 1).to(self.cache_dtype)  # (n, kv, dim)
            v_by_token = v.view(n, n_kv, dim).to(self.cache_dtype)
            if rest is not None:
                shared_k, shared_v = self.prefix_keys[i][0], self.prefix_values[i][0]
                shared_k[:, prefix_positions] = k_by_token[prefix_at].transpose(0, 1)
                shared_v[:, prefix_positions] = v_by_token[prefix_at].transpose(0, 1)
                k_by_token, v_by_token = k_by_token[rest], v_by_token[rest]
            by_col_k.index_put_(own, k_by_token)
            by_col_v.index_put_(own, v_by_token)
            if len(copy_dst[0]):
                by_col_k.index_put_(copy_dst, by_col_k[copy_src])
                by_col_v.index_put_(copy_dst, by_col_v[copy_src])
            keys = cache_k[block, :, : width - prefix]  # (nb, kv, w, d)
            values = cache_v[block, :, : width - prefix]
            if prefix:
                shape = (nb, n_kv, prefix, dim)
                keys = torch.cat([self.prefix_keys[i].expand(shape), keys], dim=2)
                values = torch.cat([self.prefix_values[i].expand(shape), values], dim=2)
            keys = keys.transpose(-1, -2)  # (nb, kv, d, w)
            if i == final:
                q = q.view(nb, n_kv, group, dim).to(self.cache_dtype)
                scores = torch.matmul(q, keys).mul_(self.scaling).add_(last_bias)
                out = torch.matmul(scores.softmax(-1), values)  # (nb, kv, group, dim)
                out = out.reshape(1, nb, -1).to(self.dtype)
                h = h[:, last]
            else:
                # queries padded to (nb, q, heads, dim); head h reads kv head h // group
                padded_q = q.new_zeros((nb, part.max_own, self.n_heads, dim))
                padded_q[slot] = q[0].transpose(0, 1)
                padded_q = padded_q.view(nb, part.max_own, n_kv, group, dim).permute(0, 2, 3, 1, 4)
                scores = torch.matmul(padded_q.to(self.cache_dtype), keys[:, :, None])
                scores = scores.mul_(self.scaling).add_(bias)  # (nb, kv, group, q, width)
                out = torch.matmul(scores.softmax(-1), values[:, :, None])
                out = out.permute(0, 3, 1, 2, 4)[slot].reshape(1, n, -1).to(self.dtype)
            h = self._finish_layer(layer, h, out)
        return self.lm_head(self.norm(h[0]))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; return the next logits (b, vocab)."""
        batch = tokens.shape[0]
        col = self.filled
        h = self.embed(tokens)
        cos, sin = self.rotary(h[:, None], self.positions[:, None])
        group = self.n_heads // self.n_kv
        nq, nk = self.q_width, self.kv_width
        attend = self._shared_attention if self.shared else self._own_attention
        if self.by_rows and not self.shared:
            self._value_rows = self._value_bags(batch, col + 1)
        for i, layer in enumerate(self.layers):
            qkv = self.projections(i, h, tokens)
            q = qkv[:, :nq].view(batch, self.n_heads, 1, self.head_dim)
            k = qkv[:, nq : nq + nk].view(batch, self.n_kv, 1, self.head_dim)
            q, k = self.apply_rope(q, k, cos, sin)
            self.keys[i][:, :, col] = k[:, :, 0]
            self.values[i][:, :, col] = qkv[:, nq + nk :].view(batch, self.n_kv, self.head_dim)
            q = q.reshape(batch, self.n_kv, group, self.head_dim).to(self.cache_dtype)
            out = attend(i, q).reshape(batch, -1).to(self.dtype)
            h = self._finish_layer(layer, h, out)
        self.filled += 1
        self.positions += 1
        return self.lm_head(self.norm(h))

    def _value_bags(self, batch: int, filled: int) -> torch.Tensor:
        """(batch * kv_heads * group, filled) indices into a value cache viewed as rows of
        head_dim: for each query head, the filled rows of its row's kv head."""
        group = self.n_heads // self.n_kv
        total = self.values[0].shape[2]
        slabs = torch.arange(batch * self.n_kv, device=self.device) * total
        return slabs.repeat_interleave(group)[:, None] + torch.arange(filled, device=self.device)

    def _own_attention(self, i: int, q: torch.Tensor) -> torch.Tensor:
        """Attention over each row's own cache; q and the result are (b, kv_heads, group, dim).

        Grouped-query attention without repeating K/V: one small GEMM per (row, kv head) for
        the scores; on CPU the output is one ``embedding_bag`` over the value rows, elsewhere a
        batched matmul. A prefix shared by all rows (``self.prefix`` positions) is one GEMM
        per kv head over all the rows' queries, for the scores and for the output; one
        softmax spans both parts."""
        batch, n_kv, group, dim = q.shape
        end = self.filled + 1
        prefix = self.prefix
        values = self.values[i]
        scores = torch.matmul(self.keys[i][:, :, :end], q.transpose(-1, -2)).transpose(-1, -2)
        if prefix:
            shared = _one_cache_scores(q, self.prefix_keys[i][0])
            scores = torch.cat([shared, scores], dim=-1)
        scores.mul_(self.scaling)
        if self.padded:
            scores.add_(self.key_bias[..., : prefix + end])
        weights = scores.softmax(dim=-1)
        own_weights = weights[..., prefix:]
        if self.by_rows:
            out = F.embedding_bag(
                self._value_rows,
                values.view(-1, dim),
                per_sample_weights=own_weights.reshape(-1, end),
                mode="sum",
            ).view(batch, n_kv, group, dim)
        else:
            out = torch.matmul(own_weights, values[:, :, :end])
        if prefix:
            out += _one_cache_output(weights[..., :prefix], self.prefix_values[i][0])
        return out

    def _shared_attention(self, i: int, q: torch.Tensor) -> torch.Tensor:
        """Attention over a shared prompt cache plus each row's generated tokens.

        One softmax over the concatenated scores, so the result equals attention over the
        row's full (prompt + generated) cache; only the products are split. q and the result
        are (b, kv_heads, group, dim).
        """
        batch, n_kv, group, dim = q.shape
        end = self.filled + 1
        prompt_k, prompt_v = self.prompt_keys[i], self.prompt_values[i]
        width = prompt_k.shape[2]
        own = torch.matmul(q, self.keys[i][:, :, :end].transpose(-1, -2))
        prompt = torch.empty((batch, n_kv, group, width), dtype=q.dtype, device=q.device)
        for u, rows in self.members:  # all queries of one prompt's rows against its keys
            prompt.index_copy_(0, rows, _one_cache_scores(q[rows], prompt_k[u]))
        scores = torch.cat([prompt, own], dim=-1).mul_(self.scaling)
        if self.padded:
            scores[..., :width] += self.row_bias
        weights = scores.softmax(dim=-1)
        out = torch.matmul(weights[..., width:], self.values[i][:, :, :end])
        for u, rows in self.members:
            out.index_add_(0, rows, _one_cache_output(weights[rows, ..., :width], prompt_v[u]))
        return out

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index``."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.positions = self.positions[index]
        if self.shared:
            self.group = self.group[index]
            self._set_members()
            if self.padded:
                self.row_bias = self.row_bias[index]
        elif self.padded:
            self.key_bias = self.key_bias[index]


class _ModelForwardRunner:
    """Any HF causal LM: its own ``forward`` with its default ``DynamicCache``.

    transformers' ``StaticCache`` was measured slower here: its attention always spans the
    whole preallocated length (docs/rollout.md).
    """

    def __init__(self, model, max_new_tokens: int):
        self.model = model
        self.max_new_tokens = max_new_tokens

    def prefill(self, ids: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
        width = ids.shape[1]
        cols = torch.arange(width + self.max_new_tokens - 1, device=ids.device)
        pad_cols = (width - prompt_lengths)[:, None]
        self.mask = (cols[None, :] >= pad_cols).long()
        self.positions = prompt_lengths.clone()
        self.filled = width
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask[:, :width],
            position_ids=(cols[None, :width] - pad_cols).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.filled += 1
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask[:, : self.filled],
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.positions += 1
        return out.logits[:, -1]

    def select(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.positions = self.positions[index]


def _split_by_work(prompts: list[list[int]], parts: int, new_tokens: int) -> list[int]:
    """Bounds of ``parts`` consecutive slices of the sorted ``prompts`` with about equal
    forward work each: ``new_tokens`` per row plus the prompt positions a row does not share
    with the row before it (what the prefix-shared prefill computes). Equal row counts would
    leave the stream with the less shared half of the prompts working alone at the end."""
    work = np.cumsum(
        [len(p) - _common_prefix(p, q) + new_tokens for p, q in zip(prompts, [[], *prompts])]
    )
    bounds = [0]
    for i in range(1, parts):
        target = work[-1] * i / parts
        cut = int(np.searchsorted(work, target))  # rows [0, cut] reach the target
        if cut > 0 and target - work[cut - 1] < work[cut] - target:
            cut -= 1  # stopping one row short is nearer
        bounds.append(min(max(cut + 1, bounds[-1] + 1), len(prompts) - (parts - i)))
    return [*bounds, len(prompts)]


class KVCacheSampler:
    """Batched sampling for HF causal LMs with a KV cache: preallocated buffers on the
    Qwen2/Llama fast path, the model's own ``DynamicCache`` otherwise.

    Args:
        max_batch_size: most prompts one worker decodes together; its share of a larger request
            runs in consecutive chunks (bounds the cache memory: 2 * layers * kv_heads *
            head_dim * (prompt + max_new_tokens) values per row, 4-byte on CPU). None = no
            limit.
        workers: parallel decode streams on a CPU model, each a Python thread that decodes a
            contiguous slice of the batch with one intra-op thread. Independent streams scale
            over cores better than one stream with intra-op threads, and degrade gracefully on
            a shared machine (docs/rollout.md). None = ``torch.get_num_threads()`` on CPU
            (fewer when a stream would get under ``MIN_ROWS_PER_WORKER`` rows), 1 elsewhere.
        fast_path: use the direct decoder runner where the model supports it (Qwen2, Llama);
            False forces the generic path, the model's own ``forward`` with its ``DynamicCache``
            (same distribution, its own draws).
        compact_below: once the fraction of unfinished rows falls to this value, finished rows
            are removed from the cache; 0 disables it.

    Samples are a deterministic function of the generator's state, ``workers``,
    ``max_batch_size`` and ``compact_below``: each stream draws from its own generator seeded
    from ``generator`` (or from the global RNG when it is None).
    """

    def __init__(
        self,
        max_batch_size: int | None = None,
        workers: int | None = None,
        fast_path: bool = True,
        compact_below: float = 0.75,
    ):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None; got {max_batch_size!r}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1 or None; got {workers!r}")
        if not 0 <= compact_below <= 1:
            raise ValueError(f"compact_below must be in [0, 1]; got {compact_below!r}")
        self.max_batch_size = max_batch_size
        self.workers = workers
        self.fast_path = fast_path
        self.compact_below = compact_below

    def generate(
        self,
        model,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        *,
        pad_token_id: int,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        check_prompts(prompt_ids)
        # plain int lists: rows are sorted by prompt, and tuples, tensors and arrays don't compare
        prompt_ids = [
            p.tolist() if hasattr(p, "tolist") else [int(t) for t in p] for p in prompt_ids
        ]
        batch = len(prompt_ids)
        out = empty_rollouts(batch, params, pad_token_id)
        device = next(model.parameters()).device
        workers = self.workers
        if workers is None:
            cores = torch.get_num_threads() if device.type == "cpu" else 1
            workers = max(1, min(cores, batch // MIN_ROWS_PER_WORKER))
        if _rope_type(model) in ("dynamic", "longrope"):
            workers = 1  # these rotary embeddings rewrite their frequencies during forward
        workers = min(workers, batch)
        seeds = torch.randint(2**62, (workers,), generator=generator).tolist()
        # rows in prompt order: shared prefixes and repeats of a prompt land in one stream and
        # one chunk, where the prefill computes them once
        order = sorted(range(batch), key=prompt_ids.__getitem__)
        bounds = _split_by_work([prompt_ids[r] for r in order], workers, params.max_new_tokens)
        order = torch.tensor(order, dtype=torch.long)
        parts = [
            (order[bounds[i] : bounds[i + 1]], torch.Generator(device).manual_seed(seeds[i]))
            for i in range(workers)
        ]
        make_runner = _ModelForwardRunner
        if self.fast_path and supports_fast_path(model):
            make_runner = partial(_DecoderRunner, projections=_Projections(model))

        def run(rows: torch.Tensor, part_generator: torch.Generator, threads: int | None) -> None:
            if threads is not None:
                # per-thread OpenMP setting: the caller's own thread count is left untouched
                torch.set_num_threads(threads)
            chunk = self.max_batch_size or len(rows)
            with torch.inference_mode():
                for chunk_rows in torch.split(rows, chunk):
                    chunk_prompts = [prompt_ids[r] for r in chunk_rows.tolist()]
                    ids, lengths = left_pad(chunk_prompts, pad_token_id, device)
                    runner = make_runner(model, params.max_new_tokens)
                    self._decode(runner, ids, lengths, params, part_generator, out, chunk_rows)

        was_training = model.training
        model.eval()
        try:
            if workers == 1:
                run(*parts[0], threads=None)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    futures = [pool.submit(run, *part, threads=1) for part in parts]
                    for future in futures:
                        future.result()
        finally:
            model.train(was_training)
        return out

    def _decode(self, runner, ids, prompt_lengths, params, generator, out, rows):
        """The sampling loop shared by both runners; writes rows ``rows`` of ``out``."""
        batch = ids.shape[0]
        out.lengths[rows] = params.max_new_tokens
        out.truncated[rows] = True
        stops = torch.tensor(params.stop_token_ids, dtype=torch.long)
        alive = torch.ones(batch, dtype=torch.bool)
        logits = runner.prefill(ids, prompt_lengths)
        for t in range(params.max_new_tokens):
            tokens, logprobs = select_tokens(logits, params, generator)
            tokens_cpu, logprobs_cpu = tokens.cpu(), logprobs.cpu()
            live = rows[alive]
            out.tokens[live, t] = tokens_cpu[alive]
            out.logprobs[live, t] = logprobs_cpu[alive]
            if len(stops):
                stopped = alive & torch.isin(tokens_cpu, stops)
                out.lengths[rows[stopped]] = t + 1
                out.truncated[rows[stopped]] = False
                alive &= ~stopped
            if t == params.max_new_tokens - 1 or not alive.any():
                break
            if alive.sum() <= self.compact_below * len(alive):
                keep = alive.nonzero().squeeze(1)
                runner.select(keep.to(ids.device))
                rows, alive, tokens = rows[keep], alive[keep], tokens[keep.to(tokens.device)]
            logits = runner.step(tokens)
