"""The ``maxrl`` command. Each subcommand lives in its own module and is imported on use.

A user error (a config key, value or file that does not fit, an unknown estimator or a bad
parameter, data the task cannot read) prints one line, ``maxrl <command>: error: <message>``,
and exits with status 2. ``--debug`` anywhere on the command line, or ``MAXRL_DEBUG=1`` in the
environment, shows the traceback instead. Unexpected errors always keep their traceback.
"""

from __future__ import annotations

import importlib
import os
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

# errors that mean the user's input does not fit: one line, exit status 2
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def usage() -> str:
    lines = ["usage: maxrl COMMAND [CONFIG.yaml] [key=value ...] [--debug]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += [
        "",
        "Run `maxrl COMMAND --help` for a command's options. Errors in the input print one line;",
        "--debug (or MAXRL_DEBUG=1) shows their traceback.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MAXRL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"maxrl: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except ImportError as exc:  # a missing optional dependency; a missing maxrl module is a bug
        if debug or (exc.name or "").startswith("maxrl"):
            raise
        if isinstance(exc, ModuleNotFoundError):
            hint = f"`maxrl {name}` needs the trainer's packages: pip install 'maxrl[train]'"
            return _fail(name, f"{exc}; {hint}")
        return _fail(name, str(exc))
    except USER_ERRORS as exc:
        if debug:
            raise
        return _fail(name, str(exc))
    except RuntimeError as exc:
        from maxrl.train.setup import NonFiniteLossError

        if debug or not isinstance(exc, NonFiniteLossError):
            raise
        return _fail(name, str(exc), status=1)


def _fail(command: str, message: str, status: int = 2) -> int:
    print(f"maxrl {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
