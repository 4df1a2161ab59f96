"""The paper's maze testbed: Prim's-algorithm mazes, BFS answers, and the path verifier.

A maze is an odd ``size x size`` int8 grid whose cells (odd coordinates) are joined by carved
passages. The start is (1, 1), the goal (size-2, size-2). The policy reads the grid as word tokens
and must answer with moves that walk from START to GOAL; the reward is binary (the paper, arXiv
2602.02710, section 5).

The mazes are those of the paper's own dataset script: :func:`generate_maze` and
:func:`maze_stream` follow its randomised Prim's algorithm draw for draw, so the same size, seed and
count give the same mazes in the same order, and :func:`official_dataset` (``maxrl maze-data
format=official``) writes the same ``train.json`` and ``test.json`` (the paper's set: 1M 17x17
training mazes and 256 test mazes). Such files, the paper's included, are task data through
:meth:`MazeTask.from_files` (``task.data=DIR/train.json task.test_data=DIR/test.json``).

Grid codes: ``PATH`` (0) and ``WALL`` (1) are all that :func:`generate_maze` writes; a grid read
back from a prompt also carries ``START`` (2) and ``GOAL`` (3) where the prompt puts them, because
a hand-written prompt may place them anywhere. Every function below accepts either form: a grid
without START/GOAL marks uses the fixed corners.

Text (space-separated word tokens, one per vocabulary id of :func:`maxrl.models.maze_tokenizer`,
whose ids are the paper's)::

    prompt:  <bos> GRID_START WALL WALL ... NEWLINE ... NEWLINE GRID_END PATH_START
    answer:  DOWN DOWN RIGHT RIGHT ... DONE          (the model then emits <eos>)
"""

from maxrl.tasks.maze.data import MazeDataConfig, main, official_dataset
from maxrl.tasks.maze.grid import (
    CELL_TOKENS,
    GOAL,
    MAZE_TOKENS,
    MOVES,
    PATH,
    START,
    WALL,
    endpoints,
    format_answer,
    format_prompt,
    format_sequence,
    generate_maze,
    grid_id,
    mark_endpoints,
    maze_stream,
    parse_prompt,
    score_moves,
    solve,
    verify,
)
from maxrl.tasks.maze.task import MazeTask

__all__ = [
    "CELL_TOKENS",
    "GOAL",
    "MAZE_TOKENS",
    "MOVES",
    "PATH",
    "START",
    "WALL",
    "MazeDataConfig",
    "MazeTask",
    "endpoints",
    "format_answer",
    "format_prompt",
    "format_sequence",
    "generate_maze",
    "grid_id",
    "main",
    "mark_endpoints",
    "maze_stream",
    "official_dataset",
    "parse_prompt",
    "score_moves",
    "solve",
    "verify",
]
