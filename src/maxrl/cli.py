"""The ``maxrl`` command. Each subcommand lives in its own module and is imported on use."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with a ``main(argv) -> int``, one-line description)
COMMANDS = {
    "train": ("maxrl.train.rl", "RL training (SFT warm-start first when no checkpoint is given)"),
    "sft": ("maxrl.train.sft", "supervised warm-start on task demonstrations"),
    "eval": ("maxrl.eval.evaluate", "pass@k evaluation of a checkpoint on held-out prompts"),
    "sweep": ("maxrl.sweep", "a grid of estimators x rollouts per prompt x seeds"),
    "classify": ("maxrl.train.classify", "classification as RL: exact pass@k, CE vs MaxRL"),
    "maze-data": ("maxrl.tasks.maze", "write maze datasets: JSONL, or the paper's train/test.json"),
}


def usage() -> str:
    lines = ["usage: maxrl COMMAND [CONFIG.yaml] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `maxrl COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"maxrl: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
