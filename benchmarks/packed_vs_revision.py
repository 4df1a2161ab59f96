"""The packed training forward of a git revision against the working tree's, alternating.

A change to :mod:`maxrl.train.packed` is timed against the same module at ``--rev`` in one
process: the revision's ``src/maxrl/train/packed.py`` (read with ``git show``) is loaded as a
module beside the working tree's, and the update's forward and backward of the main job's batch
(16 prompts x 16 rollouts, 9x9 mazes, an SFT warm-start of the ``small`` model; bf16 linear
layers, one stream, micro-batch by micro-batch as ``benchmarks/train_step.py`` runs it) runs
with each in turn, ``--rounds`` times. Before timing, it says whether the two give the same
log-probabilities, entropies and gradients on one micro-batch (bitwise, and the gradients'
relative difference). It prints the median seconds of each and last
``working_tree_vs_rev=<ratio>``. The revision's module must run against the working tree's
other modules (it imports them).

Run: ``python benchmarks/packed_vs_revision.py --rev HEAD~1 --init <model folder>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import SETTINGS, warm_start  # noqa: E402
from train_step import batch, step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str, folder: Path):
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:src/maxrl/train/packed.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = folder / "packed_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("packed_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gradients(model, groups, forward, precision: str):
    from maxrl.train.logprobs import compute_precision

    n = groups.group_size
    index = torch.arange(min(groups.num_prompts, 256 // n))
    tokens, lengths = groups.responses(groups.rows(index))
    prompts = [groups.prompt_ids[i] for i in index.tolist()]
    model.zero_grad(set_to_none=True)
    with compute_precision(model, precision):
        logp, mask, ent = forward(model, prompts, tokens, lengths, n, 1.0, True)
    (-(logp * mask).sum() / mask.sum()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return logp.detach(), ent.detach(), grads


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--init", default="", help="start from this model folder (skips SFT)")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT warm-start steps")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timed rounds")
    parser.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import maxrl.train.packed as working_tree
    from maxrl.models.loading import load_policy, quiet_transformers
    from maxrl.seeding import keep_freed_memory

    keep_freed_memory()
    quiet_transformers()
    s = SETTINGS["main"]
    with tempfile.TemporaryDirectory() as tmp:
        revision = load_revision(args.rev, Path(tmp))
        args.preset, args.size = None, None
        model, tokenizer = load_policy(warm_start(args, s, Path(tmp)))
    groups = batch(model, tokenizer, s)
    model.train()
    forwards = {"rev": revision.packed_logprobs, "working_tree": working_tree.packed_logprobs}
    (lr, er, gr), (lw, ew, gw) = (
        gradients(model, groups, f, args.precision) for f in forwards.values()
    )
    print(
        f"{args.rev} against the working tree ({args.precision}): log-probabilities bitwise "
        f"{torch.equal(lr, lw)}, entropies {torch.equal(er, ew)}, gradients {torch.equal(gr, gw)} "
        f"(relative difference {float((gr - gw).norm() / gr.norm()):.2e})"
    )

    def run(name: str) -> float:
        with mock.patch.object(working_tree, "packed_logprobs", forwards[name]):
            start = time.perf_counter()
            step(model, groups, s["micro"], packed=True, precision=args.precision)
            return time.perf_counter() - start

    for name in forwards:
        run(name)  # warm-up
    times = {name: [] for name in forwards}
    for _ in range(args.rounds):
        for name in forwards:
            times[name].append(run(name))
    for name, runs in times.items():
        print(f"{name}: {statistics.median(runs):.3f} s ({', '.join(f'{t:.3f}' for t in runs)})")
    ratio = statistics.median(times["rev"]) / statistics.median(times["working_tree"])
    print(f"working_tree_vs_rev={ratio:.3f}")


if __name__ == "__main__":
    main()
