"""The reports of ``maxrl classify``: the final table (mean ± sd over seeds) and its plots."""

from __future__ import annotations

from pathlib import Path

from maxrl import passk
from maxrl.eval.plots import plot_passk, plot_vs_step
from maxrl.eval.report import mean_sd_cell


def summary_table(results: dict[str, dict[int, list[dict]]], cfg) -> str:
    """Markdown table of the final evaluation, mean (± sd over seeds when there are several)."""
    k = cfg.max_k
    columns = [
        ("test pass@1", "eval/pass@1", 4),
        ("top-1 acc", "eval/top1", 4),
        (f"pass@{k}", f"eval/pass@{k}", 4),
        ("-log pass@1", "eval/neg_log_pass@1", 3),
        (f"-log pass@{k}", f"eval/neg_log_pass@{k}", 3),
        ("mean log p", "eval/mean_log_p", 3),
        ("wall s", "time/wall_s", 2),
    ]
    lines = ["| method | " + " | ".join(c[0] for c in columns) + " |"]
    lines.append("|" + "---|" * (len(columns) + 1))
    for label, by_seed in results.items():
        final = [records[-1] for records in by_seed.values()]
        cells = [mean_sd_cell([r[key] for r in final], digits) for _, key, digits in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[int, list[dict]]], cfg, out: Path, classes: int):
    """Test pass@1 against step, and final pass@k against k, one line per method (seed mean)."""
    title = _task_title(cfg)
    mean_curves = {}
    for label, by_seed in results.items():
        runs = list(by_seed.values())
        steps = [r["step"] for r in runs[0]]
        mean_curves[label] = [
            {key: sum(rs[i][key] for rs in runs) / len(runs) for key in runs[0][i]} | {"step": s}
            for i, s in enumerate(steps)
        ]
    plot_vs_step(
        out / "pass1_vs_step.png",
        [
            (
                f"classification as RL: {title}",
                "test pass@1 (mean p of true class)",
                {
                    label: [(r["step"], r["eval/pass@1"]) for r in recs]
                    for label, recs in mean_curves.items()
                },
            )
        ],
        hline=1 / classes,
    )
    ks = passk.powers_of_two(cfg.max_k)
    plot_passk(
        out / "passk_vs_k.png",
        {label: recs[-1] for label, recs in mean_curves.items()},
        title=f"pass@k after {cfg.steps} steps: {title}",
        baseline=("chance (start)", ks, [1 - (1 - 1 / classes) ** k for k in ks]),
    )


def _task_title(cfg) -> str:
    name = Path(cfg.data).stem
    return f"{name} x{cfg.arity}" if cfg.arity > 1 else name
