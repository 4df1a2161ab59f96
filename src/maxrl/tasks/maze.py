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

from __future__ import annotations

import hashlib
import itertools
import json
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from maxrl.tasks.base import Item

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


def official_dataset(
    size: int, count: int, seed: int = 0, test_size: int = 256
) -> tuple[list[dict], list[dict]]:
    """(train, test) records exactly as the paper's dataset script writes them.

    ``count`` mazes are drawn one after another from ``random.Random(seed)`` (:func:`maze_stream`);
    any without a path from start to goal is dropped (a perfect maze always has one); the list is
    shuffled by a fresh ``random.Random(seed)``; the first ``test_size`` records are the test set
    and the rest the training set. A record is ``{"sequence": <bos> GRID_START ... DONE <eos>,
    "optimal_path_length": number of moves}``. The paper's set is ``size=17, count=1_000_000,
    seed=0, test_size=256``. Both lists may share a maze: the script does not deduplicate.
    """
    _check_size(size)
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    if not 0 <= test_size <= count:
        raise ValueError(f"test_size must be in [0, count={count}]; got {test_size}")
    records = []
    for grid in itertools.islice(maze_stream(size, seed), count):
        try:
            moves = solve(grid)
        except ValueError:
            continue
        sequence = f"{format_prompt(grid)} {format_answer(moves)} {EOS}"
        records.append({"sequence": sequence, "optimal_path_length": len(moves)})
    random.Random(seed).shuffle(records)
    return records[test_size:], records[:test_size]


def _make_item(size: int, seed: int, split: str) -> Item:
    grid = mark_endpoints(generate_maze(size, seed))
    return Item(
        id=grid_id(grid),
        prompt=format_prompt(grid),
        # Nested tuples, not an array: Items then compare with == and pickle compactly.
        reference=_freeze(grid),
        target=format_answer(solve(grid)),
        meta={"size": size, "seed": int(seed), "split": split},
    )


_RECORD_HINT = (
    'a JSON list of {"sequence": "<bos> GRID_START ... PATH_START moves DONE <eos>", '
    '"optimal_path_length": n} objects, as `maxrl maze-data format=official` writes'
)


class _MazeFile:
    """The records of one data file of the paper's format, turned into items on demand.

    Only the sequences and path lengths are kept; a record is parsed and checked when its item is
    built, so that loading the paper's 1M-maze file costs one JSON read and no per-maze work.
    """

    def __init__(self, path: str | Path, split: str):
        self.path = Path(path)
        self.split = split
        if not self.path.is_file():
            raise FileNotFoundError(
                f"maze data file {str(self.path)!r} does not exist; write one with "
                f"`maxrl maze-data format=official out=DIR` (DIR/train.json, DIR/test.json)"
            )
        try:
            with self.path.open(encoding="utf-8") as fh:
                records = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"maze data file {str(self.path)!r} is not JSON ({exc}); give {_RECORD_HINT}"
            ) from None
        if not isinstance(records, list) or not records:
            raise ValueError(
                f"maze data file {str(self.path)!r} holds no records; give {_RECORD_HINT}"
            )
        self.sequences: list[str] = []
        self.lengths: list[int] = []
        for index, record in enumerate(records):
            sequence = record.get("sequence") if isinstance(record, dict) else None
            length = record.get("optimal_path_length") if isinstance(record, dict) else None
            if not isinstance(sequence, str) or not isinstance(length, int):
                raise ValueError(
                    f"record {index} of {str(self.path)!r} is {str(record)[:80]!r}; give "
                    f"{_RECORD_HINT}"
                )
            self.sequences.append(sequence)
            self.lengths.append(length)

    def __len__(self) -> int:
        return len(self.sequences)

    def item(self, index: int) -> Item:
        where = f"record {index} of {str(self.path)!r}"
        tokens = self.sequences[index].split()
        try:
            cut = tokens.index(PATH_START) + 1
        except ValueError:
            raise ValueError(f"{where} has no {PATH_START} token; give {_RECORD_HINT}") from None
        answer = tokens[cut:]
        if answer[-1:] == [EOS]:
            answer.pop()
        if answer[-1:] != [DONE] or any(move not in MOVES for move in answer[:-1]):
            raise ValueError(
                f"{where}: the answer after {PATH_START} must be moves then {DONE} [{EOS}]; "
                f"got {' '.join(tokens[cut:])[:80]!r}"
            )
        try:
            grid = parse_prompt(" ".join(tokens[:cut]))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if len(answer) - 1 != self.lengths[index]:
            raise ValueError(
                f"{where}: optimal_path_length is {self.lengths[index]} but the answer has "
                f"{len(answer) - 1} moves; fix the record"
            )
        target = " ".join(answer)
        if score_moves(grid, target) != 1.0:
            raise ValueError(f"{where}: the answer does not walk from START to GOAL; fix it")
        return Item(
            id=grid_id(grid),
            prompt=format_prompt(grid),
            reference=_freeze(grid),
            target=target,
            meta={"size": int(grid.shape[0]), "split": self.split, "index": index},
        )

    def grid_texts(self) -> Iterator[str]:
        """Each record's text up to ``GRID_END``: equal for two records exactly when their grids
        are (for canonical text, as the paper's script and :func:`format_prompt` write it)."""
        for sequence in self.sequences:
            yield sequence[: sequence.find(GRID_END)].strip()


