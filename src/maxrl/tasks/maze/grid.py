"""Maze grids: the paper's generator, the BFS answer, the text format and the path verifier.

A maze is an odd ``size x size`` int8 grid whose cells (odd coordinates) are joined by carved
passages. :func:`generate_maze` and :func:`maze_stream` follow the paper's dataset script's
randomised Prim's algorithm draw for draw (docs/method.md, section 5).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

PATH, WALL, START, GOAL = 0, 1, 2, 3
CELL_TOKENS = ("PATH", "WALL", "START", "GOAL")  # index = grid code
_CELL_CODE = {tok: code for code, tok in enumerate(CELL_TOKENS)}

# Moves in the BFS tie-break order of the paper: (row step, column step).
MOVES = {"UP": (-1, 0), "DOWN": (1, 0), "LEFT": (0, -1), "RIGHT": (0, 1)}

BOS, EOS = "<bos>", "<eos>"
GRID_START, GRID_END, PATH_START, NEWLINE, DONE = (
    "GRID_START",
    "GRID_END",
    "PATH_START",
    "NEWLINE",
    "DONE",
)
# The maze words in the order of their ids in the paper's tokenizer, after the four special
# tokens: GRID_START is id 4, ..., RIGHT is id 16 (see maxrl.models.tokenizer).
MAZE_TOKENS = (
    GRID_START,
    GRID_END,
    PATH_START,
    DONE,
    "PATH",
    "WALL",
    "GOAL",
    "START",
    NEWLINE,
    "UP",
    "DOWN",
    "LEFT",
    "RIGHT",
)

# Train maze seeds come from [seed_offset + _TRAIN_SEED_LOW, seed_offset + _TRAIN_SEED_HIGH);
# test seeds count up from seed_offset and never reach that range (test_count < _TRAIN_SEED_LOW).
_TRAIN_SEED_LOW, _TRAIN_SEED_HIGH = 2**40, 2**62

# The paper's direction order for cells two squares apart: (row step, column step).
_CELL_STEPS = ((0, 2), (2, 0), (0, -2), (-2, 0))


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 5 or size % 2 == 0:
        raise ValueError(f"maze size must be an odd integer >= 5 (e.g. 9 or 17); got {size!r}")


@lru_cache(maxsize=32)
def _cell_neighbours(size: int) -> tuple[tuple[int, ...], ...]:
    """For each flat index of a cell (odd row and column), its cells two squares away.

    In ``_CELL_STEPS`` order, keeping those strictly inside the border. For a cell of an odd-sized
    grid these are also exactly its cells two squares away inside the grid (the border rows and
    columns have even coordinates), so one table serves both of the algorithm's neighbour lists.
    """
    table: list[tuple[int, ...]] = [()] * (size * size)
    for r in range(1, size - 1, 2):
        for c in range(1, size - 1, 2):
            table[r * size + c] = tuple(
                (r + dr) * size + c + dc
                for dr, dc in _CELL_STEPS
                if 0 < r + dr < size - 1 and 0 < c + dc < size - 1
            )
    return tuple(table)


def _draw_maze(size: int, rng: random.Random) -> np.ndarray:
    """One maze drawn from ``rng`` by the paper's randomised Prim's algorithm.

    The grid starts all walls and the start cell is opened; the frontier lists the wall cells two
    squares from the start. Each step removes a uniformly random frontier cell
    (``rng.randint(0, len - 1)``), joins it through the square between to one of its open cells
    two squares away (``rng.choice``), and appends its wall cells two squares away that are not
    already listed. Every list is in ``_CELL_STEPS`` order and every draw is the paper's, so the
    stream of mazes matches its dataset script maze for maze.
    """
    neighbours = _cell_neighbours(size)
    flat = [WALL] * (size * size)
    start, goal = size + 1, (size - 2) * size + size - 2
    flat[start] = PATH
    frontier = [cell for cell in neighbours[start] if flat[cell] == WALL]
    listed = set(frontier)  # the frontier's members, for an O(1) "not already listed"
    randint, choice = rng.randint, rng.choice
    while frontier:
        cell = frontier.pop(randint(0, len(frontier) - 1))
        listed.discard(cell)
        joined = [other for other in neighbours[cell] if flat[other] == PATH]
        if joined:
            # Two cells in one row or column: the flat index halfway is the square between them.
            flat[(cell + choice(joined)) // 2] = PATH
            flat[cell] = PATH
            for other in neighbours[cell]:
                if flat[other] == WALL and other not in listed:
                    frontier.append(other)
                    listed.add(other)
    flat[start] = flat[goal] = PATH
    return np.array(flat, dtype=np.int8).reshape(size, size)


def maze_stream(size: int, seed: int) -> Iterator[np.ndarray]:
    """Mazes drawn one after another from one ``random.Random(seed)``, as the paper's dataset
    script draws them: the first ``count`` are its ``count`` mazes, in its order. Endless."""
    _check_size(size)
    rng = random.Random(seed)
    return (_draw_maze(size, rng) for _ in itertools.count())


def generate_maze(size: int, seed: int) -> np.ndarray:
    """A perfect maze (every open cell reachable, no cycles), the first of ``random.Random(seed)``.

    The same as ``next(maze_stream(size, seed))``: the paper's randomised Prim's algorithm (see
    :func:`maze_stream`), which grows a spanning tree of the cells at odd coordinates from (1, 1)
    by adding a uniformly random frontier cell at each step. Deterministic in ``seed``; the global
    random state plays no part.

    Returns an int8 ``size x size`` array of ``PATH`` and ``WALL``.
    """
    _check_size(size)
    return _draw_maze(size, random.Random(seed))


def _as_grid(grid) -> np.ndarray:
    arr = np.asarray(grid)
    if arr.ndim != 2 or arr.size < 2:
        raise ValueError(f"a maze grid must be a 2-D array of cell codes; got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > GOAL:
        raise ValueError(
            f"grid cell codes must be PATH={PATH}, WALL={WALL}, START={START} or GOAL={GOAL}; "
            f"got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def endpoints(grid) -> tuple[tuple[int, int], tuple[int, int]]:
    """(start, goal) as (row, col): the START/GOAL marks if the grid has them, else the corners."""
    arr = _as_grid(grid)
    starts, goals = np.argwhere(arr == START), np.argwhere(arr == GOAL)
    if len(starts) == 0 and len(goals) == 0:
        rows, cols = arr.shape
        start, goal = (1, 1), (rows - 2, cols - 2)
        for name, (r, c) in (("start", start), ("goal", goal)):
            if not (0 <= r < rows and 0 <= c < cols) or arr[r, c] != PATH:
                raise ValueError(
                    f"the {name} {(r, c)} of an unmarked {rows}x{cols} grid must be a PATH cell; "
                    f"mark START and GOAL explicitly or pass a generate_maze grid"
                )
        return start, goal
    if len(starts) != 1 or len(goals) != 1:
        raise ValueError(
            f"a grid needs exactly one START and one GOAL; got {len(starts)} START and "
            f"{len(goals)} GOAL cells"
        )
    return tuple(map(int, starts[0])), tuple(map(int, goals[0]))


def mark_endpoints(grid) -> np.ndarray:
    """A copy of ``grid`` with START and GOAL written in (unchanged if already marked)."""
    (sr, sc), (gr, gc) = endpoints(grid)
    marked = np.array(grid, dtype=np.int8, copy=True)
    marked[sr, sc], marked[gr, gc] = START, GOAL
    return marked


def solve(grid) -> list[str]:
    """The BFS shortest path from start to goal as move names.

    Neighbours are tried in the order UP, DOWN, LEFT, RIGHT and a cell keeps the parent that first
    reached it, so among equally short paths the one that is smallest in that move order (compared
    move by move from the start) wins. Raises ValueError when the goal is unreachable.
    """
    arr = _as_grid(grid)
    (sr, sc), (gr, gc) = endpoints(arr)
    # Flat indices into the grid padded with a ring of walls: a step off the grid meets a wall,
    # so the loop needs no bounds checks. This runs for every generated item; keep it lean.
    width = arr.shape[1] + 2
    is_open = np.pad(arr != WALL, 1, constant_values=False).ravel().tolist()
    start, goal = (sr + 1) * width + sc + 1, (gr + 1) * width + gc + 1
    steps = [(name, dr * width + dc) for name, (dr, dc) in MOVES.items()]
    parent = [-1] * len(is_open)
    parent[start] = start
    move_in = [""] * len(is_open)
    queue = [start]
    for v in queue:  # the list grows while it is read: a FIFO without popping
        if v == goal:
            break
        for name, step in steps:
            w = v + step
            if is_open[w] and parent[w] < 0:
                parent[w], move_in[w] = v, name
                queue.append(w)
    if parent[goal] < 0:
        raise ValueError(f"the goal {(gr, gc)} cannot be reached from the start {(sr, sc)}")
    moves = []
    v = goal
    while v != start:
        moves.append(move_in[v])
        v = parent[v]
    return moves[::-1]


def format_prompt(grid) -> str:
    """``<bos> GRID_START`` + each row's cell tokens and ``NEWLINE`` + ``GRID_END PATH_START``."""
    marked = mark_endpoints(grid)
    rows = " ".join(
        " ".join(CELL_TOKENS[v] for v in row) + " " + NEWLINE for row in marked.tolist()
    )
    return f"{BOS} {GRID_START} {rows} {GRID_END} {PATH_START}"


