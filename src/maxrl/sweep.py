"""``maxrl sweep``: methods x rollouts per prompt x seeds from one config (the paper's Fig. 3).

Every run of the grid starts from the same SFT checkpoint (made once, or ``base.model.init``)
with the same step budget, so more rollouts per prompt means more training rollouts. Runs live
in ``out_dir/<method>/N<n>/seed<s>``; a run with a ``summary.json`` is done and skipped, a run
with checkpoints is resumed, so re-running the command finishes a half-done grid. The runs train
``workers`` at a time (one per core by default), each in its own process with
``base.run.threads`` torch threads, under one progress view of the grid; a run's metrics do not
depend on how many run beside it.

Outputs: ``results.md`` (mean and spread over seeds of the final held-out metrics, and the
sample-efficiency factor of MaxRL over GRPO), ``results.json``, ``neg_log_pass_vs_rollouts.png``
(-log pass@k against training rollouts per prompt for k = 1 and the largest k) and
``pass_at_k_curves.png`` (final pass@k curves per method at the largest N) and
``pass_rate_histograms.png`` (held-out prompts by pass rate at the start and after RL). The start
is evaluated once per seed, in the first run of that seed (``eval.at_start``).
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from maxrl import passk
from maxrl.config import ConfigError, parse_cli, save_config
from maxrl.eval.plots import curve_of, plot_passk, plot_vs_rollouts
from maxrl.eval.report import mean_sd
from maxrl.methods import MethodSpec, check_unique, resolve_params
from maxrl.train.config import TrainConfig

__all__ = ["MethodSpec", "SweepConfig", "main", "resolve_params", "run_config", "summarise"]


def _default_methods() -> list[MethodSpec]:
    return [MethodSpec(name=name, estimator=name) for name in ("maxrl", "grpo", "rloo")]


@dataclass
class SweepConfig:
    base: TrainConfig = field(default_factory=TrainConfig)
    methods: list[MethodSpec] = field(default_factory=_default_methods)
    rollouts: list[int] = field(
        default_factory=lambda: [4, 16], metadata={"help": "rollouts per prompt to sweep"}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "RL seeds"})
    out_dir: str = field(default="runs/sweep", metadata={"help": "grid folder"})
    baseline: str = field(
        default="grpo", metadata={"help": "method the efficiency factor is against"}
    )
    target: str = field(default="maxrl", metadata={"help": "method whose efficiency is reported"})
    workers: int = field(
        default=0,
        metadata={
            "help": "runs trained at once, each in its own process with base.run.threads torch "
            "threads (0 = one per core)"
        },
    )

    def validate(self) -> None:
        check_unique(self.methods)
        if not self.seeds or not self.rollouts:
            raise ValueError("seeds and rollouts must each list at least one value")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per core); got {self.workers}")
        for m in self.methods:
            if m.samples:
                raise ValueError(
                    f"method {m.label!r}: samples={m.samples} applies to maxrl classify; a "
                    f"sweep's rollouts list sets N"
                )
            for n in self.rollouts:
                run_config(self, m, n, self.seeds[0], self.base.model.init or "<sft>")


def run_config(cfg: SweepConfig, method: MethodSpec, n: int, seed: int, init: str) -> TrainConfig:
    """The ``TrainConfig`` of one run of the grid (validated)."""
    run = copy.deepcopy(cfg.base)
    if method.overrides:
        try:
            merged = OmegaConf.merge(
                OmegaConf.structured(run), OmegaConf.from_dotlist(list(method.overrides))
            )
            run = OmegaConf.to_object(merged)
        except Exception as exc:
            raise ConfigError(
                f"method {method.label!r}: bad overrides {method.overrides}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
    run.model.init = init
    run.algo.estimator = method.estimator
    run.algo.params = method.params_for(n)
    run.rollout.rollouts_per_prompt = n
    run.run.seed = seed
    run.run.out_dir = str(Path(cfg.out_dir) / method.label / f"N{n}" / f"seed{seed}")
    run.validate()
    return run


def sweep(cfg: SweepConfig) -> dict:
    from maxrl.models.loading import quiet_transformers
    from maxrl.seeding import process_settings
    from maxrl.train.setup import check_resume

    process_settings(cfg.base.run)
    quiet_transformers()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "sweep.yaml")
    init = cfg.base.model.init
    if not init:
        from maxrl.train.sft import run_sft

        init = str(run_sft(cfg.base, out / "sft"))
    grid = [(m, n, s) for m in cfg.methods for n in cfg.rollouts for s in cfg.seeds]
    runs = [run_config(cfg, method, n, seed, init) for method, n, seed in grid]
    first_of_seed = {}
    for run in runs:  # the start (the SFT model, the step-0 eval stream) is the same per seed
        first_of_seed.setdefault(run.run.seed, run)
        run.eval.at_start = run is first_of_seed[run.run.seed]
    for run in runs:  # a folder made with other settings is not silently reused
        if (Path(run.run.out_dir) / "config.yaml").exists():
            check_resume(run, Path(run.run.out_dir), step=0)
    todo = [run for run in runs if not _finished(run)]
    for run in todo:  # one progress view for the grid, not one bar per run
        run.run.progress = False
    _run_grid(todo, len(runs), workers=min(cfg.workers or _cores(), max(len(todo), 1)))
    return summarise(cfg)


def _finished(run: TrainConfig) -> bool:
    summary = Path(run.run.out_dir) / "summary.json"
    return summary.exists() and json.loads(summary.read_text())["after"]["step"] >= run.run.steps


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _label(run: TrainConfig) -> str:
    return str(Path(run.run.out_dir).relative_to(Path(run.run.out_dir).parents[2]))


def _train_one(run: TrainConfig) -> str:
    from maxrl.models.loading import quiet_transformers
    from maxrl.seeding import process_settings
    from maxrl.train.rl import train

    process_settings(run.run)
    quiet_transformers()
    train(run)
    return run.run.out_dir


def _run_grid(todo: list[TrainConfig], total: int, workers: int) -> None:
    """Train the runs ``todo`` in ``workers`` processes (each with ``run.threads`` torch
    threads), showing runs done, running and left, and the time left, for the whole grid."""
    from tqdm.auto import tqdm

    done = total - len(todo)
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True)
    running: dict = {}

    def show() -> None:
        left = total - bar.n - len(running)
        bar.set_postfix_str(
            f"running {len(running)}: {', '.join(sorted(running.values()))}; left {left}"
        )

    if workers <= 1:
        for run in todo:
            running[None] = _label(run)
            show()
            _train_one(run)
            del running[None]
            bar.update()
        bar.close()
        return
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch threads exist
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending = list(todo)
        while pending or running:
            while pending and len(running) < workers:
                run = pending.pop(0)
                running[pool.submit(_train_one, run)] = _label(run)
            show()
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                label = running.pop(future)
                try:
                    future.result()
                except BaseException as exc:
                    pool.shutdown(cancel_futures=True)
                    bar.close()
                    raise RuntimeError(
                        f"sweep run {label} failed: {exc!r}; finished runs are kept, and "
                        f"running the same command again resumes the grid"
                    ) from exc
                bar.update()
    show()
    bar.close()


def _final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["after"]


def _start_evals(out: Path, cfg: SweepConfig) -> list[dict]:
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


def summarise(cfg: SweepConfig) -> dict:
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
    keys = (
        "eval/pass@1",
        f"eval/pass@{k_big}",
        "eval/neg_log_pass@1",
        f"eval/neg_log_pass@{k_big}",
    )
    lines = [
        f"| method | N | seeds | pass@1 | pass@{k_big} | -log pass@1 | -log pass@{k_big} |",
        "|---|---|---|---|---|---|---|",
    ]
    table = {}
    starts = _start_evals(out, cfg)
    with_start = {"(start: SFT model)": {0: starts}, **results} if starts else results
    for name, by_n in with_start.items():
        for n, recs in sorted(by_n.items()):
            row = {key: mean_sd(r[key] for r in recs) for key in keys}
            table[f"{name}/N{n}"] = {"seeds": len(recs), **row}
            cells = " | ".join(f"{m:.3f} ± {sd:.3f}" for m, sd in row.values())
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
        lines.append(
            f"\nSample-efficiency factor of {cfg.target} over {cfg.baseline} at N={n_max}, at "
            f"the coverage {cfg.baseline} reaches at k={k_big} "
            f"(pass@{k_big} = {curves[cfg.baseline].pass_at_k[-1]:.3f}): {factor:.2f}x"
        )
    lines += _pass_rate_table(with_start, n_max, out / "pass_rate_histograms.png")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(
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
        out / "neg_log_pass_vs_rollouts.png",
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
        out / "pass_at_k_curves.png",
        {
            name: {f"eval/pass@{k}": v for k, v in zip(c.ks, c.pass_at_k)}
            for name, c in curves.items()
        },
        title=f"held-out pass@k after RL, N={n_max} (mean over seeds)",
    )
    return {"table": text, "factor": factor, "results": table}


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


def main(argv: list[str]) -> int:
    cfg = parse_cli(SweepConfig, argv, "sweep", __doc__)
    if cfg is None:
        return 0
    summary = sweep(cfg)
    print(summary["table"])
    print(f"grid folder: {cfg.out_dir}")
    return 0
