"""The end of a run: a before/after table and PNG plots, made from ``metrics.jsonl`` alone (so a
resumed run reports exactly what an uninterrupted one would); and the mean and spread over seeds
that every comparison table reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maxrl.eval.plots import curve_of, plot_pass_rate_histogram, plot_passk, plot_vs_step
from maxrl.metrics import read_metrics


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value). An infinite value
    (e.g. -log 0) makes the mean inf and the spread nan."""
    vals = np.asarray(list(values), dtype=float)
    with np.errstate(invalid="ignore"):
        spread = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return float(vals.mean()), spread


def mean_sd_cell(values, digits: int = 3) -> str:
    """``mean ± sd`` over seeds (just the mean for one seed)."""
    values = list(values)
    mean, spread = mean_sd(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def write_report(out_dir: str | Path, last: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    records = read_metrics(out_dir / "metrics.jsonl")
    evals = [r for r in records if "eval/pass@1" in r]
    if not evals:
        raise ValueError(f"{out_dir}/metrics.jsonl holds no evaluation; nothing to report")
    before, after = evals[0], evals[-1]
    ks, _ = curve_of(after)
    rows = [("pass@1", "eval/pass@1")]
    rows += [(f"pass@{k}", f"eval/pass@{k}") for k in ks if k > 1 and k in (4, 16, 64, ks[-1])]
    rows += [
        (f"-log pass@{ks[-1]}", f"eval/neg_log_pass@{ks[-1]}"),
        ("-log pass@1", "eval/neg_log_pass@1"),
        ("mean reward", "eval/reward_mean"),
        ("all-fail prompts", "eval/frac_all_fail"),
        ("response length", "eval/response_length"),
    ]
    lines = [f"| metric | step {before['step']} | step {after['step']} |", "|---|---|---|"]
    for label, key in dict.fromkeys(rows):
        if key in before and key in after:
            lines.append(f"| {label} | {before[key]:.4f} | {after[key]:.4f} |")
    train = [r for r in records if "train/reward_mean" in r]
    timing = {}
    if train:
        rollout_s = sum(r.get("time/rollout_s", 0.0) for r in train)
        tokens = sum(r["time/rollout_tokens_per_s"] * r["time/rollout_s"] for r in train)
        timing = {"rl_steps": len(train), "rollout_tokens_per_s": tokens / max(rollout_s, 1e-9)}
        lines.append(f"\nrollout tokens/s (training): {timing['rollout_tokens_per_s']:.0f}")
    table = "\n".join(lines)
    summary = {"before": before, "after": after, "table": table, **timing}
    (out_dir / "summary.md").write_text(table + "\n")
    (out_dir / "summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1)
    )
    plot_passk(
        out_dir / "pass_at_k.png",
        {f"step {before['step']}": before, f"step {after['step']}": after},
    )
    if "eval/pass_rate/0" in before and "eval/pass_rate/0" in after:
        plot_pass_rate_histogram(
            out_dir / "pass_rate_histogram.png",
            {f"step {before['step']}": before, f"step {after['step']}": after},
            "held-out prompts by pass rate",
        )
    panels = [
        ("train/reward_mean", "train reward"),
        ("eval/pass@1", "held-out pass@1"),
        ("train/entropy", "entropy"),
        ("train/frac_all_fail", "all-fail groups"),
    ]
    plot_vs_step(
        out_dir / "training.png",
        [
            (title, "", {"": [(r["step"], r[key]) for r in records if key in r]})
            for key, title in panels
        ],
    )
    return summary
