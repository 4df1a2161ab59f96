"""Run metrics: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when asked.

Keys under ``time/`` hold wall-clock figures; everything else is a deterministic function of the
seed on a given machine and set of library versions, which the resume test relies on.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a crash leaves either the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with open(tmp) as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class MetricsLogger:
    """One record per step to ``metrics.jsonl``, TensorBoard and Weights & Biases.

    With ``resume_step >= 0`` the records after that step are dropped first: a crashed run may
    have logged past its last checkpoint, and those steps are replayed.
    """

    def __init__(
        self,
        out_dir: Path,
        tensorboard: bool = True,
        wandb_project: str = "",
        config: dict | None = None,
        resume_step: int = -1,
    ):
        self.path = out_dir / "metrics.jsonl"
        if resume_step >= 0 and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", -1) <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tb"))
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError(
                    "run.wandb_project is set but wandb is missing: pip install wandb"
                ) from exc
            self._wandb = wandb.init(project=wandb_project, dir=str(out_dir), config=config)

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    return v


class Timer:
    """Wall-clock laps: ``lap()`` returns the seconds since the previous lap (or creation)."""

    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt
