"""The sweep command: a grid of runs, its resume, and its summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maxrl.config import load_config
from maxrl.sweep import SweepConfig, resolve_params, summarise, sweep


def grid_args(out, init, *extra) -> list[str]:
    """A tiny grid's command-line overrides; later ones in ``extra`` win."""
    return [
        f"out_dir={out}",
        f"base.model.init={init}",
        "base.task.maze_size=7",
        "base.task.test_count=4",
        "base.rollout.prompts_per_step=2",
        "base.rollout.max_new_tokens=6",
        "base.eval.prompts=4",
        "base.eval.samples=4",
        "base.eval.every=2",
        "base.run.steps=2",
        "base.run.checkpoint_every=2",
        "base.run.tensorboard=false",
        "base.run.progress=false",
        "methods=[{name: maxrl, estimator: maxrl}, {name: maxrl_t, estimator: maxrl_t, "
        "params: {T: N/2}}, {name: grpo, estimator: grpo}]",
        "rollouts=[2,4]",
        "seeds=[0,1]",
        *extra,
    ]


def grid_cfg(out, init, *extra) -> SweepConfig:
    return load_config(SweepConfig, None, grid_args(out, init, *extra))


def test_grid_runs_resumes_and_summarises(tmp_path, tiny_init):
    cfg = grid_cfg(tmp_path, tiny_init)
    summary = sweep(cfg)
    runs = sorted(p.parent for p in tmp_path.glob("*/N*/seed*/summary.json"))
    assert len(runs) == 3 * 2 * 2
    table = (tmp_path / "results.md").read_text()
    for name in ("maxrl", "maxrl_t", "grpo"):
        assert f"| {name} | 2 | 2 |" in table and f"| {name} | 4 | 2 |" in table
    assert (tmp_path / "neg_log_pass_vs_rollouts.png").exists()
    assert (tmp_path / "pass_at_k_curves.png").exists()
    assert "| grpo | 4 | pass@1 |" in table and "2 x pooled sd" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["k_max"] == 4 and len(results["table"]) == 6 + 1  # + the SFT start
    assert "| (start: SFT model) | 0 | 2 |" in table
    # maxrl_t's T followed N: T = N/2
    cfg_used = (tmp_path / "maxrl_t" / "N4" / "seed1" / "config.yaml").read_text()
    assert "T: 2" in cfg_used
    # a half-finished grid: only the missing run is redone, the others are kept as they are
    victim = tmp_path / "grpo" / "N4" / "seed0"
    kept = (tmp_path / "maxrl" / "N2" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    (victim / "summary.json").unlink()
    again = sweep(cfg)
    assert (victim / "summary.json").exists()
    assert (tmp_path / "maxrl" / "N2" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == kept
    assert again["table"] == summary["table"]
    # a second report of the same folder, under its own prefix, with an extra pass@k column
    other = grid_cfg(tmp_path, tiny_init, "report_prefix=t2_", "report_ks=[2]")
    text = summarise(other)["table"]
    assert text.splitlines()[0].startswith("| method | N | seeds | pass@1 | pass@2 | pass@4 |")
    assert (tmp_path / "t2_results.md").read_text().strip() == text.strip()
    assert (tmp_path / "t2_pass_at_k_curves.png").exists()
    assert (tmp_path / "results.md").read_text() == table  # the first report is untouched
    results2 = json.loads((tmp_path / "t2_results.json").read_text())
    row = results2["table"]["maxrl/N4"]
    assert set(row) == {
        "seeds",
        "eval/pass@1",
        "eval/pass@2",
        "eval/pass@4",
        "eval/neg_log_pass@1",
        "eval/neg_log_pass@4",
    }
    with pytest.raises(ValueError, match=r"report_ks \[3\] are not among the evaluated k"):
        summarise(grid_cfg(tmp_path, tiny_init, "report_ks=[3]"))


def test_resolve_params_and_bad_grids(tmp_path, tiny_init):
    assert resolve_params({"T": "N", "k": "N/4", "x": 3}, 16) == {"T": 16, "k": 4, "x": 3}
    with pytest.raises(ValueError, match="T=8 exceeds the group size N=2"):
        grid_cfg(tmp_path, tiny_init, "methods=[{name: a, estimator: maxrl_t, params: {T: 8}}]")
    with pytest.raises(ValueError, match="unique"):
        grid_cfg(
            tmp_path, tiny_init, "methods=[{name: a, estimator: maxrl}, {name: a, estimator: grpo}]"
        )
    with pytest.raises(ValueError, match="no finished runs"):
        summarise(grid_cfg(tmp_path / "empty", tiny_init))


def test_shipped_sweep_configs_are_valid():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("sweep_*.yaml"))
    assert len(files) >= 2
    for f in files:
        cfg = load_config(SweepConfig, f)
        # comparisons of the trainer's forward (its precision, its streams) and of the main
        # job's learning rate and its schedule, not of methods
        if f.stem not in (
            "sweep_precision",
            "sweep_main_lr",
            "sweep_main_schedule",
            "sweep_main_streams",
        ):
            assert {m.estimator for m in cfg.methods} >= {"maxrl", "grpo", "rloo"}


def test_parallel_workers_give_the_same_grid(tmp_path, tiny_init):
    """Two worker processes train the same runs to the same metrics as one process."""
    small = ["methods=[{name: maxrl, estimator: maxrl}, {name: grpo, estimator: grpo}]"]
    small += ["rollouts=[4]", "seeds=[0,1]"]
    serial = sweep(grid_cfg(tmp_path / "serial", tiny_init, *small, "workers=1"))
    parallel = sweep(grid_cfg(tmp_path / "parallel", tiny_init, *small, "workers=2"))
    assert parallel["table"] == serial["table"]
    for run in ("maxrl/N4/seed0", "grpo/N4/seed1"):
        a = (tmp_path / "serial" / run / "metrics.jsonl").read_text().splitlines()
        b = (tmp_path / "parallel" / run / "metrics.jsonl").read_text().splitlines()
        strip = [
            [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in x]
            for x in (a, b)
        ]
        assert strip[0] == strip[1]
    with pytest.raises(ValueError, match="workers must be >= 0"):
        grid_cfg(tmp_path, tiny_init, "workers=-1")


def test_gap_verdict_by_value():
    from maxrl.eval.sweep_report import gap_verdict

    # means 0.5 and 0.2, sds 0.1 each: pooled sd 0.1, gap 0.3 > 0.2
    gap, two_sd, verdict = gap_verdict([0.4, 0.5, 0.6], [0.1, 0.2, 0.3])
    assert gap == pytest.approx(0.3, rel=1e-12) and two_sd == pytest.approx(0.2, rel=1e-12)
    assert verdict == "A ahead"
    assert gap_verdict([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])[2] == "B ahead"
    # gap 0.15 < 0.2: within noise
    assert gap_verdict([0.35, 0.45, 0.55], [0.2, 0.3, 0.4])[2] == "within noise"
    # unequal seeds: pooled variance weights each side by its degrees of freedom
    gap, two_sd, _ = gap_verdict([0.0, 1.0], [0.0, 0.5, 1.0])
    assert two_sd == pytest.approx(2 * ((0.5 + 2 * 0.25) / 3) ** 0.5, rel=1e-12)
    assert gap_verdict([0.5], [0.1, 0.2])[2] == "1 seed"


def test_comparison_pairs(tmp_path, tiny_init):
    from types import SimpleNamespace

    from maxrl.eval.sweep_report import _comparison_table

    def recs(*values):
        return {16: [{"eval/pass@1": v} for v in values]}

    results = {"maxrl": recs(0.4, 0.5, 0.6), "grpo": recs(0.1, 0.2, 0.3), "rloo": recs(0.35, 0.45)}
    rows = _comparison_table(SimpleNamespace(target="maxrl", compare=[]), results, ["eval/pass@1"])
    # by default the target against every other method: gap 0.3 > 2 x pooled sd 0.2
    assert (
        rows[3] == "| maxrl | grpo | 16 | pass@1 | 0.500 | 0.200 | +0.300 | 0.200 | maxrl ahead |"
    )
    assert rows[4].startswith("| maxrl | rloo | 16 | pass@1 | 0.500 | 0.400 | +0.100 |")
    assert len(rows) == 5
    pairs = SimpleNamespace(target="maxrl", compare=[["rloo", "grpo"]])
    rows = _comparison_table(pairs, results, ["eval/pass@1"])
    assert len(rows) == 4 and rows[3].startswith("| rloo | grpo | 16 | pass@1 | 0.400 | 0.200 |")
    assert rows[3].endswith("| rloo ahead |")
    with pytest.raises(ValueError, match=r"compare entry \['maxrl', 'ppo'\] must name two"):
        grid_cfg(tmp_path, tiny_init, "compare=[[maxrl, ppo]]")


def test_precision_sweep_names_its_precisions():
    """Each variant of the precision sweep sets the forward and the precisions (training forward,
    rollouts) its name says, not the CPU-dependent ``auto`` or the default."""
    from pathlib import Path

    from maxrl.sweep import run_config

    path = Path(__file__).resolve().parents[1] / "configs" / "sweep_precision.yaml"
    cfg = load_config(SweepConfig, path)
    got = {
        m.label: (run.model.packed, run.model.precision, run.rollout.precision)
        for m in cfg.methods
        for run in [run_config(cfg, m, cfg.rollouts[0], cfg.seeds[0], "<sft>")]
    }
    assert got == {
        "hf_fp32": (False, "float32", "float32"),
        "packed_fp32": (True, "float32", "float32"),
        "packed_bf16": (True, "bfloat16", "float32"),
        "packed_bf16_rollouts_bf16": (True, "bfloat16", "bfloat16"),
    }


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, parent pid, ...; none
    once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes whose parent is ``pid``."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            spawned = b"spawn_main" in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if spawned and _stat(int(proc.name))[1:2] == [str(pid)]:
            out.append(int(proc.name))
    return out


def _running(pid: int) -> bool:
    # a zombie (state Z) has exited and waits only for its new parent to reap it
    return _stat(pid)[:1] not in ([], ["Z"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl")
def test_workers_stop_when_the_sweep_is_killed(tmp_path, tiny_init):
    """A sweep killed outright takes its workers with it: none keeps training an orphan run."""
    script = "import sys; from maxrl.sweep import main; sys.exit(main(sys.argv[1:]))"
    args = grid_args(
        tmp_path / "grid",
        tiny_init,
        "base.run.steps=100000",  # far longer than the test: the workers are mid-run when killed
        "base.run.checkpoint_every=100000",
        "base.eval.every=100000",
        "methods=[{name: grpo, estimator: grpo}]",
        "rollouts=[2]",
        "workers=2",
    )
    sweep_proc = subprocess.Popen([sys.executable, "-c", script, *args])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            workers = _workers_of(sweep_proc.pid)
        assert len(workers) == 2, f"the sweep started workers {workers}"
        os.kill(sweep_proc.pid, signal.SIGKILL)
        sweep_proc.wait()
        deadline = time.monotonic() + 60
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = [w for w in workers if _running(w)]
        assert alive == [], f"workers {alive} outlived the sweep"
    finally:
        sweep_proc.kill()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
