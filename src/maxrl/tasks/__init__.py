"""Tasks: prompts plus a binary verifier (see :mod:`maxrl.tasks.base`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from maxrl.tasks.base import Item, Task


def _h(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class TaskConfig:
    """Which task to train and evaluate on (the ``task`` section of ``maxrl train``)."""

    name: str = _h("task: maze | math", "maze")
    maze_size: int = _h(
        "odd maze side length (the paper uses 17); a maze data file sets its own", 9
    )
    data: str = _h(
        "training data. math: JSONL, parquet, or a `datasets` name or path; maze (optional): a "
        "train.json of `maxrl maze-data format=official` or the paper's",
        "",
    )
    test_data: str = _h("held-out data (math: same formats; maze: a test.json)", "")
    test_count: int = _h("held-out prompts for evaluation (generated mazes: the held-out set)", 64)
    verify_timeout: float = _h("math: seconds per answer check before it scores 0", 5.0)
    false_positive_rate: float = _h(
        "a noisy training verifier: the chance that a wrong rollout scores 1 (evaluation always "
        "scores with the clean verifier)",
        0.0,
    )
    false_negative_rate: float = _h(
        "a noisy training verifier: the chance that a right rollout scores 0", 0.0
    )


def make_task(cfg: TaskConfig, tokenizer=None) -> Task:
    """The task a ``TaskConfig`` names (imports each task's module only when used)."""
    if cfg.name == "maze":
        from maxrl.tasks.maze import MazeTask

        if tokenizer is not None:  # a model saved with other maze ids must not run on this text
            from maxrl.models.tokenizer import check_maze_vocabulary

            check_maze_vocabulary(tokenizer)
        if cfg.data or cfg.test_data:  # the paper's data files; their size wins over maze_size
            return MazeTask.from_files(
                cfg.data or None, cfg.test_data or None, test_count=max(cfg.test_count, 1)
            )
        return MazeTask(size=cfg.maze_size, test_count=max(cfg.test_count, 1))
    if cfg.name == "math":
        from maxrl.tasks.math import MathTask

        if not cfg.data and not cfg.test_data:
            raise ValueError(
                "task.name=math needs task.data=PATH (JSONL, parquet or a datasets path) for "
                "training, or task.test_data=PATH for evaluation alone"
            )
        # without held-out data, the last test_count training records are held out
        return MathTask.from_sources(
            cfg.data or None,
            cfg.test_data or None,
            tokenizer=tokenizer,
            timeout_s=cfg.verify_timeout,
            test_size=0 if cfg.test_data else cfg.test_count,
        )
    raise ValueError(f"unknown task {cfg.name!r}; choose maze or math")


__all__ = ["Item", "Task", "TaskConfig", "make_task"]