class MazeTask:
    """Mazes of one size: a fixed held-out set and a training stream.

    Generated (the default): the test set is the first ``test_count`` distinct mazes from seeds
    ``seed_offset``, ``seed_offset + 1``, ... Training mazes come from seeds drawn in
    ``[seed_offset + 2**40, seed_offset + 2**62)`` by a generator seeded with the ``seed`` argument,
    and any maze whose grid equals a test maze is dropped, so disjointness holds by construction
    even where two seeds give the same maze (small sizes have few distinct mazes: 4 at size 5).
    Each maze is ``generate_maze(size, maze_seed)``, a draw from the paper's maze distribution.

    From the paper's data files (:meth:`from_files`): either split, or both, come from a file.

    Items carry ``reference`` = the grid as nested tuples (START/GOAL marked), ``target`` = the
    answer (moves then ``DONE``; the trainer appends eos), and ``meta`` = {size, seed, split} for a
    generated maze or {size, split, index} for a file record; ``id`` is a hash of the grid.
    """

    name = "maze"

    def __init__(self, size: int = 9, test_count: int = 256, seed_offset: int = 0):
        _check_size(size)
        if not 1 <= test_count < _TRAIN_SEED_LOW:
            raise ValueError(f"test_count must be in [1, 2**40); got {test_count}")
        if not 0 <= seed_offset <= 2**63 - _TRAIN_SEED_HIGH:
            raise ValueError(f"seed_offset must be in [0, 2**63 - 2**62]; got {seed_offset}")
        self.size = size
        self.test_count = test_count
        self.seed_offset = seed_offset
        self._train_file: _MazeFile | None = None
        self._test_file: _MazeFile | None = None
        self.overlap = 0  # test mazes that also appear in the training file

    @classmethod
    def from_files(
        cls,
        train: str | Path | None = None,
        test: str | Path | None = None,
        *,
        test_count: int = 256,
        seed_offset: int = 0,
    ) -> MazeTask:
        """A task over data files in the paper's format (``maxrl maze-data format=official``).

        ``train`` and ``test`` are JSON lists of ``{"sequence", "optimal_path_length"}`` records;
        the prompt is a sequence up to and including ``PATH_START``, the target what follows
        without the final ``<eos>``. The maze size is the files'. A split without a file is
        generated as in ``MazeTask(size, test_count, seed_offset)``: generated training mazes
        avoid every test maze; a training file is used as it is, and when it shares mazes with the
        test set the count is reported (a warning, and ``task.overlap``). Training items are drawn
        from the file without replacement within a call, deterministic in the seed. The paper's
        1M-maze training file (1.8 GB) loads in about 10 s with a peak of about 4 GB of memory;
        its 256 test mazes are none of its training mazes.
        """
        if train is None and test is None:
            raise ValueError("give a train or a test file (or both); MazeTask(size) generates both")
        files = {
            split: _MazeFile(path, split)
            for split, path in (("train", train), ("test", test))
            if path is not None
        }
        sizes = {split: f.item(0).meta["size"] for split, f in files.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"the train file holds {sizes['train']}x{sizes['train']} mazes and the test file "
                f"{sizes['test']}x{sizes['test']}; give files of one size"
            )
        size = next(iter(sizes.values()))
        task = cls(size=size, test_count=test_count, seed_offset=seed_offset)
        task._train_file, task._test_file = files.get("train"), files.get("test")
        if task._test_file is not None:
            task.test_count = len(task._test_file)
        if task._train_file is not None:
            task.overlap = task._count_overlap()
        return task

    def _count_overlap(self) -> int:
        assert self._train_file is not None
        test_texts = [item.prompt[: item.prompt.find(GRID_END)].strip() for item in self._test]
        wanted = set(test_texts)
        found = {text for text in self._train_file.grid_texts() if text in wanted}
        overlap = sum(text in found for text in test_texts)
        if overlap:
            warnings.warn(
                f"{overlap} of the {len(test_texts)} test mazes also appear in the training file "
                f"{str(self._train_file.path)!r}; held-out scores on them are not held out",
                stacklevel=3,
            )
        return overlap

    @cached_property
    def _test(self) -> list[Item]:
        if self._test_file is not None:
            return [self._test_file.item(i) for i in range(len(self._test_file))]
        items: list[Item] = []
        seen: set[str] = set()
        # Enough tries to find any realistic count at size >= 7; size 5 has only 4 mazes.
        budget = 20 * self.test_count + 1000
        for offset in range(budget):
            item = _make_item(self.size, self.seed_offset + offset, "test")
            if item.id not in seen:
                seen.add(item.id)
                items.append(item)
                if len(items) == self.test_count:
                    return items
        raise ValueError(
            f"size {self.size} gave only {len(items)} distinct mazes in {budget} seeds, fewer "
            f"than test_count={self.test_count}; lower test_count or use a larger size"
        )

    @cached_property
    def _test_ids(self) -> frozenset[str]:
        return frozenset(item.id for item in self._test)

    def test_items(self, count: int) -> list[Item]:
        if not 0 <= count <= self.test_count:
            if self._test_file is not None:
                fix = f"the test file {str(self._test_file.path)!r} holds {self.test_count} mazes"
            else:
                fix = f"build MazeTask(test_count={count}) for a larger held-out set"
            raise ValueError(
                f"count must be in [0, test_count={self.test_count}]; got {count}; {fix}"
            )
        return self._test[:count]

    def train_items(self, count: int, seed: int) -> list[Item]:
        if count < 0:
            raise ValueError(f"count must be >= 0; got {count}")
        if self._train_file is not None:
            rng = random.Random(seed)
            n = len(self._train_file)
            order: list[int] = []
            while len(order) < count:
                order.extend(rng.sample(range(n), min(n, count - len(order))))
            return [self._train_file.item(i) for i in order]
        rng = np.random.default_rng(seed)
        test_ids = self._test_ids
        items: list[Item] = []
        rejected = 0
        while len(items) < count:
            need = count - len(items)
            low = self.seed_offset + _TRAIN_SEED_LOW
            for maze_seed in rng.integers(low, self.seed_offset + _TRAIN_SEED_HIGH, need).tolist():
                item = _make_item(self.size, maze_seed, "train")
                if item.id in test_ids:
                    rejected += 1
                else:
                    items.append(item)
            if rejected > 100 + 10 * count:
                raise ValueError(
                    f"size {self.size}: {rejected} of the sampled training mazes are test mazes; "
                    f"the size has too few distinct mazes for test_count={self.test_count}"
                )
        return items

    def verify(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        if len(items) != len(completions):
            raise ValueError(f"got {len(items)} items but {len(completions)} completions")
        out = []
        for item, completion in zip(items, completions):
            cells = item.reference
            if not isinstance(cells, tuple):  # an Item built by hand: fall back to its prompt
                cells = _freeze(parse_prompt(item.prompt) if cells is None else cells)
            start, goal = _endpoints_of(cells)
            out.append(_walk(cells, start, goal, completion))
        return out


def _freeze(grid) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, np.asarray(grid).tolist()))


