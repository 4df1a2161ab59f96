"""Cost of ``maxrl.advantages.compute`` per estimator, against a plain dense torch baseline.

The baseline, timed in the same process on the same rewards, is the paper's MaxRL advantage
written directly in torch on the float32 input: ``m = r.mean(1)``, ``(r - m) / m`` with a
``where`` for all-fail groups. ``compute`` does more per call (input checks, float64 arithmetic,
a binary-reward check, a table of the N + 1 possible advantages for binary estimators), so the
ratio says what that costs. Rewards are binary float32 with pass rate 0.3.

Within a section the cases run interleaved (one call of each case per round, ``--repeats``
rounds after ``--warmup``), and each figure is a case's median, so a change in the load of a
shared machine hits the baseline and the estimators alike.

Sections: every estimator on 4096 groups x 128 rollouts (dense, flat with group ids, ragged);
``maxrl_t`` with T = N = 1024 on 256 groups; cost against N (16..1024) at a fixed total of
``--total`` rollouts; cost against T (1..1024) at N = 1024.

Run: ``python benchmarks/advantages.py [--threads 1] [--repeats 7]`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from maxrl import advantages

PASS_RATE = 0.3
BASELINE = "baseline: dense torch maxrl (float32)"


def dense_maxrl(r: torch.Tensor) -> torch.Tensor:
    """The paper's advantage in plain torch: (r - mean) / mean, 0 for all-fail groups."""
    mean = r.mean(1, keepdim=True)
    has_success = mean > 0
    safe = torch.where(has_success, mean, torch.ones_like(mean))
    return torch.where(has_success, (r - mean) / safe, torch.zeros_like(r))


def binary_rewards(groups: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(groups, n, generator=g) < PASS_RATE).float()


def interleaved_medians(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per case, running the cases round-robin so load drift hits all alike."""
    times: dict[str, list[float]] = {label: [] for label in cases}
    for round_ in range(warmup + repeats):
        for label, fn in cases.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def compute_case(name: str, rewards: torch.Tensor, **kwargs) -> Callable[[], object]:
    return lambda: advantages.compute(name, rewards, **kwargs)


def print_table(title: str, medians: dict[str, float], rollouts: dict[str, int]) -> None:
    base = medians[BASELINE]
    print(f"\n{title}")
    print(f"{'case':<44} {'us/call':>10} {'ns/rollout':>11} {'x baseline':>11}")
    for label, seconds in medians.items():
        per = seconds / rollouts[label] * 1e9
        print(f"{label:<44} {seconds * 1e6:>10.0f} {per:>11.2f} {seconds / base:>11.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument(
        "--total", type=int, default=4096 * 128, help="rollouts per call in the N sweep"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, median of "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up, binary float32 rewards "
        f"with p = {PASS_RATE}"
    )
    print(
        f"NOTE: this machine ({os.cpu_count()} cores) is shared with other workers (load average "
        f"{load}); absolute times are noisy, the ratios to the in-process baseline less so."
    )

    # --- every estimator at the paper's maze shape
    groups, n = 4096, 128
    r = binary_rewards(groups, n)
    flat = r.reshape(-1)
    ids = torch.arange(groups).repeat_interleave(n)
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(64, 193, (groups,), generator=g)  # 129 distinct sizes
    ragged_ids = torch.arange(groups).repeat_interleave(sizes)
    ragged = (torch.rand(len(ragged_ids), generator=g) < PASS_RATE).float()
    cases = {BASELINE: lambda: dense_maxrl(r)}
    for name, params in [
        ("reinforce", {}),
        ("dr_grpo", {}),
        ("rloo", {}),
        ("grpo", {}),
        ("maxrl", {}),
        ("maxrl_t", {"T": n}),
        ("maxrl_t", {"T": 16, "baseline": "loo"}),
        ("pass_at_k", {"k": 16}),
    ]:
        label = name + "".join(f" {k}={v}" for k, v in params.items())
        cases[label] = compute_case(name, r, **params)
    for name in ("grpo", "maxrl"):
        cases[f"{name}, flat + group_ids (equal sizes)"] = compute_case(name, flat, group_ids=ids)
    rollouts = dict.fromkeys(cases, r.numel())
    for name, params in [("grpo", {}), ("maxrl", {}), ("maxrl_t", {"T": 16})]:
        label = f"{name}{' T=16' if params else ''}, ragged (sizes 64..192)"
        cases[label] = compute_case(name, ragged, group_ids=ragged_ids, **params)
        rollouts[label] = len(ragged)
    medians = interleaved_medians(cases, args.repeats, args.warmup)
    print_table(f"every estimator, {groups} groups x {n} rollouts", medians, rollouts)

    # --- T = N = 1024
    groups, n = 256, 1024
    r = binary_rewards(groups, n)
    cases = {BASELINE: lambda: dense_maxrl(r), "maxrl": compute_case("maxrl", r)}
    for baseline in ("constant", "loo", "none"):
        cases[f"maxrl_t T={n} baseline={baseline}"] = compute_case(
            "maxrl_t", r, T=n, baseline=baseline
        )
    medians = interleaved_medians(cases, args.repeats, args.warmup)
    print_table(f"T = N, {groups} groups x {n} rollouts", medians, dict.fromkeys(cases, r.numel()))

    # --- growth with N at a fixed number of rollouts
    columns = ("maxrl", "maxrl_t T=N", "pass_at_k k=N/2")
    print(f"\ncost against N at {args.total} rollouts per call: ns/rollout (x baseline)")
    print(f"{'N':>6} {'groups':>7} {'baseline':>10} " + " ".join(f"{c:>16}" for c in columns))
    for n in (16, 32, 64, 128, 256, 512, 1024):
        groups = args.total // n
        r = binary_rewards(groups, n)
        cases = {
            BASELINE: lambda r=r: dense_maxrl(r),
            "maxrl": compute_case("maxrl", r),
            "maxrl_t T=N": compute_case("maxrl_t", r, T=n),
            "pass_at_k k=N/2": compute_case("pass_at_k", r, k=n // 2),
        }
        medians = interleaved_medians(cases, args.repeats, args.warmup)
        base = medians[BASELINE]
        cells = [f"{medians[c] / r.numel() * 1e9:.2f} ({medians[c] / base:.1f})" for c in columns]
        print(
            f"{n:>6} {groups:>7} {base / r.numel() * 1e9:>10.2f} "
            + " ".join(f"{c:>16}" for c in cells)
        )

    # --- growth with T at N = 1024
    groups, n = 256, 1024
    r = binary_rewards(groups, n)
    orders = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    cases = {BASELINE: lambda: dense_maxrl(r)}
    for t in orders:
        for baseline in ("constant", "loo"):
            cases[f"{t} {baseline}"] = compute_case("maxrl_t", r, T=t, baseline=baseline)
    medians = interleaved_medians(cases, args.repeats, args.warmup)
    base = medians[BASELINE]
    print(f"\ncost of maxrl_t against T, {groups} groups x {n}: ns/rollout (x baseline)")
    print(f"baseline {base / r.numel() * 1e9:.2f} ns/rollout")
    print(f"{'T':>6} {'constant':>16} {'loo':>16}")
    for t in orders:
        cells = [
            f"{medians[f'{t} {b}'] / r.numel() * 1e9:.2f} ({medians[f'{t} {b}'] / base:.1f})"
            for b in ("constant", "loo")
        ]
        print(f"{t:>6} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
