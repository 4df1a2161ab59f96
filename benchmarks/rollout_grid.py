"""Shared prompt caches read by one batched GEMM over a grid of rows, against one GEMM per prompt.

In shared mode (a prompt's N rollouts decode from one copy of its cache) the kv sampler's
decode attention reads every prompt's cache in one batched GEMM over a (prompts, rows) grid
while groups are small and even (``KVSettings.prompt_grid_max_rows``), and one GEMM per prompt
otherwise. This times RL rollouts of an SFT maze model (``--sft-steps`` of the main job's SFT,
or ``--init``; stop at eos, so rows finish unevenly) with the shipped settings against
``prompt_grid_max_rows=0`` (always a GEMM per prompt), alternating in one process on the same
prompts and seeds, in the sampler precision ``maxrl train`` picks for the packed forward on
this CPU, in ``--workers`` decode streams (1 by default; ``maxrl train`` samples with 2, each
stream then holding half of every prompt's rows). Last line: ``speedup_grid=<ratio>``.

Run: ``python benchmarks/rollout_grid.py`` (the main job's 16 prompts x 16 on 9x9);
``--prompts 16 --rollouts 128 --size 13 --init FOLDER`` for the Figure-3 step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import SETTINGS, warm_start  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", default="", help="start from this model folder (skips SFT)")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT warm-start steps")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--size", type=int, default=9, help="maze side")
    parser.add_argument("--repeats", type=int, default=8, help="timed rounds after one warm-up")
    parser.add_argument("--workers", type=int, default=1, help="decode streams")
    args = parser.parse_args(argv)
    from maxrl.groups import sample_groups
    from maxrl.models.loading import load_policy, quiet_transformers
    from maxrl.rollout import SamplingParams
    from maxrl.rollout.kv import KVCacheSampler, settings_for
    from maxrl.seeding import keep_freed_memory
    from maxrl.tasks.maze import MazeTask
    from maxrl.train.logprobs import bf16_is_fast

    torch.set_num_threads(1)
    keep_freed_memory()
    quiet_transformers()
    s = dict(SETTINGS["main"], size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_policy(warm_start(args, s, Path(tmp)))
    model.eval()
    task = MazeTask(size=args.size, test_count=4)
    params = SamplingParams(s["new_tokens"], stop_token_ids=(tokenizer.eos_token_id,))
    precision = "bfloat16" if bf16_is_fast(torch.device("cpu")) else "float32"
    shipped = settings_for(torch.device("cpu"))
    variants = {
        "grid (shipped)": shipped,
        "a GEMM per prompt": dataclasses.replace(shipped, prompt_grid_max_rows=0),
    }
    samplers = {
        name: KVCacheSampler(
            workers=args.workers, max_batch_size=4096, settings=v, precision=precision
        )
        for name, v in variants.items()
    }
    times = {name: [] for name in samplers}
    for r in range(args.repeats + 1):
        items = task.train_items(args.prompts, seed=100 + r)
        for name, sampler in samplers.items():
            gen = torch.Generator().manual_seed(r)
            start = time.perf_counter()
            sample_groups(model, tokenizer, task, items, args.rollouts, sampler, params, gen)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.prompts} prompts x {args.rollouts} rollouts, {args.size}x{args.size} mazes, "
        f"{precision}, {args.workers} stream(s), median of {args.repeats}:"
    )
    for name, m in medians.items():
        print(f"  {name}: {m:.3f} s")
    print(f"speedup_grid={medians['a GEMM per prompt'] / medians['grid (shipped)']:.2f}")


if __name__ == "__main__":
    main()
