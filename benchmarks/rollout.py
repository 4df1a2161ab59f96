"""Rollout throughput of the "kv" sampler against HF ``generate`` on the paper's maze model.

The model is the paper's maze policy (``build_model("paper")``: Qwen2, 4 layers, hidden 256,
MLP 1024, 4 heads, 2 KV heads, vocabulary 32, tied embeddings; random weights) and the prompts
are 9x9 training mazes of the maze task (``<bos> GRID_START``, 9 rows of 9 cell tokens each
closed by NEWLINE, ``GRID_END PATH_START``: 94 tokens; ``--prompts random`` for random tokens
that share no prefix). Both backends sample exactly ``--new-tokens`` tokens per prompt (no stop
token) at temperature 1 from the same model and prompts, in the same process, alternating, and
the median of ``--repeats`` timed runs is reported. Throughput counts generated tokens; the wall
time includes the prompt prefill. The fraction of the matmul peak counts the FLOPs the batch
needs: every decoded token, and the prefill of each distinct prompt prefix once.

Run: ``python benchmarks/rollout.py [--dtype bf16] [--batch-size 512] [--repeats 3]``. The last
line is ``speedup_vs_hf_generate=<ratio>``.

``--device cuda`` runs both backends on a GPU (the peak is then an 8192^3 GEMM on it, and
``--memory`` reports the peak GPU memory a call adds). ``--model qwen2.5-0.5b`` swaps the maze
model for a randomly initialised model of Qwen2.5-0.5B's shape (24 layers, hidden 896, 14
heads, 2 KV heads, vocabulary 151,936): the size of the smallest real language models.

``--tune-malloc`` reruns the process with glibc's allocator told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so large tensors reuse pages instead
of faulting in fresh ones; both backends run under it. ``--ablations`` times the kv sampler
against itself with one of its choices undone (a field of ``maxrl.rollout.kv.KVSettings``),
each variant in a fresh process per round. ``--memory`` measures the peak memory one call of each backend
adds, each in a fresh process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from maxrl.models import build_model, maze_tokenizer
from maxrl.rollout import SamplingParams, make_sampler
from maxrl.tasks.maze import MazeTask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# build_model overrides: the maze preset as is, or a real language model's shape
MODEL_SHAPES = {
    "paper": {},
    "qwen2.5-0.5b": dict(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
}

# glibc reads these at process start: keep freed memory for reuse rather than unmapping it
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}

# kv sampler choices, by device: (``KVSettings`` field, value undoing it)
ABLATIONS_CPU = {
    "layer-0 q/k/v by GEMM, no token table": ("table_max_vocab", 0),
    "no common prefix cached once (each row caches its whole prompt)": ("min_common_prefix", 10**9),
    "decode values by batched matmul, not embedding_bag": ("value_sums_by_rows", False),
    "prefill passes of 2,048 tokens": ("prefill_tokens_per_pass", 2048),
    "shared prompts read by one GEMM per prompt, not one over a grid of rows": (
        "prompt_grid_max_rows",
        0,
    ),
}
ABLATIONS_GPU = {
    "layer-0 token table (the CPU setting)": ("table_max_vocab", 4096),
    "common prefix cached once (the CPU setting)": ("min_common_prefix", 8),
    "prefill passes of 512 tokens (the CPU setting)": ("prefill_tokens_per_pass", 512),
    "shared prompt cache for repeated prompts (the CPU setting)": (
        "min_rows_per_shared_prompt",
        16,
    ),
}


def variants(device_type: str) -> dict:
    """The kv sampler as shipped and the ablations that apply on ``device_type``."""
    return {"kv as shipped": None, **(ABLATIONS_CPU if device_type == "cpu" else ABLATIONS_GPU)}


# timed calls per variant process in --ablations, after one warm-up call
CALLS_PER_VARIANT_PROCESS = 3


def maze_prompts(count: int, size: int, seed: int) -> list[list[int]]:
    """Token ids of ``count`` training mazes of the maze task (94 tokens each at size 9)."""
    tokenizer = maze_tokenizer()
    items = MazeTask(size=size).train_items(count, seed=seed)
    return tokenizer([it.prompt for it in items], add_special_tokens=False)["input_ids"]


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Uniform random token ids (pad excluded): prompts that share no prefix to speak of."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (count, length), generator=g).tolist()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(sampler, model, prompts, params, generator=None):
    """(seconds, rollouts) of one ``generate`` call, the device's queued work included."""
    device = next(model.parameters()).device
    synchronize(device)
    start = time.perf_counter()
    out = sampler.generate(model, prompts, params, pad_token_id=0, generator=generator)
    synchronize(device)
    return time.perf_counter() - start, out


