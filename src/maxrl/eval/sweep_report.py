"""The report of ``maxrl sweep``: a grid folder's finished runs as tables (mean ± sd over seeds
of the final held-out metrics, the pass-rate distribution, training diagnostics, the
sample-efficiency factor) and plots. It reads the run folders alone, so it can be rebuilt at any
time from a half-done grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from maxrl import passk
from maxrl.eval.plots import curve_of, plot_passk, plot_vs_rollouts
from maxrl.eval.report import mean_sd, mean_sd_cell


def _final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["after"]


def _start_evals(out: Path, cfg) -> list[dict]:
    """The evaluation before RL (step 0) of each seed: the shared SFT model, per seed stream."""
    found = {}
    for summary in sorted(out.glob("*/N*/seed*/summary.json")):
        seed = summary.parent.name
        before = json.loads(summary.read_text())["before"]
        if (
            seed not in found
            and int(seed.removeprefix("seed")) in cfg.seeds
            and before["step"] == 0
        ):
            found[seed] = before
    return list(found.values())


def report_paths(cfg):
    """``name -> path`` of this grid's report files: ``out_dir/<report_prefix><name>``, so that
    sweeps sharing a folder (and its runs) keep their own reports."""
    return lambda name: Path(cfg.out_dir) / f"{cfg.report_prefix}{name}"


def summarise(cfg) -> dict:
    out = Path(cfg.out_dir)
    results: dict[str, dict[int, list[dict]]] = {}
    for m in cfg.methods:
        for n in cfg.rollouts:
            runs = [out / m.label / f"N{n}" / f"seed{s}" for s in cfg.seeds]
            done = [_final_eval(r) for r in runs if (r / "summary.json").exists()]
            if done:
                results.setdefault(m.label, {})[n] = done
    if not results:
        raise ValueError(f"no finished runs under {out}")
    any_record = next(iter(next(iter(results.values())).values()))[0]
    ks, _ = curve_of(any_record)
    k_big = ks[-1]
    missing = [k for k in cfg.report_ks if k not in ks]
    if missing:
        raise ValueError(f"report_ks {missing} are not among the evaluated k {list(ks)}")
    shown = sorted({1, k_big, *cfg.report_ks})
    keys = (
        *(f"eval/pass@{k}" for k in shown),
        "eval/neg_log_pass@1",
        f"eval/neg_log_pass@{k_big}",
    )
    heads = [f"pass@{k}" for k in shown] + ["-log pass@1", f"-log pass@{k_big}"]
    lines = [
        "| method | N | seeds | " + " | ".join(heads) + " |",
        "|---|---|---|" + "---|" * len(heads),
    ]
    table = {}
    starts = _start_evals(out, cfg)
    with_start = {"(start: SFT model)": {0: starts}, **results} if starts else results
    for name, by_n in with_start.items():
        for n, recs in sorted(by_n.items()):
            row = {key: mean_sd(r[key] for r in recs) for key in keys}
            table[f"{name}/N{n}"] = {"seeds": len(recs), **row}
            cells = " | ".join(mean_sd_cell(r[key] for r in recs) for key in keys)
            lines.append(f"| {name} | {n} | {len(recs)} | {cells} |")
    n_max = max(cfg.rollouts)
    curves = {}
    for name, by_n in results.items():
        if n_max in by_n:
            values = np.mean([curve_of(r)[1] for r in by_n[n_max]], axis=0)
            curves[name] = passk.PassAtKCurve(tuple(ks), tuple(float(v) for v in values))
    factor = None
    if cfg.target in curves and cfg.baseline in curves:
        factor = passk.sample_efficiency(curves[cfg.target], curves[cfg.baseline])
        if factor == 0.0:
            reading = f"none: {cfg.target} does not reach it within k <= {k_big}"
        elif math.isinf(factor):
            reading = f"more than {k_big}x ({cfg.baseline} does not reach it)"
        else:
            reading = f"{factor:.2f}x"
        lines.append(
            f"\nSample-efficiency factor of {cfg.target} over {cfg.baseline} at N={n_max}, at "
            f"the coverage {cfg.baseline} reaches at k={k_big} "
            f"(pass@{k_big} = {curves[cfg.baseline].pass_at_k[-1]:.3f}): {reading}"
        )
    path_of = report_paths(cfg)
    lines += _pass_rate_table(with_start, n_max, path_of("pass_rate_histograms.png"))
    lines += _comparison_table(cfg, results, ("eval/pass@1", f"eval/pass@{k_big}"))
    lines += _training_table(cfg, out)
    text = "\n".join(lines)
    path_of("results.md").write_text(text + "\n")
    path_of("results.json").write_text(
        json.dumps(
            {
                "table": table,
                "sample_efficiency": factor,
                "k_max": k_big,
                "curves": {k: dict(zip(map(str, c.ks), c.pass_at_k)) for k, c in curves.items()},
            },
            indent=1,
            default=lambda x: None if isinstance(x, float) and math.isnan(x) else x,
        )
    )
    plot_vs_rollouts(
        path_of("neg_log_pass_vs_rollouts.png"),
        [
            (
                f"held-out -log pass@{k} (mean ± sd over seeds)",
                f"-log pass@{k}",
                {
                    name: {
                        n: [r[f"eval/neg_log_pass@{k}"] for r in recs] for n, recs in by_n.items()
                    }
                    for name, by_n in results.items()
                },
            )
            for k in (1, k_big)
        ],
    )
    plot_passk(
        path_of("pass_at_k_curves.png"),
        {
            name: {f"eval/pass@{k}": v for k, v in zip(c.ks, c.pass_at_k)}
            for name, c in curves.items()
        },
        title=f"held-out pass@k after RL, N={n_max} (mean over seeds)",
    )
    return {"table": text, "factor": factor, "results": table}


def gap_verdict(a, b) -> tuple[float, float, str]:
    """Mean gap ``mean(a) - mean(b)`` of two sets of per-seed values, twice their pooled standard
    deviation, and the verdict the results page uses: "A ahead" or "B ahead" where the gap
    exceeds twice the pooled sd, "within noise" otherwise, and "1 seed" where either side has a
    single value (no spread to judge by)."""
    a, b = np.asarray(list(a), float), np.asarray(list(b), float)
    gap = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return gap, math.nan, "1 seed"
    pooled = math.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    if abs(gap) > 2 * pooled:
        return gap, 2 * pooled, "A ahead" if gap > 0 else "B ahead"
    return gap, 2 * pooled, "within noise"


def _comparison_table(cfg, results: dict[str, dict[int, list[dict]]], keys) -> list[str]:
    """Markdown rows: each pair of ``cfg.compare`` (by default the target against each other
    method) at each N both have, per metric, with the gap, twice the pooled sd and the verdict of
    :func:`gap_verdict`."""
    pairs = [tuple(p) for p in cfg.compare] or [(cfg.target, name) for name in results]
    rows = []
    for mine_name, name in pairs:
        target, by_n = results.get(mine_name, {}), results.get(name, {})
        if name == mine_name:
            continue
        for n, recs in sorted(by_n.items()):
            if n not in target:
                continue
            for key in keys:
                mine, theirs = [r[key] for r in target[n]], [r[key] for r in recs]
                gap, two_sd, verdict = gap_verdict(mine, theirs)
                verdict = {"A ahead": f"{mine_name} ahead", "B ahead": f"{name} ahead"}.get(
                    verdict, verdict
                )
                two_sd = "-" if math.isnan(two_sd) else f"{two_sd:.3f}"
                rows.append(
                    f"| {mine_name} | {name} | {n} | {key.removeprefix('eval/')} | "
                    f"{np.mean(mine):.3f} | {np.mean(theirs):.3f} | {gap:+.3f} | {two_sd} | "
                    f"{verdict} |"
                )
    if not rows:
        return []
    return [
        "\nMethod A against method B (a gap holds where it exceeds twice the pooled sd over "
        "seeds):\n",
        "| A | B | N | metric | A | B | gap | 2 x pooled sd | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


# what training looked like, per run: the mean over its steps, and the last step's entropy
DIAGNOSTICS = (
    ("train reward", "train/reward_mean", "mean"),
    ("all-fail groups", "train/frac_all_fail", "mean"),
    ("all-success groups", "train/frac_all_success", "mean"),
    ("entropy, first step", "train/entropy", "first"),
    ("entropy, last step", "train/entropy", "last"),
    ("response length", "train/response_length", "mean"),
)


def _training_table(cfg, out: Path) -> list[str]:
    """Markdown rows of training diagnostics per method and N (mean ± sd over seeds)."""
    from maxrl.metrics import read_metrics

    rows = []
    for m in cfg.methods:
        for n in cfg.rollouts:
            runs = [out / m.label / f"N{n}" / f"seed{s}" for s in cfg.seeds]
            runs = [r for r in runs if (r / "summary.json").exists()]
            if not runs:
                continue
            per_run = []
            for run in runs:
                train = [r for r in read_metrics(run / "metrics.jsonl") if "train/reward_mean" in r]
                values = []
                for _, key, how in DIAGNOSTICS:
                    series = [r[key] for r in train]
                    pick = {"mean": lambda x: float(np.mean(x)), "first": lambda x: x[0]}
                    values.append(pick.get(how, lambda x: x[-1])(series))
                per_run.append(values)
            cells = " | ".join(
                mean_sd_cell([v[i] for v in per_run]) for i in range(len(DIAGNOSTICS))
            )
            rows.append(f"| {m.label} | {n} | {len(runs)} | {cells} |")
    if not rows:
        return []
    head = " | ".join(label for label, _, _ in DIAGNOSTICS)
    return [
        "\nTraining (per run: the mean over its steps unless stated; mean ± sd over seeds):\n",
        f"| method | N | seeds | {head} |",
        "|---|---|---|" + "---|" * len(DIAGNOSTICS),
        *rows,
    ]


def _pass_rate_table(
    results: dict[str, dict[int, list[dict]]], n_max: int, figure: Path
) -> list[str]:
    """Markdown rows: the fraction of held-out prompts in each pass-rate bin after RL at the
    largest N (and at the start), mean over seeds; the same as bars in ``figure``."""
    from maxrl.eval.plots import pass_rate_bins, plot_pass_rate_histogram

    rows = {
        name: by_n.get(n_max) or by_n.get(0)
        for name, by_n in results.items()
        if by_n.get(n_max) or by_n.get(0)
    }
    rows = {name: recs for name, recs in rows.items() if pass_rate_bins(recs[0])}
    if not rows:
        return []
    intervals = [interval for interval, _ in pass_rate_bins(next(iter(rows.values()))[0])]
    out = [
        f"\nHeld-out prompts by pass rate (fraction of prompts, mean over seeds; N={n_max}):\n",
        "| method | " + " | ".join(intervals) + " |",
        "|---|" + "---|" * len(intervals),
    ]
    mean_records = {}
    for name, recs in rows.items():
        keys = [k for k in recs[0] if k.startswith("eval/pass_rate/")]
        mean_records[name] = {k: float(np.mean([r[k] for r in recs])) for k in keys}
        cells = " | ".join(f"{v:.3f}" for _, v in pass_rate_bins(mean_records[name]))
        out.append(f"| {name} | {cells} |")
    plot_pass_rate_histogram(
        figure, mean_records, f"held-out prompts by pass rate, N={n_max} (mean over seeds)"
    )
    return out
