"""MaxRLTrainer trains with the library's advantages, in one process and across two (gloo, CPU).

A tiny Qwen2 model and a word-level tokenizer are built from scratch. The reward of a completion
is 1 when its first token id is even, so rewards can be recomputed from the completion ids that
reach the loss, independently of the trainer's own bookkeeping.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2 THIS --worker OUT``) it is
one rank of the two-process check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from maxrl import advantages  # noqa: E402
from maxrl.integrations.trl import MaxRLConfig, MaxRLTrainer, task_reward  # noqa: E402

pytestmark = pytest.mark.trl

WORDS = [f"w{i}" for i in range(29)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant{% endif %}"
    )
    return tok


def tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


def first_token_even(prompts, completions, completion_ids, **kwargs):
    return [float(len(ids) > 0 and ids[0] % 2 == 0) for ids in completion_ids]


def prompts_dataset(n: int = 24):
    import datasets

    return datasets.Dataset.from_dict(
        {"prompt": [f"{WORDS[i % 29]} {WORDS[(3 * i + 1) % 29]}" for i in range(n)]}
    )


class RecordingTrainer(MaxRLTrainer):
    """Keeps every generation batch and every batch the loss is computed on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated, self.trained = [], []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.generated.append({k: out[k].detach().clone() for k in _KEYS})
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.trained.append({k: inputs[k].detach().clone() for k in _KEYS})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")


def _rows(batch) -> dict[tuple, float]:
    """(prompt tokens, completion tokens) -> advantage, for every row of a batch."""
    out = {}
    for i in range(batch["advantages"].numel()):
        p = tuple(batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist())
        c = tuple(batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist())
        out[(p, c)] = batch["advantages"][i].item()
    return out


def _rewards(batch) -> torch.Tensor:
    return (batch["completion_ids"][:, 0] % 2 == 0).float()