def gemm_side(device: torch.device) -> int:
    """Side of the square GEMM that measures the matmul peak: 2048 on CPU, 8192 on a GPU."""
    return 2048 if device.type == "cpu" else 8192


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of one ``gemm_side`` GEMM (the machine's practical peak)."""
    n = gemm_side(device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def model_flops(model, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(FLOPs per decoded token, FLOPs to prefill one prompt), counting matmuls only.

    A decoded token costs 2 * (non-embedding linear parameters + the lm_head) plus attention,
    4 * heads * head_dim per (query, key) pair for QK^T and PV, at the mean context length.
    The prefill counts what any sampler must compute: every layer at every prompt position,
    except that the last layer needs only its keys and values there (its output is used at
    the last position only).
    """
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv_width = config.num_key_value_heads * head_dim
    layer = model.model.layers[0]
    per_layer = sum(p.numel() for n, p in layer.named_parameters() if n.endswith("proj.weight"))
    layers = config.num_hidden_layers
    lm_head = config.vocab_size * config.hidden_size
    pair = 4 * config.num_attention_heads * head_dim
    mean_context = prompt_len + (new_tokens - 1) / 2 + 1
    decode = 2 * (layers * per_layer + lm_head) + layers * pair * mean_context
    causal_pairs = prompt_len * (prompt_len + 1) / 2
    prefill = (
        prompt_len * 2 * (layers - 1) * per_layer
        + (layers - 1) * pair * causal_pairs
        + prompt_len * 2 * 2 * config.hidden_size * kv_width  # last layer: keys and values
        + 2 * (per_layer + lm_head)
        + pair * prompt_len  # last layer at the last position
    )
    return decode, prefill


# torch.profiler op names grouped by what they do in the sampler
PROFILE_GROUPS = {
    "GEMMs (linear layers)": ("aten::mm", "aten::addmm"),
    "attention (bmm, embedding_bag, softmax)": (
        "aten::bmm",
        "aten::_embedding_bag_forward_only",
        "aten::_embedding_bag",
        "aten::_softmax",
    ),
    "elementwise (norms, RoPE, SiLU, residuals)": (
        "aten::mul",
        "aten::mul_",
        "aten::add",
        "aten::add_",
        "aten::silu",
        "aten::pow",
        "aten::rsqrt",
        "aten::mean",
        "aten::neg",
        "aten::cat",
        "aten::div_",
        "aten::sum",
    ),
    "copies (cache writes, layout, compaction)": (
        "aten::copy_",
        "aten::index_select",
        "aten::index",
        "aten::index_put_",
        "aten::_index_put_impl_",
        "aten::index_copy_",
    ),
    "sampling (log-softmax, multinomial)": (
        "aten::_log_softmax",
        "aten::exponential_",
        "aten::multinomial",
        "aten::gather",
    ),
}


def profile(model, prompts, params) -> None:
    """One kv run on one thread under torch.profiler, its op self-times grouped."""
    torch.set_num_threads(1)
    sampler = make_sampler("kv", workers=1)
    sampler.generate(model, prompts[:8], params, pad_token_id=0)
    with torch.profiler.profile() as prof:
        wall, _ = timed_generate(sampler, model, prompts, params)
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    # the profiler itself slows each op down; shares of the profiled total are what count
    total = sum(self_us.values())
    print(f"profiled kv run, 1 thread: {wall:.2f} s wall, {total / 1e6:.2f} s in ops")
    grouped = 0.0
    for label, names in PROFILE_GROUPS.items():
        t = sum(self_us.get(n, 0.0) for n in names)
        grouped += t
        print(f"  {label:45s} {t / 1e6:6.2f} s  {t / total:6.1%}")
    rest = total - grouped
    print(f"  {'other ops (views, dispatch)':45s} {rest / 1e6:6.2f} s  {rest / total:6.1%}")
    first_token = SamplingParams(max_new_tokens=1, temperature=params.temperature)
    prefill, _ = timed_generate(sampler, model, prompts, first_token)
    print(f"  without the profiler, the prefill alone (max_new_tokens=1) takes {prefill:.2f} s")


def profile_gpu(model, prompts, params, backends: dict) -> None:
    """Per backend on a GPU: one call's wall time, the prefill alone (``max_new_tokens=1``),
    and under torch.profiler the kernels launched, the GPU's busy time and the ops that take
    the most host time."""
    device = next(model.parameters()).device
    first_token = SamplingParams(max_new_tokens=1, temperature=params.temperature)
    for name, sampler in backends.items():
        sampler.generate(model, prompts, params, pad_token_id=0)  # warm-up
        walls = {
            label: timed_generate(sampler, model, prompts, p)[0]
            for label, p in (("call", params), ("prefill alone", first_token))
        }
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            sampler.generate(model, prompts, params, pad_token_id=0)
            synchronize(device)
        events = prof.key_averages()
        launches = sum(e.count for e in events if "LaunchKernel" in e.key)
        gpu_busy = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6
        syncs = sum(e.count for e in events if "Synchronize" in e.key or "MemcpyAsync" in e.key)
        print(
            f"{name}: {walls['call']:.3f} s a call, the prefill alone {walls['prefill alone']:.3f} s; "
            f"profiled: {launches:,} kernel launches, GPU busy {gpu_busy:.3f} s, "
            f"{syncs:,} host-device copies or synchronisations"
        )
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
        for e in top:
            print(
                f"    {e.key[:60]:60s} {e.count:8,d} calls {e.self_cpu_time_total / 1e6:7.3f} s host"
            )


def in_fresh_process(args: list[str], key: str) -> str:
    """Run this script in a fresh interpreter with ``args``; return what it printed after
    ``key=``."""
    command = [sys.executable, os.path.abspath(__file__), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return result.stdout.split(f"{key}=")[-1].strip()


def ablations(script_args: list[str], repeats: int, device_type: str) -> None:
    """The kv sampler as shipped and with each of its choices on the device (``ABLATIONS_CPU``
    or ``ABLATIONS_GPU``) undone: each variant runs in
    a fresh process per round (allocator state is process-wide, so variants sharing one
    process would time each other's leftovers), the variants alternating, ``repeats`` rounds.
    A round's figure is the median of ``CALLS_PER_VARIANT_PROCESS`` calls after a warm-up."""
    rest = [a for a in script_args if a != "--ablations"]
    times: dict[str, list[float]] = {name: [] for name in variants(device_type)}
    for _ in range(repeats):
        for index, name in enumerate(times):
            seconds = in_fresh_process([*rest, "--variant", str(index)], "variant_seconds")
            times[name].append(float(seconds))
    shipped = statistics.median(times["kv as shipped"])
    for name, runs in times.items():
        median = statistics.median(runs)
        runs_text = ", ".join(f"{t:.2f}" for t in runs)
        print(f"{name}: median {median:.2f} s (rounds [{runs_text}] s); {median / shipped:.3f}x")


def memory(script_args: list[str], backends: list[str], device: str) -> None:
    """Peak memory one call of each backend adds, each in a fresh process (the process's
    peak resident set, or on a GPU its peak allocated GPU memory, after the call less its
    peak before it)."""
    rest = [a for a in script_args if a != "--memory"]
    kind = "resident memory" if device == "cpu" else "GPU memory allocated"
    for name in backends:
        peaks = in_fresh_process([*rest, "--memory-of", name], "peak_rss_mib")
        before, after = map(float, peaks.split(","))
        print(
            f"{name}: peak {kind} {before:,.0f} MiB before the call, "
            f"{after:,.0f} MiB after: {after - before:,.0f} MiB added"
        )


def run_memory(sampler, model, prompts, params) -> None:
    """One process's share of ``memory``: peak resident memory on CPU, peak GPU memory
    allocated by torch on a GPU."""
    device = next(model.parameters()).device
    sampler.generate(model, prompts[:8], params, pad_token_id=0)  # lazy imports, small buffers
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.max_memory_allocated(device) / 2**20
        sampler.generate(model, prompts, params, pad_token_id=0)
        after = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sampler.generate(model, prompts, params, pad_token_id=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mib={before},{after}")


def run_variant(index: int, model, prompts, params) -> None:
    """One process's share of ``ablations``: variant ``index`` of ``variants``."""
    from maxrl.rollout.kv import settings_for

    device = next(model.parameters()).device
    switch = list(variants(device.type).values())[index]
    settings = settings_for(device)
    if switch:
        settings = dataclasses.replace(settings, **dict([switch]))
    sampler = make_sampler("kv", settings=settings)
    sampler.generate(model, prompts, params, pad_token_id=0)  # warm-up, whole batch
    runs = []
    for call in range(CALLS_PER_VARIANT_PROCESS):
        g = torch.Generator().manual_seed(call)
        runs.append(timed_generate(sampler, model, prompts, params, g)[0])
    print(f"variant_seconds={statistics.median(runs)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    parser.add_argument(
        "--model",
        choices=sorted(MODEL_SHAPES),
        default="paper",
        help="paper: the maze model; qwen2.5-0.5b: a random model of that language model's shape",
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rollouts-per-prompt",
        type=int,
        default=1,
        help="copies of each prompt in the batch (RL samples a group per prompt)",
    )
    parser.add_argument(
        "--prompts",
        choices=["maze", "random"],
        default="maze",
        help="maze: 9x9 training mazes (their prefixes overlap, as real prompts' do); random: "
        "uniform random tokens of the same length (no shared prefixes)",
    )
    parser.add_argument(
        "--shared-prefix",
        type=int,
        default=0,
        help="prepend the same N random tokens to every prompt (a system prompt or few-shot "
        "block all prompts share)",
    )
    parser.add_argument("--skip-hf", action="store_true", help="time only the kv sampler")
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="rerun under glibc settings that keep freed memory for reuse (both backends)",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="instead of comparing with hf, time kv against kv with one choice undone (each "
        "variant in a fresh process per round; --repeats rounds)",
    )
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead of timing, measure the peak memory one call of each backend adds (each "
        "in a fresh process)",
    )
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, profile one kv run on one thread and print where the time goes "
        "(on a GPU: each backend's launches, GPU busy time and top host ops)",
    )
    args = parser.parse_args(argv)
    if args.batch_size % args.rollouts_per_prompt:
        parser.error("--batch-size must be a multiple of --rollouts-per-prompt")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False)")
    if device.type != "cpu" and args.tune_malloc:
        parser.error("--tune-malloc tunes the CPU allocator; use --device cpu")
    script_args = sys.argv[1:] if argv is None else list(argv)
    if args.ablations:
        ablations(script_args, args.repeats, device.type)
        return
    if args.memory:
        memory(script_args, ["kv"] if args.skip_hf else ["kv", "hf"], device.type)
        return
    tuned = all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items())
    if args.tune_malloc and not tuned:
        env = {**os.environ, **MALLOC_TUNING}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *script_args], env)

    dtype = DTYPES[args.dtype]
    model = build_model("paper", seed=0, **MODEL_SHAPES[args.model]).to(device, dtype).eval()
    count = args.batch_size // args.rollouts_per_prompt
    groups = maze_prompts(count, 9, seed=1)
    if args.prompts == "random":
        groups = random_prompts(count, len(groups[0]), model.config.vocab_size, seed=1)
    shared = random_prompts(1, args.shared_prefix, model.config.vocab_size, seed=2)[0]
    prompts = [shared + p for p in groups for _ in range(args.rollouts_per_prompt)]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0)
    backends = {"kv": make_sampler("kv")}
    if not args.skip_hf:
        backends["hf"] = make_sampler("hf")

    if args.profile:
        if device.type == "cpu":
            profile(model, prompts, params)
        else:
            profile_gpu(model, prompts, params, backends)
        return
    if args.memory_of is not None:
        run_memory(backends[args.memory_of], model, prompts, params)
        return
    if args.variant is not None:
        run_variant(args.variant, model, prompts, params)
        return
    load_before = os.getloadavg()[0]
    peak = matmul_peak(dtype, device)
    decode_flops, prefill_flops = model_flops(model, len(prompts[0]), args.new_tokens)
    generated = args.batch_size * args.new_tokens
    unique = len(set(map(tuple, prompts)))
    # a prompt position's keys and values depend only on the tokens up to it, so the batch
    # needs each distinct prefix (node of the prompt trie) computed once
    trie = len({tuple(p[: j + 1]) for p in prompts for j in range(len(p))})
    needed_flops = generated * decode_flops + prefill_flops * trie / len(prompts[0])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {where}, threads {torch.get_num_threads()}, "
        f"dtype {args.dtype}, model {args.model} ({sum(p.numel() for p in model.parameters()):,} "
        "parameters)"
    )
    print(
        "glibc malloc: "
        + (" ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items()) if tuned else "default settings")
    )
    print(
        f"batch {args.batch_size} ({unique} distinct {args.prompts} prompts of {len(prompts[0])} "
        f"tokens; {trie:,} distinct prefixes of {unique * len(prompts[0]):,} prompt positions)"
    )
    print(f"new tokens {args.new_tokens}, repeats {args.repeats}")
    print(
        f"model FLOPs: {decode_flops / 1e6:.2f} M per decoded token; "
        f"{needed_flops / generated / 1e6:.2f} M per generated token with the prefill of "
        f"each distinct prefix ({(generated * decode_flops + unique * prefill_flops) / generated / 1e6:.2f} M "
        "prefilling each distinct prompt whole)"
    )

    times: dict[str, list[float]] = {name: [] for name in backends}
    for sampler in backends.values():  # warm-up (allocator, lazy imports)
        sampler.generate(model, prompts[:8], params, pad_token_id=0)
    for repeat in range(args.repeats):
        for name, sampler in backends.items():
            g = torch.Generator().manual_seed(repeat)
            seconds, out = timed_generate(sampler, model, prompts, params, g)
            times[name].append(seconds)
            assert int(out.lengths.min()) == args.new_tokens

    # the GEMM peak is measured again afterwards; the better figure is the less contended one
    peak = max(peak, matmul_peak(dtype, device))
    n = gemm_side(device)
    print(f"matmul peak ({args.dtype}, best {n}^3 GEMM): {peak / 1e9:,.1f} GFLOP/s")
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    medians = {}
    for name, runs in times.items():
        medians[name] = statistics.median(runs)
        runs_text = ", ".join(f"{t:.2f}" for t in runs)
        print(
            f"{name}: {generated / medians[name]:,.0f} tokens/s median "
            f"({generated / min(runs):,.0f} best; runs [{runs_text}] s); "
            f"{needed_flops / medians[name] / peak:.1%} of matmul peak with the prefill, "
            f"{generated * decode_flops / medians[name] / peak:.1%} counting decode FLOPs only"
        )
    if "hf" in medians:
        best = min(times["hf"]) / min(times["kv"])
        print(f"speedup of the best runs: {best:.2f}")
        print(f"speedup_vs_hf_generate={medians['hf'] / medians['kv']:.2f}")


if __name__ == "__main__":
    main()
