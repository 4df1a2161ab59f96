"""Scoring completions in worker processes with a hard per-item deadline.

A verifier can take unbounded time on a pathological completion (math-verify's parser and
sympy, say), and math-verify's own timeout uses SIGALRM, which works only in a main thread. So
:class:`AnswerChecker` runs a check function in a small pool of worker processes, each in its
main thread, and gives every item a hard deadline in the parent: a worker that misses it is
killed and replaced, the item scores 0, and the rest of the batch goes on. Workers are started
with ``spawn`` (``fork`` is unsafe once torch or CUDA threads exist), so scripts that use it must
guard their entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

# what a worker sends once it has started, imported the check's module and run the check once;
# the deadline of its first item runs from then, not from its spawn
_READY = "ready"
# how long a fresh worker may take to start (interpreter, imports) before it counts as hung
STARTUP_S = 120.0


def _worker_loop(conn: Connection, check: Callable[[str, str], bool]) -> None:
    """Check (index, gold, completion) jobs one at a time, answering each as soon as it is done.

    One check of a trivial pair runs first (its result and any error ignored), so that imports
    the check makes on its first call (math-verify's) count as start-up too."""
    try:
        check("1", "1")
    except Exception:  # the warm-up only loads what the check needs
        pass
    conn.send(_READY)
    while True:
        try:
            jobs = conn.recv()
        except EOFError:
            return
        if jobs is None:
            return
        for index, gold, completion in jobs:
            try:
                score, error = (1.0 if check(gold, completion) else 0.0), None
            except Exception as exc:  # a verifier bug must not end the run
                score, error = 0.0, f"{type(exc).__name__}: {exc}"
            conn.send((index, score, error))


class _Worker:
    def __init__(self, ctx, check):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child, check), daemon=True)
        self.process.start()
        child.close()
        self.jobs: deque[tuple[int, str, str]] = deque()  # sent, not yet answered, in order
        self.deadline = float("inf")
        self.ready = False

    def send(self, jobs: list[tuple[int, str, str]], timeout_s: float) -> None:
        self.jobs.extend(jobs)
        self.conn.send(jobs)
        self.deadline = time.monotonic() + timeout_s + (0.0 if self.ready else STARTUP_S)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass
    for worker in workers:
        worker.process.join(timeout=1)
        if worker.process.is_alive():
            worker.kill()


class AnswerChecker:
    """Scores (gold, completion) pairs in worker processes with a hard per-item timeout.

    Items go to the workers in chunks (one message per chunk keeps the transport cost per item
    small); each worker answers item by item, and every answer restarts that worker's deadline
    of ``timeout_s``. A fresh worker's first deadline runs from when it reports itself started
    (its interpreter up, the check's module imported and the check run once, within
    ``STARTUP_S``), so that a slow start under load does not score a right answer 0. A worker
    that misses its deadline or dies is killed and replaced: its current item scores 0 and its
    unanswered items are sent again. Counters of checks, errors, timeouts and restarts are kept
    in :attr:`stats`.

    Args:
        check: ``check(gold, completion) -> bool``, a module-level function (it is pickled to
            the workers).
        workers: number of worker processes.
        timeout_s: the hard limit per item, in seconds.
        chunk_size: items per message to a worker.
    """

    def __init__(
        self,
        check: Callable[[str, str], bool],
        *,
        workers: int = 1,
        timeout_s: float = 5.0,
        chunk_size: int = 32,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0; got {timeout_s}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.check = check
        self.num_workers = workers
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        self.stats = {"checked": 0, "errors": 0, "timeouts": 0, "restarts": 0}
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    def close(self) -> None:
        """Stop the workers (they are also stopped when the checker is garbage-collected)."""
        self._finalizer()

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        self.stats["restarts"] += 1
        fresh = _Worker(self._ctx, self.check)
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores (1.0 or 0.0) of ``(gold, completion)`` pairs, in order."""
        scores = [0.0] * len(pairs)
        pending = deque((i, gold, completion) for i, (gold, completion) in enumerate(pairs))
        if not pending:
            return scores
        while len(self._workers) < min(self.num_workers, len(pending)):
            self._workers.append(_Worker(self._ctx, self.check))
        errors: list[str] = []
        timeouts = 0

        def feed(worker: _Worker) -> None:
            chunk = [pending.popleft() for _ in range(min(self.chunk_size, len(pending)))]
            if chunk:
                worker.send(chunk, self.timeout_s)

        for worker in list(self._workers):
            feed(worker)
        while any(w.jobs for w in self._workers):
            busy = [w for w in self._workers if w.jobs]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy], timeout=wait_s))
            for worker in busy:
                failed = False
                if worker.conn in ready:
                    try:
                        while worker.jobs and worker.conn.poll():
                            message = worker.conn.recv()
                            if message == _READY:  # its first item's deadline starts now
                                worker.ready = True
                                worker.deadline = time.monotonic() + self.timeout_s
                                continue
                            index, score, error = message
                            worker.jobs.popleft()
                            scores[index] = score
                            if error is not None:
                                errors.append(error)
                            worker.deadline = time.monotonic() + self.timeout_s
                    except (EOFError, OSError):  # the worker died (e.g. killed for memory)
                        failed = True
                if failed or (worker.jobs and time.monotonic() >= worker.deadline):
                    worker.jobs.popleft()  # the item it was stuck on (or died on) scores 0
                    timeouts += 1
                    rest = list(worker.jobs)
                    worker = self._replace(worker)
                    if rest:
                        worker.send(rest, self.timeout_s)
                if not worker.jobs:
                    feed(worker)
        self.stats["checked"] += len(pairs)
        self.stats["errors"] += len(errors)
        self.stats["timeouts"] += timeouts
        if errors:
            warnings.warn(
                f"{len(errors)} of {len(pairs)} answer checks raised and scored 0 "
                f"({self.stats['errors']} so far); first: {errors[0]}",
                RuntimeWarning,
                stacklevel=2,
            )
        if timeouts:
            warnings.warn(
                f"{timeouts} of {len(pairs)} answer checks ran past {self.timeout_s:g} s or "
                f"crashed and scored 0 ({self.stats['timeouts']} so far); their workers were "
                f"restarted",
                RuntimeWarning,
                stacklevel=2,
            )
        return scores