# A group's rollouts share one grid, so its endpoints are looked up once per group, not per rollout.
@lru_cache(maxsize=8192)
def _endpoints_of(cells: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    return endpoints(cells)


FORMATS = ("jsonl", "official")


@dataclass
class MazeDataConfig:
    """Options of ``maxrl maze-data``."""

    size: int = field(default=9, metadata={"help": "maze side length, odd and >= 5 (paper: 17)"})
    count: int = field(
        default=1000,
        metadata={"help": "jsonl: mazes to write; official: mazes to draw (paper: 1000000)"},
    )
    format: str = field(
        default="jsonl",
        metadata={"help": "jsonl (one split, one file) | official (the paper's train/test.json)"},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "jsonl: sampling seed of the train split (test: fixed); "
            "official: the dataset seed (paper: 0)"
        },
    )
    out: str = field(
        default="???", metadata={"help": "jsonl: output file; official: output folder (required)"}
    )
    split: str = field(default="train", metadata={"help": "jsonl: train or test"})
    test_count: int = field(
        default=256, metadata={"help": "jsonl: size of the held-out set that train mazes avoid"}
    )
    test_size: int = field(
        default=256, metadata={"help": "official: mazes in test.json (the rest go to train.json)"}
    )

    def validate(self) -> None:
        _check_size(self.size)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {self.format!r}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1; got {self.count}")
        if self.format == "official":
            if not 0 <= self.test_size <= self.count:
                raise ValueError(
                    f"test_size={self.test_size} must be in [0, count={self.count}]; "
                    f"lower test_size or raise count"
                )
            return
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'; got {self.split!r}")
        if self.split == "test" and self.count > self.test_count:
            raise ValueError(
                f"count={self.count} exceeds test_count={self.test_count}; "
                f"pass test_count={self.count}"
            )


