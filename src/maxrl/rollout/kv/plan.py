"""Planning a kv batch: which prompt computes which prompt positions, and which rows each
stream decodes.

The prefill computes every position of the prompt trie once (:class:`PrefixPlan`): distinct
prompts are sorted, and each computes only the positions after its longest common prefix with
the previous one, copying the keys and values before it. Streams (:func:`split_by_work`) get
consecutive slices of the sorted rows with equal forward work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PrefixPass:
    """One prefill pass over consecutive prompts ``first ... stop - 1`` of a ``PrefixPlan``.

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


class PrefixPlan:
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
            start = common_prefix(previous, p)
            owner = np.full(len(p), u, dtype=np.int64)
            if start:
                owner[:start] = self.owners[-1][:start]
            self.starts.append(start)
            self.owners.append(owner)
            previous = p

    def common_length(self) -> int:
        """Length of the prefix all the distinct prompts share (sorted, the least of the
        neighbours' common prefixes)."""
        return min(self.starts[1:]) if self.count > 1 else len(self.prompts[0])

    def computed_tokens(self) -> int:
        """Prompt positions the prefill computes (the size of the prompt trie)."""
        return sum(len(p) - s for p, s in zip(self.prompts, self.starts))

    def passes(self, tokens_per_pass: int):
        """Consecutive prompts in passes of about ``tokens_per_pass`` own tokens."""
        first, budget = 0, 0
        for u, (p, start) in enumerate(zip(self.prompts, self.starts)):
            budget += len(p) - start
            if budget >= tokens_per_pass or u == self.count - 1:
                yield self._pass(first, u + 1)
                first, budget = u + 1, 0

    def _pass(self, first: int, stop: int) -> PrefixPass:
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
        return PrefixPass(
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


def split_by_work(prompts: list[list[int]], parts: int, new_tokens: int) -> list[int]:
    """Bounds of ``parts`` consecutive slices of the sorted ``prompts`` with about equal
    forward work each: ``new_tokens`` per row plus the prompt positions a row does not share
    with the row before it (what the prefix-shared prefill computes). Equal row counts would
    leave the stream with the less shared half of the prompts working alone at the end."""
    work = np.cumsum(
        [len(p) - common_prefix(p, q) + new_tokens for p, q in zip(prompts, [[], *prompts])]
    )
    bounds = [0]
    for i in range(1, parts):
        target = work[-1] * i / parts
        cut = int(np.searchsorted(work, target))  # rows [0, cut] reach the target
        if cut > 0 and target - work[cut - 1] < work[cut] - target:
            cut -= 1  # stopping one row short is nearer
        bounds.append(min(max(cut + 1, bounds[-1] + 1), len(prompts) - (parts - i)))
    return [*bounds, len(prompts)]
