"""Small Qwen2 decoders trained from scratch for the maze testbed (docs/method.md, section 5).

Presets (vocab 32, tied input/output embeddings, parameter counts at vocab 32):

- ``paper``: the paper's model, 4 layers, hidden 256, MLP 1024, 4 heads, 2 KV heads:
  3,944,704 parameters.
- ``small``: the CPU default, 4 layers, hidden 128, MLP 512, 4 heads, 2 KV heads: 989,312.
- ``tiny``: for tests, 2 layers, hidden 32, MLP 64, 2 heads, 1 KV head: 19,744.

Positions use RoPE, so ``max_position_embeddings`` (1024) only bounds the sequence: a 17x17
prompt is 310 tokens and the paper allows 180 response tokens.

Saving and loading need no helpers: ``model.save_pretrained(dir)`` writes safetensors with the tied
weight stored once, and ``AutoModelForCausalLM.from_pretrained(dir)`` rebuilds the same model
(same logits). Save the tokenizer next to it with ``tokenizer.save_pretrained(dir)`` and reload
it with :func:`maxrl.models.load_maze_tokenizer`, not ``AutoTokenizer`` (see
:mod:`maxrl.models.tokenizer`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        num_hidden_layers=4,
        hidden_size=256,
        intermediate_size=1024,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        num_hidden_layers=4,
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "tiny": dict(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
    ),
}

_COMMON: dict[str, Any] = dict(
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    # Ids of maxrl.models.tokenizer.maze_tokenizer; generate() stops at eos and pads with pad.
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    attn_implementation="sdpa",
)


def build_model(
    preset: str, vocab_size: int = 32, seed: int = 0, **overrides: Any
) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2 causal LM of a preset; ``overrides`` replace config fields.

    Initialisation is deterministic in ``seed`` and leaves the global torch RNG untouched.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {sorted(PRESETS)}")
    known = Qwen2Config()
    unknown = [k for k in overrides if k != "attn_implementation" and not hasattr(known, k)]
    if unknown:
        raise ValueError(
            f"unknown Qwen2Config field(s) {unknown} in overrides; see transformers.Qwen2Config"
        )
    config = Qwen2Config(**{**_COMMON, **PRESETS[preset], "vocab_size": vocab_size, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model
