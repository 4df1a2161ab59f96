"""Seeded random streams and thread settings, shared by training, evaluation and sweeps.

Every random choice of step ``s`` (its prompts, its rollouts, its minibatch order, its
evaluation samples) is drawn from a generator seeded by ``(run seed, s, stream name)``, so the
state a run must carry across a restart is only the model, the optimiser, the scheduler and the
step: resuming from a checkpoint replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import hashlib

import torch


def step_seed(seed: int, step: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of one step, independent across streams."""
    digest = hashlib.blake2b(f"{seed}/{step}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, step: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`step_seed`."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads; 0 keeps torch's default (one per core)."""
    if threads > 0:
        torch.set_num_threads(threads)
