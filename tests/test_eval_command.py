"""``maxrl eval`` through the real command, on the maze task and on the math task."""

from __future__ import annotations

import json

import pytest

from maxrl.cli import main as cli_main
from maxrl.eval.evaluate import evaluate
from maxrl.groups import make_rollout_sampler
from maxrl.models.loading import load_policy, stop_ids
from maxrl.rollout import SamplingParams


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", *args, f"out={out}"]) == 0
    return json.loads(out.read_text())


def test_eval_on_mazes_prints_and_writes_the_unbiased_pass_at_k(tmp_path, tiny_init, capsys):
    from maxrl.tasks.maze import MazeTask

    args = [f"checkpoint={tiny_init}", "task=maze", "maze_size=7", "prompts=3", "samples=8"]
    metrics = _run(tmp_path, *args, "max_new_tokens=8", "seed=3")
    printed = capsys.readouterr().out
    assert all(key in printed for key in metrics)
    assert [k for k in metrics if k.startswith("eval/pass@")] == [
        f"eval/pass@{k}" for k in (1, 2, 4, 8)
    ]
    # the same evaluation, called directly: the command adds nothing and drops nothing
    model, tokenizer = load_policy(tiny_init)
    task = MazeTask(size=7, test_count=3)
    direct, curve = evaluate(
        model,
        tokenizer,
        task,
        task.test_items(3),
        samples=8,
        sampler=make_rollout_sampler("kv", 4096),
        params=SamplingParams(8, stop_token_ids=stop_ids(tokenizer)),
        seed=3,
        step=0,
    )
    assert metrics == pytest.approx(direct, rel=1e-12)
    assert curve.ks == (1, 2, 4, 8) and list(curve.pass_at_k) == sorted(curve.pass_at_k)


def test_eval_on_math_needs_only_held_out_data(tmp_path):
    pytest.importorskip("math_verify")
    from test_math_training import DATA, chat_tokenizer, save_policy

    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    chars = sorted(set("".join(r["question"] for r in records) + "userassistant\n0123456789\\{}"))
    init = save_policy(tmp_path / "init", chat_tokenizer(chars, words=False), 32, 2, 2, 1)
    metrics = _run(
        tmp_path,
        f"checkpoint={init}",
        "task=math",
        f"data={DATA}",
        "prompts=3",
        "samples=4",
        "max_new_tokens=6",
    )
    assert metrics["eval/verifier_errors"] == 0
    # a random model almost never writes a right boxed answer; the curve is still a pass@k curve
    curve = [metrics[f"eval/pass@{k}"] for k in (1, 2, 4)]
    assert all(0.0 <= v <= 1.0 for v in curve) and curve == sorted(curve)
    assert 0 < metrics["eval/response_length"] <= 6
    # three held-out prompts: the all-fail fraction is a count of prompts over 3
    assert 3 * metrics["eval/frac_all_fail"] == pytest.approx(
        round(3 * metrics["eval/frac_all_fail"])
    )


def test_eval_without_a_checkpoint_is_an_error(capsys):
    assert cli_main(["eval", "task=maze"]) == 2
    assert "maxrl eval: error: give checkpoint=PATH" in capsys.readouterr().err
