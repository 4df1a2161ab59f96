"""``KVCacheSampler``: the kv backend's entry point, streams and the shared decode loop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from ..base import Rollouts, SamplingParams, check_prompts, empty_rollouts, left_pad, select_tokens
from .decoder import DecoderRunner
from .generic import ModelForwardRunner
from .plan import split_by_work
from .projections import Linears, Projections
from .settings import KVSettings, settings_for

# model_type values whose decoder layers are (norm -> q/k/v/o attention with RoPE -> norm -> MLP)
# with pre-norm residuals, which is all the fast runner assumes
FAST_PATH_MODEL_TYPES = ("qwen2", "llama")


def supports_fast_path(model) -> bool:
    """Whether ``DecoderRunner`` reproduces this model's forward pass."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FAST_PATH_MODEL_TYPES:
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


def rewrites_rope_frequencies(model) -> bool:
    """Whether the model's rotary embedding rewrites its frequencies during the forward
    (``dynamic``, ``longrope``), so that two threads must not run its forward at once (a peft
    wrapper is seen through to its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rotary = getattr(getattr(base, "model", None), "rotary_emb", None)
    return getattr(rotary, "rope_type", "default") in ("dynamic", "longrope")


class KVCacheSampler:
    """Batched sampling for HF causal LMs with a KV cache: preallocated buffers on the
    Qwen2/Llama fast path, the model's own ``DynamicCache`` otherwise.

    Args:
        max_batch_size: most rows one worker decodes together; its share of a larger request
            runs in consecutive chunks (bounds the cache memory: 2 * layers * kv_heads *
            head_dim * (prompt + max_new_tokens) values per row, 4-byte on CPU). None = no
            limit.
        workers: parallel decode streams on a CPU model, each a Python thread that decodes a
            contiguous slice of the batch with one intra-op thread. Independent streams scale
            over cores better than one stream with intra-op threads, and degrade gracefully on
            a shared machine (docs/rollout.md). None = ``torch.get_num_threads()`` on CPU
            (fewer when a stream would get under ``settings.min_rows_per_worker`` rows), 1
            elsewhere.
        fast_path: use the direct decoder runner where the model supports it (Qwen2, Llama);
            False forces the generic path, the model's own ``forward`` with its ``DynamicCache``
            (same distribution, its own draws).
        compact_below: once the fraction of unfinished rows falls to this value, finished rows
            are removed from the cache; 0 disables it.
        settings: the tuning of the hot paths (:class:`KVSettings`); None = the measured
            settings of the model's device (:func:`settings_for`).
        precision: ``float32`` samples a float32 model as it is; ``bfloat16`` runs its linear
            layers in bf16 (weights cast once per call, inputs rounded to bf16, float32
            accumulation), with norms, RoPE, attention, the residual stream and the softmax in
            float32: the numerics of the training forward under ``model.precision=bfloat16``
            (on the generic runner, the model's forward under bf16 autocast). A model already
            in bf16 or float16 is sampled as it is either way.

    Samples are a deterministic function of the generator's state, ``workers``,
    ``max_batch_size``, ``compact_below`` and the settings: each stream draws from its own
    generator seeded from ``generator`` (or from the global RNG when it is None).
    """

    def __init__(
        self,
        max_batch_size: int | None = None,
        workers: int | None = None,
        fast_path: bool = True,
        compact_below: float = 0.75,
        settings: KVSettings | None = None,
        precision: str = "float32",
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
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16; got {precision!r}")
        self.settings = settings
        self.precision = precision

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
        check_prompts(prompt_ids, n)
        # plain int lists: prompts are sorted, and tuples, tensors and arrays don't compare
        prompt_ids = [
            p.tolist() if hasattr(p, "tolist") else [int(t) for t in p] for p in prompt_ids
        ]
        batch = len(prompt_ids) * n
        out = empty_rollouts(batch, params, pad_token_id)
        device = next(model.parameters()).device
        settings = self.settings or settings_for(device)
        workers = self.workers
        if workers is None:
            cores = torch.get_num_threads() if device.type == "cpu" else 1
            workers = max(1, min(cores, batch // settings.min_rows_per_worker))
        if rewrites_rope_frequencies(model):
            workers = 1
        workers = min(workers, batch)
        seeds = torch.randint(2**62, (workers,), generator=generator).tolist()
        # rows in prompt order (a prompt's n rows together): shared prefixes and the rollouts of
        # a prompt land in one stream and one chunk, where the prefill computes them once
        by_prompt = sorted(range(len(prompt_ids)), key=prompt_ids.__getitem__)
        order = [u * n + j for u in by_prompt for j in range(n)]
        bounds = split_by_work([prompt_ids[r // n] for r in order], workers, params.max_new_tokens)
        order = torch.tensor(order, dtype=torch.long)
        parts = [
            (order[bounds[i] : bounds[i + 1]], torch.Generator(device).manual_seed(seeds[i]))
            for i in range(workers)
        ]
        low = self.precision == "bfloat16" and next(model.parameters()).dtype == torch.float32
        make_runner = partial(ModelForwardRunner, autocast=low)
        if self.fast_path and supports_fast_path(model):
            dtype = torch.bfloat16 if low else None
            projections = Projections(model, settings.table_max_vocab, dtype)
            linears = Linears(model, dtype)
            make_runner = partial(
                DecoderRunner, settings=settings, projections=projections, linears=linears
            )

        def run(rows: torch.Tensor, part_generator: torch.Generator, threads: int | None) -> None:
            if threads is not None:
                # per-thread OpenMP setting: the caller's own thread count is left untouched
                torch.set_num_threads(threads)
            chunk = self.max_batch_size or len(rows)
            with torch.inference_mode():
                for chunk_rows in torch.split(rows, chunk):
                    # a chunk's rows are its prompts' rollouts, each prompt's consecutive
                    prompts, rows_of = torch.unique_consecutive(
                        chunk_rows // n, return_inverse=True
                    )
                    chunk_prompts = [prompt_ids[u] for u in prompts.tolist()]
                    ids, lengths = left_pad(chunk_prompts, pad_token_id, device)
                    runner = make_runner(model, params.max_new_tokens)
                    self._decode(
                        runner,
                        ids,
                        lengths,
                        rows_of.to(device),
                        params,
                        part_generator,
                        out,
                        chunk_rows,
                    )

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

    def _decode(self, runner, ids, prompt_lengths, rows_of, params, generator, out, rows):
        """The sampling loop shared by both runners; writes rows ``rows`` of ``out``. Row
        ``r`` of the chunk decodes prompt ``rows_of[r]`` of ``ids``."""
        batch = len(rows)
        out.lengths[rows] = params.max_new_tokens
        out.truncated[rows] = True
        stops = torch.tensor(params.stop_token_ids, dtype=torch.long)
        alive = torch.ones(batch, dtype=torch.bool)
        logits = runner.prefill(ids, prompt_lengths, rows_of)
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
