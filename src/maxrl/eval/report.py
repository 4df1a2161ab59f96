"""The end of a run: a before/after table and PNG plots, made from ``metrics.jsonl`` alone (so a
resumed run reports exactly what an uninterrupted one would)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from maxrl.metrics import read_metrics  # noqa: E402

_PASS = re.compile(r"^eval/pass@(\d+)$")


def curve_of(record: dict) -> tuple[list[int], list[float]]:
    """(ks, pass@k) from one evaluation record."""
    pairs = sorted((int(m.group(1)), v) for k, v in record.items() if (m := _PASS.match(k)))
    return [k for k, _ in pairs], [v for _, v in pairs]


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
    plot_training(out_dir / "training.png", records)
    return summary


def plot_passk(path: Path, records: dict[str, dict], title: str = "held-out pass@k") -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, record in records.items():
        ks, values = curve_of(record)
        ax.plot(ks, values, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(path: Path, records: list[dict]) -> None:
    panels = [
        ("train/reward_mean", "train reward"),
        ("eval/pass@1", "held-out pass@1"),
        ("train/entropy", "entropy"),
        ("train/frac_all_fail", "all-fail groups"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
