"""Fail unless this environment holds maxrl's core alone: numpy, torch and what they need.

Run in a fresh virtual environment after ``pip install .``; then ``import maxrl.advantages``,
``maxrl.objectives``, ``maxrl.passk`` and ``maxrl.majority`` must work.
"""

import importlib
import re
import sys
from importlib import metadata

TOOLS = {"pip", "setuptools", "wheel", "maxrl"}


def name(text: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")


def needs(dist: str) -> set[str]:
    """The installed closure of ``dist``'s unconditional requirements."""
    seen, todo = set(), [dist]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            requires = metadata.requires(current) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [name(r) for r in requires if "extra ==" not in r]
    return seen


allowed = needs("numpy") | needs("torch")
installed = {name(d.metadata["Name"]) for d in metadata.distributions()}
extra = sorted(installed - allowed - TOOLS)
if extra:
    sys.exit(f"the core install pulled packages beyond numpy and torch: {', '.join(extra)}")
for module in ("maxrl.advantages", "maxrl.objectives", "maxrl.passk", "maxrl.majority"):
    importlib.import_module(module)
print(f"core install: {len(installed - TOOLS)} packages, all numpy's and torch's; imports work")
