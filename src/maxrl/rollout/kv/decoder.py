"""The fast runner: a Qwen2/Llama decoder stack over preallocated key/value buffers.

It runs the model's own modules (norms, projections, MLP, rotary embedding and
``apply_rotary_pos_emb`` from the model's module) layer by layer. Over the model's ``forward``
it saves: the cache concatenation and 4D mask building of every step, the last layer's work at
prompt positions other than the last (only its keys and values are needed there), the prefill
and the cache of a prompt that several rows decode (prefilled once, its cache shared by its
rollouts), and it runs grouped-query attention without repeating K/V, in the operand layout MKL
is fast on. See docs/rollout.md for the measurements behind each choice.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
import torch.nn.functional as F

from .plan import PrefixPlan
from .projections import Linears, Projections, one_cache_output, one_cache_scores
from .settings import KVSettings

# The shared-prompt decode attention reads all prompts' caches in one batched GEMM over a
# (prompts, most rows of one prompt) grid while the grid has at most GRID_WASTE places per live
# row and no prompt more than ``KVSettings.prompt_grid_max_rows`` rows; otherwise one GEMM per
# prompt. On an AMD EPYC, against one GEMM per prompt as :meth:`DecoderRunner._by_prompt` runs
# it, on the main job's rollouts (benchmarks/rollout_grid.py): 1.16x in two decode streams (the
# default, 8 rows of a prompt per stream), 1.04x in one; 1.097x against the earlier per-prompt
# loop (an index_add_ per prompt; benchmarks/rollout.py --ablations at 16 x 16). The 1.5 and the
# 64-row limit come from one-off timings.
GRID_WASTE = 1.5


class DecoderRunner:
    """Qwen2/Llama decoder stack over preallocated K/V buffers, using the model's own modules.

    Keys and values are stored (batch, kv_heads, time, head_dim). Decode attention takes the
    scores as one batched GEMM ``K @ q^T`` per layer (the orientation MKL runs fastest for a
    (time x head_dim) by (head_dim x group) product), and on CPU the output as an
    ``embedding_bag`` weighted sum of each row's filled value rows, which streams the cache
    faster than a batched GEMM does (docs/rollout.md).
    """

    def __init__(
        self,
        model,
        max_new_tokens: int,
        settings: KVSettings,
        projections: Projections | None = None,
        linears: Linears | None = None,
    ):
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
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
        self.settings = settings
        self.projections = projections or Projections(model, settings.table_max_vocab)
        # the layers after attention; bf16 copies on a float32 model under
        # ``KVCacheSampler(precision="bfloat16")``, with ``projections`` in bf16 too
        self.linears = linears or Linears(model)
        # On CPU, fp32 decode attention beats bf16 (bf16 batched GEMMs copy strided operands),
        # so a bf16 model's keys and values are cached as exact fp32 upcasts
        self.on_cpu = self.device.type == "cpu"
        self.cache_dtype = torch.float32 if self.on_cpu else self.dtype
        self.by_rows = settings.value_sums_by_rows

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

    def prefill(
        self, ids: torch.Tensor, prompt_lengths: torch.Tensor, rows_of: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cache the left-padded prompts ``ids`` (prompts, width); return the last position's
        logits of every row. Row ``r`` of the batch decodes prompt ``rows_of[r]`` (default: one
        row per prompt), so a prompt's N rollouts are N rows of one prompt.

        Distinct prompts are prefilled once each, and a prefix they share with another prompt
        is computed once (``PrefixPlan``). When each distinct prompt is decoded by at least
        ``settings.min_rows_per_shared_prompt`` rows on average, its keys and values are also
        kept once ("shared" mode): decode attention then reads the prompt part with one GEMM per prompt instead of once per row, and only
        the generated part is cached per row. Otherwise each row gets its own copy of its
        prompt's cache, less the prefix all the prompts share when it has at least
        ``settings.min_common_prefix`` tokens: that is cached once
        (``prefix_keys``/``prefix_values``, positions ``0 ... prefix - 1``), and each row's
        cache holds its left padding, the rest of its prompt and its generated tokens.
        """
        width = ids.shape[1]
        if rows_of is None:
            rows_of = torch.arange(len(ids), device=self.device)
        batch = len(rows_of)
        row_lengths = prompt_lengths[rows_of]
        self.positions = row_lengths.clone()
        self.padded = bool((prompt_lengths < width).any())
        plan = PrefixPlan(ids, prompt_lengths)
        inverse = plan.inverse.to(self.device)[rows_of]
        settings = self.settings
        self.shared = batch >= settings.min_rows_per_shared_prompt * plan.count
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
            common = plan.common_length()
            self.prefix = common if common >= settings.min_common_prefix else 0
            self.prefix_keys, self.prefix_values = self._buffers(1, self.prefix)
            per_row = width - self.prefix + self.max_new_tokens - 1
            self.keys, self.values = self._buffers(batch, per_row)
            self.filled = width - self.prefix
            if self.padded:  # (the shared prefix's columns come first in the scores)
                bias = self._pad_bias(width - row_lengths, per_row)
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
                for part in plan.passes(settings.prefill_tokens_per_pass)
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
        """How decode attention reads the shared prompts' caches for the rows now in the batch.

        Small, even groups: a (prompts, most rows of one prompt) grid for one batched GEMM,
        ``member_slots`` holding the row at each place (row 0 where a prompt has fewer rows, a
        place whose result is not read) and ``member_pos`` each row's flat place; ``members``
        is None. Otherwise (large groups, or uneven once rows finish, when the grid's empty
        places cost more than a GEMM per prompt saves) ``members``: each prompt's rows, one
        GEMM per prompt (empty groups dropped)."""
        count = self.prompt_keys[0].shape[0]
        counts = torch.bincount(self.group, minlength=count)
        most = max(int(counts.max()), 1)
        order = torch.argsort(self.group, stable=True)
        batch = len(order)
        if count * most > GRID_WASTE * batch or most > self.settings.prompt_grid_max_rows:
            split = torch.split(order, counts.tolist())
            self.members = [(u, rows) for u, rows in enumerate(split) if len(rows)]
            return
        self.members = None
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(batch, device=order.device) - starts[self.group[order]]
        self.member_pos = self.group * most + rank
        slots = torch.zeros(count * most, dtype=torch.long, device=order.device)
        slots[self.member_pos] = torch.arange(batch, device=order.device)
        self.member_slots = slots.view(count, most)

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
            h = self.linears.finish_layer(i, layer, h, out)
        return self.linears.logits(self.norm(h[0]))

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
            h = self.linears.finish_layer(i, layer, h, out)
        self.filled += 1
        self.positions += 1
        return self.linears.logits(self.norm(h))

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
            shared = one_cache_scores(q, self.prefix_keys[i][0])
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
            out += one_cache_output(weights[..., :prefix], self.prefix_values[i][0])
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
        # all queries of one prompt's rows against its keys
        prompt = self._by_prompt(q, prompt_k.mT)
        scores = torch.cat([prompt, own], dim=-1).mul_(self.scaling)
        if self.padded:
            scores[..., :width] += self.row_bias
        weights = scores.softmax(dim=-1)
        out = torch.matmul(weights[..., width:], self.values[i][:, :, :end])
        return out.add_(self._by_prompt(weights[..., :width], prompt_v))

    def _by_prompt(self, x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """``x`` (rows, kv_heads, group, a) times each row's prompt ``cache`` (prompts, kv_heads,
        a, b), (rows, kv, group, b): one GEMM per (prompt, kv head) over all that prompt's rows,
        all prompts in one batched GEMM over the grid of rows or one after another
        (:meth:`_set_members`)."""
        rows, n_kv, group, _ = x.shape
        if self.members is not None:
            out = x.new_empty((rows, n_kv, group, cache.shape[-1]))
            for u, members in self.members:
                out.index_copy_(0, members, one_cache_output(x[members], cache[u]))
            return out
        count, most = self.member_slots.shape
        grid = x[self.member_slots.view(-1)].view(count, most, n_kv, group, -1)
        grid = grid.transpose(1, 2).reshape(count, n_kv, most * group, -1)
        out = torch.matmul(grid, cache).view(count, n_kv, most, group, -1).transpose(1, 2)
        return out.reshape(count * most, n_kv, group, -1)[self.member_pos]

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
