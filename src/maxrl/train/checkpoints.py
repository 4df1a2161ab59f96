"""Checkpoints that a crash cannot corrupt.

A checkpoint is a Hugging Face model folder (``save_pretrained``) plus the optimiser and
scheduler state and the step. Together with the seeded streams of :mod:`maxrl.seeding` that is
all a run needs to resume exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from maxrl.metrics import atomic_write_text


def save_checkpoint(
    out_dir: Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step_{step}`` atomically, then point ``checkpoints/latest`` at it.

    The folder is written under a temporary name and renamed when complete, and ``latest`` is
    replaced only after that: a crash at any moment leaves the previous checkpoint intact and
    ``latest`` naming a complete one.
    """
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / "trainer_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint ``checkpoints/latest`` names, or None."""
    pointer = out_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = out_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_trainer_state(path: Path, optimizer, scheduler) -> dict:
    """Restore the optimiser and scheduler saved in ``path``; return its ``state.json``."""
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads((path / "state.json").read_text())