def make_trainer(out_dir, *, per_device, num_generations, estimator="maxrl", params=None):
    args = MaxRLConfig(
        output_dir=str(out_dir),
        estimator=estimator,
        estimator_params=params,
        per_device_train_batch_size=per_device,
        num_generations=num_generations,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return RecordingTrainer(
        model=tiny_model(),
        reward_funcs=first_token_even,
        args=args,
        train_dataset=prompts_dataset(),
        processing_class=tiny_tokenizer(),
    )


@pytest.mark.parametrize(("estimator", "params"), [("maxrl", None), ("maxrl_t", {"T": 2})])
def test_one_process_trains_with_library_advantages(tmp_path, estimator, params):
    torch.set_num_threads(1)
    trainer = make_trainer(
        tmp_path, per_device=8, num_generations=4, estimator=estimator, params=params
    )
    trainer.train()
    assert len(trainer.generated) == 2 and len(trainer.trained) == 2
    mixed_groups = 0
    for generated, trained in zip(trainer.generated, trainer.trained):
        rewards = _rewards(generated).view(-1, 4)
        mixed_groups += int(((rewards.sum(1) > 0) & (rewards.sum(1) < 4)).sum())
        expected = advantages.compute(estimator, rewards, **(params or {})).view(-1)
        assert torch.equal(generated["advantages"], expected)
        # the batch the loss saw is a shuffle of the generated one, advantages attached
        assert _rows(trained) == _rows(generated)
    assert mixed_groups >= 1  # some advantage was not trivially 0


def test_group_advantages_unscorable_rows_and_weights():
    stub = SimpleNamespace(
        reward_weights=torch.tensor([1.0, 0.5]),
        args=SimpleNamespace(estimator="maxrl", reward_threshold=None, estimator_params={}),
    )
    nan = float("nan")
    per_func = torch.tensor(
        [[1, 0], [0, 0], [nan, nan], [0, nan]]  # group 0: one row unscorable
        + [[0, 2], [0, 0], [nan, nan], [nan, nan]],  # group 1: 2 * 0.5 = 1, then 1 scorable left
        dtype=torch.float32,
    )
    got = MaxRLTrainer.group_advantages(stub, per_func, 4)
    # group 0 keeps rows 0, 1, 3 with rewards 1, 0, 0: maxrl gives (r - 1/3) / (1/3)
    # group 1 keeps rows 4, 5 (rewards 1, 0): (r - 1/2) / (1/2)
    assert got.tolist() == [2.0, -1.0, 0.0, -1.0, 1.0, -1.0, 0.0, 0.0]
    stub.args.estimator = "rloo"
    lone = torch.tensor([[1.0, 0.0], [nan, nan], [nan, nan], [nan, nan]])
    assert MaxRLTrainer.group_advantages(stub, lone, 4).tolist() == [0.0] * 4


def test_group_advantages_check_rewards_as_the_estimator_requires():
    stub = SimpleNamespace(
        reward_weights=torch.tensor([1.0]),
        args=SimpleNamespace(estimator="maxrl", reward_threshold=None, estimator_params={}),
    )
    rewards = torch.tensor([[0.7], [0.0], [0.2], [1.0]])
    with pytest.raises(ValueError, match="reward_threshold"):
        MaxRLTrainer.group_advantages(stub, rewards, 4)
    stub.args.reward_threshold = 0.5
    assert MaxRLTrainer.group_advantages(stub, rewards, 4).tolist() == [1.0, -1.0, -1.0, 1.0]
    stub.args.estimator, stub.args.reward_threshold = "rloo", None
    expected = advantages.compute("rloo", rewards.view(1, 4)).view(-1)
    assert torch.equal(MaxRLTrainer.group_advantages(stub, rewards, 4), expected)


def test_config_validates_estimator_settings(tmp_path):
    common = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none"}
    cfg = MaxRLConfig(estimator="pass_at_k", estimator_params='{"k": 2}', **common)
    assert cfg.estimator_params == {"k": 2} and cfg.scale_rewards == "none"
    with pytest.raises(ValueError, match="scale_rewards"):
        MaxRLConfig(scale_rewards="group", **common)
    with pytest.raises(ValueError, match="unknown advantage estimator 'maxrll'"):
        MaxRLConfig(estimator="maxrll", **common)
    with pytest.raises(ValueError, match="needs the parameter 'T'"):
        MaxRLConfig(estimator="maxrl_t", **common)
    with pytest.raises(ValueError, match="exceeds the group size"):
        MaxRLConfig(estimator="maxrl_t", estimator_params={"T": 9}, num_generations=8, **common)
    with pytest.raises(ValueError, match="JSON"):
        MaxRLConfig(estimator_params="{T: 2}", **common)
    with pytest.raises(ValueError, match="sum_then_normalize"):
        MaxRLConfig(multi_objective_aggregation="normalize_then_sum", **common)


def test_task_reward_zeroes_truncated_completions_unchecked():
    from maxrl.tasks.base import Item

    class Echo:
        name = "echo"
        seen: list[str] = []

        def verify(self, items, completions):
            self.seen.extend(completions)
            return [1.0] * len(completions)

    items = [Item(id="a", prompt="p"), Item(id="b", prompt="q")]
    task = Echo()
    reward = task_reward(task, items, eos_token_ids=1, zero_reward_if_truncated=True)
    got = reward(["p", "q", "q"], ["x", "y", "z"], ["a", "b", "b"], [[5, 1], [5, 6], []])
    assert got == [1.0, 0.0, 0.0]
    assert task.seen == ["x"]  # truncated completions are not checked
    assert task_reward(Echo(), items)(["p", "q"], ["x", "y"], ["a", "b"], [[5], [6]]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="item_id 'c'"):
        reward(["p"], ["x"], ["c"], [[1]])
    with pytest.raises(ValueError, match="needs eos_token_ids"):
        task_reward(Echo(), items, zero_reward_if_truncated=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_slice_the_gathered_advantages(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        __file__,
        "--worker",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for step in range(2):
        # 2 processes x 6 completions = 3 groups of 4: group 1 straddles the two processes
        rewards = torch.tensor(ranks[0]["rewards"][step] + ranks[1]["rewards"][step])
        expected = advantages.compute("maxrl", rewards.view(3, 4)).view(-1)
        for rank, data in enumerate(ranks):
            local = torch.tensor(data["advantages"][step], dtype=torch.float32)
            assert torch.equal(local, expected[6 * rank : 6 * rank + 6])
            assert data["trained_rows_match"][step]


def _worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    trainer = make_trainer(out_dir, per_device=6, num_generations=4)
    trainer.train()
    result = {
        "world_size": trainer.accelerator.num_processes,
        "rewards": [_rewards(g).tolist() for g in trainer.generated],
        "advantages": [g["advantages"].tolist() for g in trainer.generated],
        "trained_rows_match": [
            _rows(t) == _rows(g) for g, t in zip(trainer.generated, trainer.trained)
        ],
    }
    rank = trainer.accelerator.process_index
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(sys.argv[sys.argv.index("--worker") + 1])


@pytest.mark.slow
def test_example_script_trains_two_steps(tmp_path):
    """examples/trl_maxrl.py end to end on the tiny model and the tiny GSM8K file."""
    import importlib.util

    model_dir, tok_dir = tmp_path / "model", tmp_path / "tokenizer"
    tiny_model().save_pretrained(model_dir)
    # a folder of its own, so AutoTokenizer reads tokenizer_config.json, not the model type
    tiny_tokenizer().save_pretrained(tok_dir)
    path = Path(__file__).parents[1] / "examples" / "trl_maxrl.py"
    spec = importlib.util.spec_from_file_location("trl_maxrl_example", path)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    data = Path(__file__).parent / "data" / "gsm8k_tiny.jsonl"
    trainer = example.main(
        [
            f"model={model_dir}",
            f"tokenizer={tok_dir}",
            f"train={data}",
            f"output_dir={tmp_path / 'run'}",
            "max_steps=2",
            "rollouts_per_prompt=4",
            "prompts_per_step=2",
            "micro_batch_size=4",
            "max_completion_length=8",
            "use_cpu=true",
            "estimator=maxrl_t",
            "estimator_params.T=2",
        ]
    )
    assert trainer.state.global_step == 2
    assert trainer.args.estimator == "maxrl_t" and trainer.args.estimator_params == {"T": 2}
    # the tiny random model never answers correctly: every reward is 0
    assert [h["reward"] for h in trainer.state.log_history if "reward" in h] == [0.0, 0.0]
    assert (tmp_path / "run" / "model.safetensors").is_file()
