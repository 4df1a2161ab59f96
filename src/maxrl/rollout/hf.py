"""The "hf" backend: transformers' ``model.generate`` behind the common interface.

It is the reference the "kv" backend is compared with, and the fallback for architectures where
``generate`` has features the kv runner lacks. Log-probabilities come from the raw logits that
``generate`` returns (``output_logits``), so they follow the definition in :mod:`.base`
(temperature-scaled, before top-k/top-p), not from ``output_scores`` (which are truncated).
"""

from __future__ import annotations

import torch

from .base import Rollouts, SamplingParams, check_prompts, empty_rollouts, finish_rollouts, left_pad


class HFGenerateSampler:
    """Sampling with ``model.generate(do_sample=True, ...)``.

    Args:
        max_batch_size: most prompts per ``generate`` call; None = all at once.

    ``generate`` draws from the global torch RNG; a ``generator`` passed to :meth:`generate`
    seeds that RNG (inside ``torch.random.fork_rng``, so the caller's global state is untouched),
    which makes the call reproducible. The model's own ``generation_config`` is ignored: only
    the fields of :class:`SamplingParams` shape the distribution.
    """

    def __init__(self, max_batch_size: int | None = None):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None; got {max_batch_size!r}")
        self.max_batch_size = max_batch_size

    def generate(
        self,
        model,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        pad_token_id: int,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """``n`` rollouts of each prompt: row ``g * n + j`` is rollout ``j`` of prompt ``g``."""
        from transformers import GenerationConfig

        check_prompts(prompt_ids, n)
        prompt_ids = [p for p in prompt_ids for _ in range(n)]
        sampling = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_k=params.top_k if sampling else None,
            top_p=params.top_p if sampling else None,
            eos_token_id=list(params.stop_token_ids) or None,
            pad_token_id=pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        device = next(model.parameters()).device
        out = empty_rollouts(len(prompt_ids), params, pad_token_id)
        chunk = self.max_batch_size or len(prompt_ids)
        seed = None
        if generator is not None:
            seed = int(torch.randint(2**62, (1,), generator=generator))
        # generate() fills every field left unset from model.generation_config (a checkpoint's
        # repetition penalty, no-repeat n-grams, ...): swap in a blank one for the call
        model_config = model.generation_config
        model.generation_config = GenerationConfig()
        try:
            with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                if seed is not None:
                    torch.manual_seed(seed)
                for start in range(0, len(prompt_ids), chunk):
                    rows = slice(start, start + chunk)
                    self._generate_chunk(model, prompt_ids[rows], params, config, out, rows)
        finally:
            model.generation_config = model_config
        return out

    @staticmethod
    def _generate_chunk(model, prompts, params, config, out, rows) -> None:
        device = next(model.parameters()).device
        ids, lengths = left_pad(prompts, config.pad_token_id, device)
        cols = torch.arange(ids.shape[1], device=device)
        mask = (cols[None, :] >= (ids.shape[1] - lengths)[:, None]).long()
        with torch.inference_mode():
            result = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        tokens = result.sequences[:, ids.shape[1] :]
        logits = torch.stack(result.logits, dim=1).float()
        if params.temperature > 0:
            logits = logits / params.temperature
        logprobs = logits.log_softmax(dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        part = finish_rollouts(tokens, logprobs, params, config.pad_token_id)
        steps = tokens.shape[1]
        out.tokens[rows, :steps] = part.tokens[:, :steps]
        out.logprobs[rows, :steps] = part.logprobs[:, :steps]
        out.lengths[rows] = part.lengths
        out.truncated[rows] = part.truncated
