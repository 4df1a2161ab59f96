"""The project's PNG plots: pass@k curves, metrics against training steps, and metrics against
rollouts per prompt with seed spread. Every command that draws uses these."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_PASS = re.compile(r"^eval/pass@(\d+)$")


def _save(fig, path: Path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def curve_of(record: dict) -> tuple[list[int], list[float]]:
    """(ks, pass@k) from one evaluation record (keys ``eval/pass@<k>``)."""
    pairs = sorted((int(m.group(1)), v) for k, v in record.items() if (m := _PASS.match(k)))
    return [k for k, _ in pairs], [v for _, v in pairs]


def plot_passk(
    path: Path,
    records: dict[str, dict],
    title: str = "held-out pass@k",
    baseline: tuple[str, list[int], list[float]] | None = None,
) -> None:
    """pass@k against k (log scale), one line per labelled evaluation record; ``baseline`` is an
    optional (label, ks, values) drawn dotted."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, record in records.items():
        ks, values = curve_of(record)
        ax.plot(ks, values, marker="o", markersize=3, label=label)
    if baseline is not None:
        label, ks, values = baseline
        ax.plot(ks, values, color="grey", linestyle=":", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path, 120)


def pass_rate_bins(record: dict) -> list[tuple[str, float]]:
    """(bin interval, fraction of prompts) of one evaluation record, in bin order."""
    from maxrl.passk import PASS_RATE_BINS

    return [
        (b.interval, record[f"eval/pass_rate/{b.name}"])
        for b in PASS_RATE_BINS
        if f"eval/pass_rate/{b.name}" in record
    ]


def plot_pass_rate_histogram(path: Path, records: dict[str, dict], title: str) -> None:
    """The fraction of held-out prompts in each pass-rate bin, one bar per labelled record per
    bin (e.g. before and after RL)."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / max(len(records), 1)
    labels = []
    for j, (label, record) in enumerate(records.items()):
        bins = pass_rate_bins(record)
        labels = [interval for interval, _ in bins]
        xs = np.arange(len(bins)) + (j - (len(records) - 1) / 2) * width
        ax.bar(xs, [v for _, v in bins], width=width, label=label)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("per-prompt pass rate (correct samples / samples)")
    ax.set_ylabel("fraction of prompts")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save(fig, path, 120)


def plot_vs_step(
    path: Path,
    panels: list[tuple[str, str, dict[str, list[tuple[int, float]]]]],
    hline: float | None = None,
) -> None:
    """One panel per (title, y label, {label: [(step, value), ...]}), side by side; ``hline``
    is an optional dotted reference level (e.g. chance) on every panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels):
        for label, points in series.items():
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle=":")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    _save(fig, path, 110)


def plot_vs_rollouts(
    path: Path,
    panels: list[tuple[str, str, dict[str, dict[int, list[float]]]]],
) -> None:
    """One panel per (title, y label, {method: {N: [value per seed]}}): mean against rollouts
    per prompt N (log scale), with bars of one standard deviation over seeds."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, ylabel, by_method) in zip(axes[0], panels):
        for name, by_n in by_method.items():
            ns = sorted(by_n)
            mean = [float(np.mean(by_n[n])) for n in ns]
            with np.errstate(invalid="ignore"):
                err = [float(np.std(by_n[n], ddof=1)) if len(by_n[n]) > 1 else 0.0 for n in ns]
            ax.errorbar(ns, mean, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rollouts per prompt (same steps)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, 120)
