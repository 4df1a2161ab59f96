"""The update under glibc's default allocator settings against ``keep_freed_memory``.

``maxrl train`` calls :func:`maxrl.seeding.keep_freed_memory` (``run.keep_freed_memory``, on by
default), which tells glibc to serve requests below 1 GiB from its heap and not to trim the heap,
so that a step's large temporaries reuse the pages the step before freed instead of faulting in
fresh ones. The setting is process-wide, so this runs the update in child processes, alternating
the two settings: each child loads the model, samples the main job's batch (16 prompts x 16
rollouts, 9x9 mazes, the same generator seed in every child), runs two untimed updates, then
times ``--steps`` updates (the packed forward and backward, bf16 linear layers, micro-batch by
micro-batch as the trainer runs them) and counts the minor page faults they take. It prints,
per setting, the median over rounds of each child's median seconds and faults per update, and
last ``keep_freed_vs_default=<ratio of seconds>``.

Run: ``python benchmarks/allocator.py --init <model folder>`` (without ``--init``, a 300-step SFT
first, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import SETTINGS, warm_start  # noqa: E402

MODES = ("default", "keep_freed_memory")


def child(init: str, mode: str, steps: int) -> None:
    from train_step import VARIANTS, batch, step

    from maxrl.models.loading import load_policy, quiet_transformers
    from maxrl.seeding import keep_freed_memory

    if mode == "keep_freed_memory" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory did not apply (not glibc)")
    torch.set_num_threads(1)
    quiet_transformers()
    s = SETTINGS["main"]
    model, tokenizer = load_policy(init)
    groups = batch(model, tokenizer, s)
    model.train()
    variant = VARIANTS["packed_bf16"]
    for _ in range(2):
        step(model, groups, s["micro"], **variant)
    times, faults = [], []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step(model, groups, s["micro"], **variant)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps([statistics.median(times), statistics.median(faults)]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", default="", help="start from this model folder (skips SFT)")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT warm-start steps")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of children")
    parser.add_argument("--steps", type=int, default=7, help="timed updates per child")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.init, args.child, args.steps)
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        init = warm_start(args, SETTINGS["main"], Path(tmp))
        runs = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                command = [sys.executable, __file__, "--child", mode, "--init", init,
                           "--steps", str(args.steps)]  # fmt: skip
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for mode, results in runs.items():
        seconds = [r[0] for r in results]
        print(
            f"{mode}: {statistics.median(seconds):.3f} s per update (children "
            f"{', '.join(f'{t:.3f}' for t in seconds)}); "
            f"{statistics.median(r[1] for r in results):.0f} page faults per update"
        )
    default = statistics.median(r[0] for r in runs["default"])
    tuned = statistics.median(r[0] for r in runs["keep_freed_memory"])
    print(f"keep_freed_vs_default={default / tuned:.2f}")


if __name__ == "__main__":
    main()
