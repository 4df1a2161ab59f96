"""The kv sampler's tuning, one frozen object per device kind.

Each field was set by a measurement (``benchmarks/rollout.py --ablations``, and with
``--device cuda`` on a GPU; docs/rollout.md has the figures). On a GPU a small model's decode is
bound by kernel launches and host work, not by memory traffic, so the settings differ there:
few large prefill passes; no token table and no common prefix cached once, each of which adds
launches per step; and no shared mode, whose attention loops over prompts in Python.

Tests and benchmarks pass a modified copy (``dataclasses.replace(CPU, ...)``) to
``KVCacheSampler(settings=...)`` instead of patching globals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# a value no batch reaches: turns a size-triggered mode off
NEVER = 10**9


@dataclass(frozen=True)
class KVSettings:
    """Thresholds and sizes of the kv sampler's hot paths.

    Attributes:
        min_rows_per_worker: below this many rows per stream, splitting the batch over cores
            costs more than it gains.
        min_rows_per_shared_prompt: mean rollouts per distinct prompt from which prompts' caches
            are shared rather than copied ("shared" mode); below it the per-prompt loop in
            shared attention costs more than the reads it saves.
        prefill_tokens_per_pass: computed tokens per prefill pass; on CPU its activations stay in
            cache and its GEMMs run near the one-core peak.
        table_max_vocab: layer 0's q/k/v projections are looked up by token id for vocabularies
            up to this size (0 = never).
        value_sums_by_rows: decode attention's output is an ``embedding_bag`` sum over value
            rows (a CPU kernel that streams the cache faster); False: a batched matmul.
        min_common_prefix: a prefix of at least this many tokens that all of a stream's distinct
            prompts share (a chat template and system prompt, few-shot examples, a maze's
            border) is cached once for all its rows, and decode attention reads it with one
            GEMM per kv head instead of once per row.
        prompt_grid_max_rows: in shared mode, while no prompt has more than this many live
            rows (and the rows are even enough, ``decoder.GRID_WASTE``), decode attention
            reads every prompt's cache in one batched GEMM over a (prompts, rows) grid rather
            than one GEMM per prompt (0 = never): a per-prompt loop's overhead dominates small
            groups, while large ones already make large GEMMs.
    """

    min_rows_per_worker: int = 16
    min_rows_per_shared_prompt: int = 16
    prefill_tokens_per_pass: int = 512
    table_max_vocab: int = 4096
    value_sums_by_rows: bool = True
    min_common_prefix: int = 8
    prompt_grid_max_rows: int = 64

    def __post_init__(self) -> None:
        for name in ("min_rows_per_worker", "min_rows_per_shared_prompt", "min_common_prefix"):
            if getattr(self, name) < 1:
                raise ValueError(f"KVSettings.{name} must be >= 1; got {getattr(self, name)}")
        if self.prefill_tokens_per_pass < 1:
            raise ValueError(
                f"KVSettings.prefill_tokens_per_pass must be >= 1; got "
                f"{self.prefill_tokens_per_pass}"
            )
        if self.prompt_grid_max_rows < 0:
            raise ValueError(
                f"KVSettings.prompt_grid_max_rows must be >= 0; got {self.prompt_grid_max_rows}"
            )
        if self.table_max_vocab < 0:
            raise ValueError(f"KVSettings.table_max_vocab must be >= 0; got {self.table_max_vocab}")


CPU = KVSettings()
GPU = KVSettings(
    min_rows_per_worker=16,
    min_rows_per_shared_prompt=NEVER,
    prefill_tokens_per_pass=16384,
    table_max_vocab=0,
    value_sums_by_rows=False,
    min_common_prefix=NEVER,
)


def settings_for(device: torch.device | str) -> KVSettings:
    """The measured settings of a device: :data:`CPU` on a CPU, :data:`GPU` elsewhere."""
    return CPU if torch.device(device).type == "cpu" else GPU
