"""Sampling rollouts from a causal LM: the first stage of every RL step.

``make_sampler(name)`` returns a backend with one method, ``generate(model, prompt_ids, params,
*, pad_token_id, generator=None) -> Rollouts``:

- ``"kv"`` (:class:`KVCacheSampler`): batched sampling on a preallocated KV cache; a direct
  decoder runner for Qwen2/Llama models, the model's own forward for any other causal LM.
- ``"hf"`` (:class:`HFGenerateSampler`): ``model.generate``, the reference.
- ``"vllm"`` (:class:`VLLMSampler`): a vLLM engine (GPU; imported only when used).

Every backend reports the same log-probabilities: ``log_softmax(logits / temperature)`` of the
sampled token, before top-k/top-p truncation (see :mod:`maxrl.rollout.base`).
"""

from .base import Rollouts, Sampler, SamplingParams
from .hf import HFGenerateSampler
from .kv import KVCacheSampler
from .vllm import VLLMSampler

SAMPLERS = {"kv": KVCacheSampler, "hf": HFGenerateSampler, "vllm": VLLMSampler}


def make_sampler(name: str = "kv", **kwargs) -> Sampler:
    """The sampler called ``name``, built with ``kwargs`` (see each class for its options)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**kwargs)


__all__ = [
    "HFGenerateSampler",
    "KVCacheSampler",
    "Rollouts",
    "Sampler",
    "SamplingParams",
    "VLLMSampler",
    "make_sampler",
]
