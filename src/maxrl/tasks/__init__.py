"""Tasks: prompts plus a binary verifier (see :mod:`maxrl.tasks.base`)."""

from __future__ import annotations

from maxrl.tasks.base import Item, Task


def make_task(cfg, tokenizer=None) -> Task:
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

        if not cfg.data:
            raise ValueError(
                "task.name=math needs task.data=PATH (JSONL, parquet or a datasets path)"
            )
        # without held-out data, the last test_count training records are held out
        return MathTask.from_sources(
            cfg.data,
            cfg.test_data or None,
            tokenizer=tokenizer,
            timeout_s=cfg.verify_timeout,
            test_size=0 if cfg.test_data else cfg.test_count,
            zero_truncated=False,
        )
    raise ValueError(f"unknown task {cfg.name!r}; choose maze or math")


__all__ = ["Item", "Task", "make_task"]
