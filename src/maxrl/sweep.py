"""``maxrl sweep``: methods x rollouts per prompt x seeds from one config (the paper's Fig. 3).

Every run of the grid starts from the same SFT checkpoint (made once, or ``base.model.init``)
with the same step budget, so more rollouts per prompt means more training rollouts. Runs live
in ``out_dir/<method>/N<n>/seed<s>``; a run with a ``summary.json`` is done and skipped, a run
with checkpoints is resumed, so re-running the command finishes a half-done grid.

Outputs: ``results.md`` (mean and spread over seeds of the final held-out metrics, and the
sample-efficiency factor of MaxRL over GRPO), ``results.json``, ``neg_log_pass_vs_rollouts.png``
(-log pass@k against training rollouts per prompt for k = 1 and the largest k) and
``pass_at_k_curves.png`` (final pass@k curves per method at the largest N).
"""

from __future__ import annotations

import copy
import json
import math
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

    def validate(self) -> None:
        check_unique(self.methods)
        if not self.seeds or not self.rollouts:
            raise ValueError("seeds and rollouts must each list at least one value")
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
    from maxrl.seeding import set_threads
    from maxrl.train.rl import train

    set_threads(cfg.base.run.threads)
    quiet_transformers()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "sweep.yaml")
    init = cfg.base.model.init
    if not init:
        from maxrl.train.sft import run_sft

        init = str(run_sft(cfg.base, out / "sft"))
    grid = [(m, n, s) for m in cfg.methods for n in cfg.rollouts for s in cfg.seeds]
    for i, (method, n, seed) in enumerate(grid, 1):
        run = run_config(cfg, method, n, seed, init)
        if (Path(run.run.out_dir) / "summary.json").exists():
            continue
        print(f"[{i}/{len(grid)}] {method.label} N={n} seed={seed}", flush=True)
        train(run)
    return summarise(cfg)


def _final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["after"]


def _start_evals(out: Path, cfg: SweepConfig) -> list[dict]:
    """The evaluation before RL (step 0) of each seed: the shared SFT model, per seed stream."""
    found = {}
    for summary in sorted(out.glob("*/N*/seed*/summary.json")):
        seed = summary.parent.name
        if seed not in found and int(seed.removeprefix("seed")) in cfg.seeds:
            found[seed] = json.loads(summary.read_text())["before"]
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


def main(argv: list[str]) -> int:
    cfg = parse_cli(SweepConfig, argv, "sweep", __doc__)
    if cfg is None:
        return 0
    summary = sweep(cfg)
    print(summary["table"])
    print(f"grid folder: {cfg.out_dir}")
    return 0