def format_answer(moves: Sequence[str]) -> str:
    """The demonstration answer: the moves then ``DONE`` (no eos: the trainer appends its id)."""
    bad = [m for m in moves if m not in MOVES]
    if bad:
        raise ValueError(f"moves must be from {list(MOVES)}; got {bad[0]!r}")
    return " ".join([*moves, DONE])


def parse_prompt(prompt: str) -> np.ndarray:
    """The grid a prompt shows, with START and GOAL marked; ValueError if it holds no valid grid.

    Accepts ``[<bos>] GRID_START rows GRID_END [PATH_START]`` where every row is cell tokens
    closed by ``NEWLINE``.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"a maze prompt must be a string; got {type(prompt).__name__}")
    tokens = prompt.split()
    if tokens[:1] == [BOS]:
        tokens = tokens[1:]
    if tokens[:1] != [GRID_START]:
        raise ValueError(
            f"a maze prompt must begin with [{BOS}] {GRID_START}; got {' '.join(tokens[:2])!r}"
        )
    try:
        end = tokens.index(GRID_END)
    except ValueError:
        raise ValueError(f"the maze prompt has no {GRID_END} token; use format_prompt") from None
    if tokens[end + 1 :] not in ([], [PATH_START]):
        raise ValueError(
            f"only {PATH_START} may follow {GRID_END} in a maze prompt; "
            f"got {' '.join(tokens[end + 1 :])!r}"
        )
    body = tokens[1:end]
    if not body or body[-1] != NEWLINE:
        raise ValueError(f"every grid row must end with {NEWLINE}; the last row does not")
    rows: list[list[int]] = [[]]
    for tok in body[:-1]:
        if tok == NEWLINE:
            rows.append([])
        elif tok in _CELL_CODE:
            rows[-1].append(_CELL_CODE[tok])
        else:
            raise ValueError(f"unknown grid cell token {tok!r}; cells are one of {CELL_TOKENS}")
    widths = {len(row) for row in rows}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(
            f"grid rows must be non-empty and equally long; got widths {sorted(widths)}"
        )
    grid = np.array(rows, dtype=np.int8)
    starts, goals = int((grid == START).sum()), int((grid == GOAL).sum())
    if starts != 1 or goals != 1:
        raise ValueError(
            f"a maze prompt needs exactly one START and one GOAL; got {starts} and {goals}"
        )
    return grid


def score_moves(grid, completion: str) -> float:
    """The verifier on a grid (see :func:`verify`), for callers that already hold the grid."""
    start, goal = endpoints(grid)
    cells = np.asarray(grid).tolist()
    return _walk(cells, start, goal, completion)


def _walk(cells: Sequence[Sequence[int]], start, goal, completion: str) -> float:
    tokens = completion.split()
    try:
        end = tokens.index(DONE)
    except ValueError:
        return 0.0
    steps = [MOVES.get(tok) for tok in tokens[:end]]
    if None in steps:
        return 0.0
    rows, cols = len(cells), len(cells[0])
    r, c = start
    for dr, dc in steps:
        r, c = r + dr, c + dc
        if not (0 <= r < rows and 0 <= c < cols) or cells[r][c] == WALL:
            return 0.0
        if (r, c) == goal:
            return 1.0
    return 1.0 if (r, c) == goal else 0.0


def verify(prompt: str, completion: str) -> float:
    """Reward 1.0 if ``completion`` walks from START to GOAL, else 0.0 (docs/method.md, section 5).

    The completion is cut at its first ``DONE`` (none -> 0.0); every token before it must be a
    move (else 0.0, even when the walk reached the goal before the bad token); the walk starts
    on START; leaving the grid or entering a WALL gives 0.0; reaching GOAL gives 1.0 at once,
    ignoring later moves; otherwise the reward is 1.0 only if the walk ends on GOAL. Anything after
    ``DONE`` (``<eos>``, padding, text) is ignored. Never raises on a completion string; raises
    ValueError when the prompt holds no valid grid.
    """
    return score_moves(parse_prompt(prompt), completion)


def grid_id(grid) -> str:
    """A stable id of a grid: its shape and a BLAKE2b hash of its cells with START/GOAL marked."""
    marked = mark_endpoints(grid)
    digest = hashlib.blake2b(marked.tobytes(), digest_size=8).hexdigest()
    return f"maze{marked.shape[0]}x{marked.shape[1]}-{digest}"


def format_sequence(grid) -> str:
    """A whole demonstration as the paper's data files hold it: prompt, answer, ``<eos>``."""
    return f"{format_prompt(grid)} {format_answer(solve(grid))} {EOS}"
