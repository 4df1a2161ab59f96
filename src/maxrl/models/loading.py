"""Loading and building policies: any local Hugging Face causal LM, or a maze preset.

Checkpoints are written every few steps, so transformers' own progress bars are turned off
(:func:`quiet_transformers`): they would drown the run's single one.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@cache
def _cache_argument(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_argument(model) -> str:
    """The name under which ``model.forward`` takes a KV cache: ``cache`` in transformers 5.24 and
    later (where ``past_key_values`` is deprecated), ``past_key_values`` before. A wrapper such as
    peft's is looked through to the model it wraps."""
    base = getattr(model, "get_base_model", None)
    model = base() if callable(base) else model
    return _cache_argument(type(model).forward)


def output_cache(out):
    """The KV cache a forward returned, under either transformers' name for it."""
    return out["cache"] if "cache" in out else out.past_key_values


def load_policy(path: str, dtype: str = "float32"):
    """A causal LM and its tokenizer from a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    if not Path(path).exists():
        raise FileNotFoundError(
            f"model.init={path!r} does not exist; give a folder written by save_pretrained "
            f"(e.g. an SFT run's final/ folder), or leave it empty to warm-start with SFT"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer saved in ``path`` (a tokenizer folder or a whole checkpoint).

    A plain ``tokenizers`` tokenizer saved next to a model config (the maze models) must be
    loaded as such: ``AutoTokenizer`` would follow the model type and rebuild a byte-level BPE
    tokenizer over its vocabulary, which silently mis-encodes every prompt.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    if config.exists():
        cls = json.loads(config.read_text()).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def build_policy(preset: str, seed: int, dtype: str = "float32"):
    """A maze model built from a preset, with the maze tokenizer."""
    from maxrl.models.presets import build_model
    from maxrl.models.tokenizer import maze_tokenizer

    tokenizer = maze_tokenizer()
    model = build_model(preset, vocab_size=len(tokenizer), seed=seed).to(DTYPES[dtype])
    return model, tokenizer


def stop_ids(tokenizer) -> tuple[int, ...]:
    """The token ids a rollout ends on: eos, plus any ``additional_stop_ids`` of the tokenizer."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(tokenizer, "additional_stop_ids", None) or ()
    ids.update(extra)
    return tuple(sorted(i for i in ids if i is not None))
