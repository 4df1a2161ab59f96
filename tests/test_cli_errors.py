"""User errors through the real ``maxrl`` command: one line, exit status 2, no traceback;
``--debug`` shows the traceback. And a resumed run folder refuses a changed config."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from maxrl.cli import main as cli_main
from maxrl.config import ConfigError

TINY = [
    "model.preset=tiny",
    "task.maze_size=7",
    "task.test_count=4",
    "sft.steps=2",
    "sft.batch_size=2",
    "run.steps=2",
    "eval.prompts=2",
    "eval.samples=2",
    "eval.every=1",
    "rollout.prompts_per_step=2",
    "rollout.rollouts_per_prompt=2",
    "rollout.max_new_tokens=4",
    "run.progress=false",
    "run.tensorboard=false",
    "run.checkpoint_every=1",
]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "algo.estimator=foo"], "unknown advantage estimator 'foo'"),
        (["train", "algo.lossagg=token_mean"], "unknown config key 'algo.lossagg'"),
        (["train", "optim.lr=abc"], "bad config value for 'optim.lr'"),
        (["train", "task.maze_size=8"], "task.maze_size must be an odd integer >= 5"),
        (["train", "model.init=/no/such/folder"], "model.init='/no/such/folder' does not exist"),
        (["train", "algo.estimator=maxrl_t", "algo.params={T: 99}"], "T=99 exceeds the group"),
        (["train", "no/such.yaml"], "config file 'no/such.yaml' does not exist"),
        (["train", "task.name=math", "model.init=."], "needs task.data=PATH"),
        (["train", "rollout.precision=fp16"], "rollout.precision must be one of"),
        (
            ["train", "rollout.precision=bfloat16", "rollout.backend=hf"],
            "rollout.precision=bfloat16 needs rollout.backend=kv; got 'hf'",
        ),
        (["eval", "task=maze"], "give checkpoint=PATH"),
        (["sweep", "methods=[{name: a}, {name: a}]"], "method names must be unique"),
    ],
)
def test_a_user_error_prints_one_line_and_exits_2(tmp_path, capsys, args, message):
    assert cli_main([*args, f"run.out_dir={tmp_path}"] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"maxrl {args[0]}: error: ")
    assert message in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown advantage estimator 'foo'"):
        cli_main(["train", "algo.estimator=foo", "--debug"])
    env = {**os.environ, "MAXRL_DEBUG": "1"}
    command = [sys.executable, "-m", "maxrl.cli", "train", "optim.lr=abc"]
    debug = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    env.pop("MAXRL_DEBUG")
    plain = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [plain.stderr.strip()]
    assert plain.stderr.startswith("maxrl train: error: bad config value for 'optim.lr'")


def test_resume_refuses_a_changed_config_before_any_checkpoint_changes(tmp_path):
    out = tmp_path / "run"
    tiny = [*TINY, "optim.schedule=constant"]  # resumable with more steps
    assert cli_main(["train", *tiny, f"run.out_dir={out}"]) == 0
    ckpts = out / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    config_before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"optim.lr: 0.0001 -> 0.001"):
        cli_main(["train", *tiny, f"run.out_dir={out}", "optim.lr=1e-3", "run.steps=3", "--debug"])
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before
    assert (out / "config.yaml").read_text() == config_before
    # more steps (and logging, progress, checkpoint cadence) are a resume, not a new run
    assert cli_main(["train", *tiny, f"run.out_dir={out}", "run.steps=3"]) == 0
    assert (ckpts / "step_0000003").exists()
    # and an explicit option allows a change
    args = ["optim.lr=1e-3", "run.steps=4", "run.allow_config_change=true"]
    assert cli_main(["train", *tiny, f"run.out_dir={out}", *args]) == 0
    assert (ckpts / "step_0000004").exists()
    with pytest.raises(ConfigError, match="run.steps=1 is below the 4 steps"):
        cli_main(["train", *tiny, f"run.out_dir={out}", "run.steps=1", "--debug"])


def test_a_decaying_schedule_resumes_only_with_its_own_steps(tmp_path):
    """The default cosine schedule decays over run.steps: resuming with other steps would change
    the learning rate of the steps left, so it is refused in one line before any checkpoint
    changes; the same steps, or run.allow_config_change=true, resume."""
    out = tmp_path / "run"
    assert cli_main(["train", *TINY, f"run.out_dir={out}"]) == 0
    ckpts = out / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    with pytest.raises(ConfigError, match=r"started for run.steps=2 with optim.schedule='cosine'"):
        cli_main(["train", *TINY, f"run.out_dir={out}", "run.steps=3", "--debug"])
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before
    assert cli_main(["train", *TINY, f"run.out_dir={out}", "run.steps=2"]) == 0
    args = ["run.steps=3", "run.allow_config_change=true"]
    assert cli_main(["train", *TINY, f"run.out_dir={out}", *args]) == 0
    assert (ckpts / "step_0000003").exists()
