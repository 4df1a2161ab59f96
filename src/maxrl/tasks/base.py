"""The interface every task follows: items, a batch verifier, and disjoint train/test splits.

A task hands the trainer text prompts and scores text completions with binary rewards. The
trainer never looks inside an item beyond ``prompt``; everything the verifier needs travels in
``reference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Item:
    """One prompt of a task.

    Attributes:
        id: a stable identifier, unique within the task (used to prove train/test disjointness).
        prompt: the text the policy is conditioned on.
        reference: whatever the verifier needs (a maze grid, a gold answer, a label).
        target: an optional demonstration completion, used by supervised warm-start.
    """

    id: str
    prompt: str
    reference: Any = None
    target: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A source of train and held-out items with a binary verifier."""

    name: str

    def train_items(self, count: int, seed: int) -> list[Item]:
        """``count`` training items, deterministic in ``seed``, never overlapping the test split."""
        ...

    def test_items(self, count: int) -> list[Item]:
        """The first ``count`` held-out items (a fixed set that does not depend on the seed)."""
        ...

    def verify(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        """Reward 1.0 or 0.0 for each (item, completion) pair; never raises on a completion."""
        ...
