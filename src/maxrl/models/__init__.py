"""Policies for the maze testbed: the 32-id word tokenizer and small Qwen2 presets."""

from maxrl.models.presets import PRESETS, build_model
from maxrl.models.tokenizer import VOCAB, VOCAB_SIZE, load_tokenizer, maze_tokenizer

__all__ = ["PRESETS", "VOCAB", "VOCAB_SIZE", "build_model", "load_tokenizer", "maze_tokenizer"]
