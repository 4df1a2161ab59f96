"""The update's forward and backward on one rollout batch, by variant, against the matmul peak.

One batch of the main job's shape (16 prompts x 16 rollouts of 9x9 mazes, the ``small`` model,
an SFT warm-start so responses have a trained policy's length; ``--setting fig3`` for 16 x 128 on
13x13 with ``paper``) is sampled once; then each variant computes the response log-probabilities
and entropies and backpropagates a loss through them, micro-batch by micro-batch as the trainer
does. Variants alternate, ``--repeats`` rounds, median per variant:

- ``hf``: the model's own forward, each prompt once with its KV cache shared by its rollouts (the
  trainer before its packed forward; ``model.packed=false``);
- ``packed``: :mod:`maxrl.train.packed` in float32;
- ``packed_bf16``: the packed forward with bf16 matmuls (``model.precision=bfloat16``);
- ``packed_bf16_one_call``: the same, with the response attention as one SDPA call over each
  row's prompt keys (broadcast to its rows) and own keys, as off CPU, instead of the two flash
  calls merged by log-sum-exp (``_SplitAttention``) that CPU runs: the ablation of that split;
- ``packed_bf16_two_streams``: ``packed_bf16`` with each micro-batch's groups split over two
  threads of one intra-op thread each (``run.update_workers=2``, :mod:`maxrl.train.streams`,
  the default of ``maxrl train``); the others run one stream, on one core. Its fraction of the
  peak is against one core's, so two cores can take it past 100%.

Each line gives the seconds, the speedup over ``hf``, and the fraction of this core's fp32 and
bf16 matmul peak that the variant's linear-layer FLOPs reach. The peak is measured in the same
process on a GEMM of the model's MLP shape. The FLOPs are those the packed forward needs: 2 x
(tokens it runs) x (linear weights) in the forward and twice that in the backward, tokens being
the prompts once and each response's real tokens; attention and the lm head are left out, so the
fraction is a lower bound. ``--profile VARIANT`` prints where that variant's time goes.

Run: ``python benchmarks/train_step.py`` (a few minutes, SFT included; ``--init`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import SETTINGS, warm_start  # noqa: E402

VARIANTS = {
    "hf": dict(packed=False, precision="float32"),
    "packed": dict(packed=True, precision="float32"),
    "packed_bf16": dict(packed=True, precision="bfloat16"),
    "packed_bf16_one_call": dict(packed=True, precision="bfloat16", split=False),
    "packed_bf16_two_streams": dict(packed=True, precision="bfloat16", workers=2),
}


def peak_gflops(m: int, k: int, n: int, dtype) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def batch(model, tokenizer, s):
    from maxrl.groups import make_rollout_sampler, sample_groups
    from maxrl.rollout import SamplingParams
    from maxrl.tasks.maze import MazeTask

    task = MazeTask(size=s["size"], test_count=4)
    items = task.train_items(s["prompts"], seed=1)
    params = SamplingParams(s["new_tokens"], stop_token_ids=(tokenizer.eos_token_id,))
    gen = torch.Generator().manual_seed(0)
    return sample_groups(model, tokenizer, task, items, s["rollouts"], make_rollout_sampler("kv"),
                         params, gen)  # fmt: skip


def step(
    model, groups, micro: int, packed: bool, precision: str, split: bool = True, workers: int = 1
) -> None:
    import maxrl.train.packed as packed_module

    one_call = mock.patch.object(packed_module, "_splits_attention", lambda device: False)
    with contextlib.nullcontext() if split else one_call:
        _step(model, groups, micro, packed, precision, workers)


def _step(model, groups, micro: int, packed: bool, precision: str, workers: int) -> None:
    from maxrl.train.streams import backward_in_streams, shards

    n = groups.group_size
    per = max(1, micro // n)
    params = [p for p in model.parameters() if p.requires_grad]
    for start in range(0, groups.num_prompts, per):
        index = torch.arange(start, min(groups.num_prompts, start + per))
        denom = float((groups.lengths[groups.rows(index)]).sum())
        losses = [
            functools.partial(_loss, model, groups, part, precision, packed, denom)
            for part in shards(index, workers)
        ]
        backward_in_streams(losses, params)
    model.zero_grad(set_to_none=True)


def _loss(model, groups, index, precision: str, packed: bool, denom: float):
    from maxrl.train.logprobs import compute_precision, policy_logprobs

    tokens, lengths = groups.responses(groups.rows(index))
    with compute_precision(model, precision):
        logp, mask, ent = policy_logprobs(
            model, [groups.prompt_ids[i] for i in index.tolist()], tokens, lengths,
            groups.group_size, groups.pad_token_id, entropy=True, packed=packed,
        )  # fmt: skip
    return -(logp * mask).sum() / denom, None


def linear_flops(model, groups) -> float:
    weights = sum(
        m.weight.numel() for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name
    )  # fmt: skip
    tokens = sum(len(p) for p in groups.prompt_ids) + int((groups.lengths - 1).sum())
    return 3 * 2 * tokens * weights


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="main")
    parser.add_argument("--init", default="", help="start from this model folder (skips SFT)")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", choices=sorted(VARIANTS), help="profile one variant instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from maxrl.models.loading import load_policy, quiet_transformers
    from maxrl.seeding import keep_freed_memory

    keep_freed_memory()
    quiet_transformers()
    s = SETTINGS[args.setting]
    with tempfile.TemporaryDirectory() as tmp:
        args.preset, args.size = None, None
        init = warm_start(args, s, Path(tmp))
        model, tokenizer = load_policy(init)
        groups = batch(model, tokenizer, s)
    model.train()
    print(
        f"setting {args.setting}: {groups.num_prompts} prompts x {groups.group_size} rollouts, "
        f"responses {float(groups.lengths.float().mean()):.1f} tokens on average (longest "
        f"{int(groups.lengths.max())}); CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step(model, groups, s["micro"], **VARIANTS[args.profile])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(model, groups, s["micro"], **VARIANTS[args.profile])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        return
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    tokens = 4096
    peaks = {
        dtype: peak_gflops(tokens, hidden, inner, dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }
    print(
        f"matmul peak ({tokens} x {hidden} @ {hidden} x {inner}): fp32 "
        f"{peaks[torch.float32]:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s"
    )
    flops = linear_flops(model, groups)
    times = {name: [] for name in VARIANTS}
    for kw in VARIANTS.values():
        step(model, groups, s["micro"], **kw)  # warm-up
    for _ in range(args.repeats):
        for name, kw in VARIANTS.items():
            start = time.perf_counter()
            step(model, groups, s["micro"], **kw)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["hf"])
    for name, runs in times.items():
        median = statistics.median(runs)
        rate = flops / median / 1e9
        print(
            f"{name}: {median:.3f} s (rounds {', '.join(f'{t:.3f}' for t in runs)}); "
            f"{base / median:.2f}x hf; {rate:.0f} GFLOP/s = {rate / peaks[torch.float32]:.0%} of "
            f"the fp32 peak, {rate / peaks[torch.bfloat16]:.0%} of the bf16 peak"
        )
    bf16 = statistics.median(times["packed_bf16"])
    one_call = statistics.median(times["packed_bf16_one_call"])
    print(f"split_attention_vs_one_call={one_call / bf16:.2f}")
    two = statistics.median(times["packed_bf16_two_streams"])
    print(f"two_streams_vs_one={bf16 / two:.2f}")
    print(f"speedup_packed_bf16_vs_hf={base / bf16:.2f}")


if __name__ == "__main__":
    main()