def main(argv: list[str]) -> int:
    """``maxrl maze-data size=9 count=1000 split=train out=train.jsonl``, or
    ``maxrl maze-data size=17 count=1000000 seed=0 format=official out=DIR``."""
    cfg = _parse(argv)
    if cfg is None:
        return 0
    if cfg.format == "official":
        return _write_official(cfg)
    task = MazeTask(size=cfg.size, test_count=cfg.test_count)
    if cfg.split == "test":
        items = task.test_items(cfg.count)
    else:
        items = task.train_items(cfg.count, cfg.seed)
    path = Path(cfg.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for item in items:
            row = {
                "id": item.id,
                "prompt": item.prompt,
                "answer": item.target,
                "size": item.meta["size"],
                "seed": item.meta["seed"],
            }
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {len(items)} {cfg.split} mazes of size {cfg.size} to {path}")
    return 0


def _write_official(cfg: MazeDataConfig) -> int:
    train, test = official_dataset(cfg.size, cfg.count, cfg.seed, cfg.test_size)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "size": cfg.size,
        "seed": cfg.seed,
        "algorithm": "prim",
        "num_train": len(train),
        "num_test": len(test),
        "test_size": cfg.test_size,
    }
    for name, data in (
        ("train.json", train),
        ("test.json", test),
        ("training_metadata.json", metadata),
    ):
        with (out / name).open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
    print(f"wrote {len(train)} training and {len(test)} test mazes of size {cfg.size} to {out}")
    return 0


def _parse(argv: list[str]) -> MazeDataConfig | None:
    from maxrl.config import parse_cli

    doc = (
        "Write mazes of the paper's generator. format=jsonl (the default) writes one split to "
        "the file out, one object per line with fields id, prompt, answer, size, seed "
        "(generate_maze(size, seed) rebuilds a maze); the train split never holds a test maze. "
        "format=official writes out/train.json, out/test.json and out/training_metadata.json as "
        "the paper's dataset script does: count mazes drawn from one random.Random(seed), "
        "shuffled, the first test_size to test.json; each file a JSON list of "
        '{"sequence": "<bos> GRID_START ... DONE <eos>", "optimal_path_length": n}. The paper\'s '
        "set: size=17 count=1000000 seed=0 test_size=256. Train on such files with "
        "task.data=out/train.json task.test_data=out/test.json."
    )
    return parse_cli(MazeDataConfig, argv, "maze-data", doc)


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
