"""``maxrl maze-data``: maze datasets as JSONL, or as the paper's ``train.json``/``test.json``."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from maxrl.tasks.maze.grid import (
    EOS,
    _check_size,
    format_answer,
    format_prompt,
    maze_stream,
    solve,
)
from maxrl.tasks.maze.task import MazeTask


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
