"""``maxrl sweep``: methods x rollouts per prompt x seeds from one config (the paper's Fig. 3).

Every run of the grid starts from the same SFT checkpoint (made once, or ``base.model.init``)
with the same step budget, so more rollouts per prompt means more training rollouts. Runs live
in ``out_dir/<method>/N<n>/seed<s>``; a run with a ``summary.json`` is done and skipped, a run
with checkpoints is resumed, so re-running the command finishes a half-done grid. The runs train
``workers`` at a time (one per core by default), each in its own process with
``base.run.threads`` torch threads, under one progress view of the grid; a run's metrics do not
depend on how many run beside it. Killing the sweep process ends its workers too (on Linux), so
a killed grid resumes cleanly.

Outputs: ``results.md`` (mean and spread over seeds of the final held-out metrics, and the
sample-efficiency factor of MaxRL over GRPO), ``results.json``, ``neg_log_pass_vs_rollouts.png``
(-log pass@k against training rollouts per prompt for k = 1 and the largest k) and
``pass_at_k_curves.png`` (final pass@k curves per method at the largest N) and
``pass_rate_histograms.png`` (held-out prompts by pass rate at the start and after RL). The start
is evaluated once per seed, in the first run of that seed (``eval.at_start``). Sweeps that share
a folder (and so its SFT start and the runs they have in common) name their reports apart with
``report_prefix``; ``report_ks`` adds pass@k columns to the table.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from maxrl.config import ConfigError, parse_cli, save_config
from maxrl.eval.sweep_report import report_paths, summarise
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
    compare: list[list[str]] = field(
        default_factory=list,
        metadata={
            "help": "pairs of method names [A, B] whose gaps the report judges; empty = target "
            "against every other method"
        },
    )
    report_ks: list[int] = field(
        default_factory=list,
        metadata={"help": "pass@k columns of the results table besides k = 1 and the largest"},
    )
    report_prefix: str = field(
        default="",
        metadata={
            "help": "prefix of the report files in out_dir (e.g. table3_ -> table3_results.md), "
            "for sweeps that share a folder and its runs"
        },
    )
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
        if not all(isinstance(k, int) and k >= 1 for k in self.report_ks):
            raise ValueError(f"report_ks must be positive integers; got {self.report_ks}")
        if "/" in self.report_prefix or self.report_prefix.startswith("."):
            raise ValueError(
                f"report_prefix {self.report_prefix!r} must be a plain file-name prefix "
                f"(no '/', no leading '.'), e.g. table3_"
            )
        labels = {m.label for m in self.methods}
        for pair in self.compare:
            if len(pair) != 2 or not set(pair) <= labels:
                raise ValueError(
                    f"compare entry {list(pair)} must name two of the methods "
                    f"({', '.join(sorted(labels))}), e.g. [maxrl, grpo]"
                )
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
    save_config(cfg, report_paths(cfg)("sweep.yaml"))
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
    # longest runs first, so that the short ones fill the workers at the end (stable: the grid's
    # order among runs of equal cost); a run's metrics do not depend on when it trains
    todo.sort(key=_cost, reverse=True)
    _run_grid(todo, len(runs), workers=min(cfg.workers or _cores(), max(len(todo), 1)))
    return summarise(cfg)


def _finished(run: TrainConfig) -> bool:
    summary = Path(run.run.out_dir) / "summary.json"
    return summary.exists() and json.loads(summary.read_text())["after"]["step"] >= run.run.steps


def _cost(run: TrainConfig) -> int:
    """A run's rollout tokens at most, the measure its training time grows with."""
    roll = run.rollout
    return run.run.steps * roll.prompts_per_step * roll.rollouts_per_prompt * roll.max_new_tokens


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


def _stop_with_parent(parent: int) -> None:
    """Worker initialiser: on Linux, ask the kernel to end this worker when the sweep process
    dies (killed, or its terminal closed), so that no orphan keeps training and writing into a
    run folder that the next ``maxrl sweep`` resumes. A run stopped this way resumes from its last
    checkpoint like any killed run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the sweep died before the request was in place
        os._exit(1)


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
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_stop_with_parent, initargs=(os.getpid(),)
    ) as pool:
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


def main(argv: list[str]) -> int:
    cfg = parse_cli(SweepConfig, argv, "sweep", __doc__)
    if cfg is None:
        return 0
    summary = sweep(cfg)
    print(summary["table"])
    print(f"grid folder: {cfg.out_dir}")
    return 0
