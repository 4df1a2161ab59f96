"""Batched sampling on a preallocated KV cache (the "kv" backend).

Two runners share one decode loop (sampling, stop rule, dropping finished rows;
:mod:`.sampler`):

- :class:`DecoderRunner` (Qwen2 and Llama families, :mod:`.decoder`): the model's own decoder
  modules layer by layer on preallocated key/value buffers, each prompt prefilled once for all
  its rollouts and every shared prefix computed once (:mod:`.plan`).
- :class:`ModelForwardRunner` (any HF causal LM, :mod:`.generic`): the model's own ``forward``
  with its default ``DynamicCache`` and explicit position ids. Slower, but needs nothing from
  the architecture.

The hot paths' thresholds live in one frozen :class:`KVSettings` chosen per device
(:mod:`.settings`). See docs/rollout.md for the measurements behind each choice.
"""

from .decoder import DecoderRunner
from .generic import ModelForwardRunner
from .sampler import FAST_PATH_MODEL_TYPES, KVCacheSampler, supports_fast_path
from .settings import CPU, GPU, KVSettings, settings_for

__all__ = [
    "CPU",
    "FAST_PATH_MODEL_TYPES",
    "GPU",
    "DecoderRunner",
    "KVCacheSampler",
    "KVSettings",
    "ModelForwardRunner",
    "settings_for",
    "supports_fast_path",
]
