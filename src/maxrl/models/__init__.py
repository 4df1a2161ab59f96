"""Policies for the maze testbed: the 32-id word tokenizer (the paper's ids) and small Qwen2
presets."""

from maxrl.models.presets import PRESETS, build_model
from maxrl.models.tokenizer import (
    MAZE_IDS,
    VOCAB,
    VOCAB_SIZE,
    check_maze_vocabulary,
    load_maze_tokenizer,
    maze_tokenizer,
)

__all__ = [
    "MAZE_IDS",
    "PRESETS",
    "VOCAB",
    "VOCAB_SIZE",
    "build_model",
    "check_maze_vocabulary",
    "load_maze_tokenizer",
    "maze_tokenizer",
]
