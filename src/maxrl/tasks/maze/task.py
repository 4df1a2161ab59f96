"""``MazeTask``: a fixed held-out set and an endless, disjoint training stream of mazes, generated
or read from the paper's data files."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from maxrl.tasks.base import Item
from maxrl.tasks.maze.grid import (
    _TRAIN_SEED_HIGH,
    _TRAIN_SEED_LOW,
    DONE,
    EOS,
    GRID_END,
    MOVES,
    PATH_START,
    _check_size,
    _walk,
    endpoints,
    format_answer,
    format_prompt,
    generate_maze,
    grid_id,
    mark_endpoints,
    parse_prompt,
    score_moves,
    solve,
)


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
