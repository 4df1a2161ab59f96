"""One training method of a comparison, as ``maxrl sweep`` and ``maxrl classify`` list them.

A method is an advantage estimator of :mod:`maxrl.advantages` with its parameters (``ce``,
cross-entropy, in ``maxrl classify``), a label for tables and files, and, for a sweep, config
overrides that turn it into the paper's variant (GRPO + entropy is ``grpo`` with
``algo.entropy_coef`` set). Parameters may follow the group size: ``T: N`` or ``k: N/4``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from maxrl import advantages

CROSS_ENTROPY = "ce"


@dataclass
class MethodSpec:
    """One method of a comparison."""

    estimator: str = field(
        default="maxrl",
        metadata={"help": "advantage estimator of maxrl.advantages ('ce' in classify)"},
    )
    params: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "estimator parameters; T or k may be 'N' or 'N/<d>' (of the group size)"},
    )
    name: str = field(
        default="",
        metadata={"help": "label in tables and files; empty = estimator[_N<samples>][_<param>]"},
    )
    samples: int = field(
        default=0,
        metadata={"help": "classify: labels sampled per example, N (0 for ce); sweep: leave 0"},
    )
    overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "sweep: key=value settings of each run, e.g. [algo.entropy_coef=0.01]"},
    )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.estimator == CROSS_ENTROPY:
            return CROSS_ENTROPY
        sized = f"_N{self.samples}" if self.samples else ""
        extras = "".join(f"_{key}{value}" for key, value in sorted(self.params.items()))
        return f"{self.estimator}{sized}{extras}"

    def params_for(self, n: int) -> dict:
        """The parameters for a group of ``n``: 'N' and 'N/<d>' become numbers."""
        return resolve_params(self.params, n)

    def validate(self, n: int) -> None:
        """Raise ValueError naming the method when it cannot run with groups of ``n``."""
        if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", self.label):
            raise ValueError(
                f"method name {self.label!r} must use only letters, digits and _.=+- (a file name)"
            )
        try:
            advantages.validate_params(self.estimator, n, **self.params_for(n))
        except ValueError as exc:
            raise ValueError(f"method {self.label!r}: {exc}") from None


def resolve_params(params: dict, n: int) -> dict:
    """Turn 'N' and 'N/<d>' into numbers for a group of ``n``."""
    out = {}
    for key, value in params.items():
        if isinstance(value, str) and value.startswith("N"):
            div = int(value.split("/")[1]) if "/" in value else 1
            value = max(1, n // div)
        out[key] = value
    return out


def check_unique(methods: list[MethodSpec]) -> None:
    labels = [m.label for m in methods]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(
                f"method names must be unique: two methods are labelled {label!r}; name them"
            )
