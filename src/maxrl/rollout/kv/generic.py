"""The generic runner: any Hugging Face causal LM through its own ``forward`` and cache."""

from __future__ import annotations

import torch

from maxrl.models.loading import cache_argument, output_cache


class ModelForwardRunner:
    """Any HF causal LM: its own ``forward`` with its default ``DynamicCache``.

    transformers' ``StaticCache`` was measured slower here: its attention always spans the
    whole preallocated length (docs/rollout.md).
    """

    def __init__(self, model, max_new_tokens: int, autocast: bool = False):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.cache_name = cache_argument(model)  # looked up once, not at every decode step
        # the device to run the forward under bf16 autocast on (returning float32 logits); None:
        # the model as it is. Looked up once, not at every decode step
        self.autocast = next(model.parameters()).device.type if autocast else None

    def _forward(self, **kwargs) -> torch.Tensor:
        if self.autocast is None:
            out = self.model(**kwargs)
        else:
            with torch.autocast(self.autocast, torch.bfloat16):
                out = self.model(**kwargs)
        self.cache = output_cache(out)
        return out.logits[:, -1] if self.autocast is None else out.logits[:, -1].float()

    def prefill(
        self, ids: torch.Tensor, prompt_lengths: torch.Tensor, rows_of: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the prompts of every row (``ids[rows_of]``) through the model; last logits."""
        if rows_of is not None:
            ids, prompt_lengths = ids[rows_of], prompt_lengths[rows_of]
        width = ids.shape[1]
        cols = torch.arange(width + self.max_new_tokens - 1, device=ids.device)
        pad_cols = (width - prompt_lengths)[:, None]
        self.mask = (cols[None, :] >= pad_cols).long()
        self.positions = prompt_lengths.clone()
        self.filled = width
        return self._forward(
            input_ids=ids,
            attention_mask=self.mask[:, :width],
            position_ids=(cols[None, :width] - pad_cols).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.filled += 1
        logits = self._forward(
            input_ids=tokens[:, None],
            attention_mask=self.mask[:, : self.filled],
            position_ids=self.positions[:, None],
            use_cache=True,
            **{self.cache_name: self.cache},
        )
        self.positions += 1
        return logits

    def select(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
