"""Seeded random streams and process settings (threads, the allocator), shared by training,
evaluation and sweeps.

Every random choice of step ``s`` (its prompts, its rollouts, its minibatch order, its
evaluation samples) is drawn from a generator seeded by ``(run seed, s, stream name)``, so the
state a run must carry across a restart is only the model, the optimiser, the scheduler and the
step: resuming from a checkpoint replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


_ALLOCATOR_TUNED = False
# glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD as keep_freed_memory sets them: requests below
# 1 GiB come from the heap, and the heap is trimmed only when over 2 GiB of it lies free at its
# top (the largest value a C int holds)
MMAP_THRESHOLD = 2**30
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory for reuse (``mallopt``: no trimming, and no
    separate mapping below 1 GiB), so that a training step's large temporaries reuse pages
    instead of faulting in fresh ones every step. The process's resident memory then stays at
    its peak. Measured on the main job's update (benchmarks/rl_step.py, docs/results.md): about
    10% faster on the 2-core development machine. Returns whether it applied (glibc only)."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt(int, int): each value must fit a C int (ctypes would otherwise pass the low 32
    # bits: 2**62 became 0, a trim threshold of zero, which returned freed memory on every free)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    _ALLOCATOR_TUNED = bool(
        mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )
    return _ALLOCATOR_TUNED


def process_settings(run) -> None:
    """Apply a ``RunConfig``'s process settings: torch threads and :func:`keep_freed_memory`."""
    set_threads(run.threads)
    if run.keep_freed_memory:
        keep_freed_memory()
