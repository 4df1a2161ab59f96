"""The main job's rollouts and evaluation sampled in one decode stream against two.

``maxrl train`` samples its RL rollouts and evaluations with ``rollout.workers`` decode streams
(2 by default), each a Python thread with one intra-op thread, over a slice of the batch. This
times the two batches the main job samples, alternating one and two streams in the same
process, on the same prompts and generator seeds: an RL step's rollouts (16 prompts x 16, 9x9
mazes, the ``small`` model, 64 new tokens, stop at eos, in the sampler precision ``maxrl
train`` picks for the packed forward on this CPU) and an evaluation (64 held-out mazes x 64
samples, float32). The model is an SFT warm-start (``--sft-steps`` of the main job's SFT, or
``--init``), so responses have a trained policy's length. It prints the median seconds of each
and, last, ``speedup_two_streams=<rollout ratio>,<evaluation ratio>``.

Run: ``python benchmarks/rollout_workers.py`` (a few minutes, SFT included).
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after one warm-up")
    args = parser.parse_args(argv)
    from maxrl.groups import sample_groups
    from maxrl.models.loading import load_policy, quiet_transformers
    from maxrl.rollout import SamplingParams
    from maxrl.rollout.kv import KVCacheSampler
    from maxrl.seeding import keep_freed_memory
    from maxrl.tasks.maze import MazeTask
    from maxrl.train.logprobs import bf16_is_fast

    torch.set_num_threads(1)
    keep_freed_memory()
    quiet_transformers()
    s = SETTINGS["main"]
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_policy(warm_start(args, s, Path(tmp)))
    model.eval()
    task = MazeTask(size=s["size"], test_count=64)
    params = SamplingParams(s["new_tokens"], stop_token_ids=(tokenizer.eos_token_id,))
    rollout_precision = "bfloat16" if bf16_is_fast(torch.device("cpu")) else "float32"
    batches = {
        "rollouts": (lambda r: task.train_items(s["prompts"], seed=100 + r), s["rollouts"],
                     rollout_precision),
        "evaluation": (lambda r: task.test_items(64), 64, "float32"),
    }  # fmt: skip
    times = {(b, w): [] for b in batches for w in (1, 2)}
    for r in range(args.repeats + 1):
        for name, (items_of, n, precision) in batches.items():
            items = items_of(r)
            for workers in (1, 2):
                sampler = KVCacheSampler(workers=workers, max_batch_size=4096, precision=precision)
                gen = torch.Generator().manual_seed(r)
                start = time.perf_counter()
                sample_groups(model, tokenizer, task, items, n, sampler, params, gen)
                if r:  # the first round warms up
                    times[(name, workers)].append(time.perf_counter() - start)
    ratios = []
    for name, (_, n, precision) in batches.items():
        one, two = (statistics.median(times[(name, w)]) for w in (1, 2))
        ratios.append(one / two)
        print(f"{name} ({n} per prompt, {precision}): one stream {one:.3f} s, two {two:.3f} s, "
              f"{one / two:.2f}x")  # fmt: skip
    print(f"speedup_two_streams={ratios[0]:.2f},{ratios[1]:.2f}")


if __name__ == "__main__":
    main()
