"""The RL trainer on the math task: chat-templated prompts, math-verify rewards, real learning.

Both tests build a tokenizer with the `tokenizers` library and a tiny Qwen2 model from a config,
save them as a local Hugging Face folder, and run :func:`maxrl.train.rl.train` with
``task.name=math``, so the task, its prompts and its verifier come from the config exactly as in
``maxrl train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("math_verify")
pytest.importorskip("datasets")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from tokenizers import decoders as tk_decoders  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from maxrl.config import load_config  # noqa: E402
from maxrl.eval import evaluate as evaluation  # noqa: E402
from maxrl.metrics import read_metrics  # noqa: E402
from maxrl.models.loading import load_tokenizer  # noqa: E402
from maxrl.tasks.math import INSTRUCTION, answers_match  # noqa: E402
from maxrl.train import rl  # noqa: E402
from maxrl.train.checkpoints import latest_checkpoint  # noqa: E402
from maxrl.train.config import TrainConfig  # noqa: E402

DATA = Path(__file__).parent / "data" / "gsm8k_tiny.jsonl"
PAD, UNK, START, END = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"
# ChatML-style: the eos of the tokenizer is END, so a sampled answer stops where a turn ends.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(symbols: list[str], words: bool) -> PreTrainedTokenizerFast:
    """A tokenizer over ``symbols`` with the chat template; END is eos.

    ``words=False``: one token per character (a BPE model without merges), decoded by plain
    concatenation. ``words=True``: one token per word or punctuation run, decoded with spaces.
    Characters or words outside ``symbols`` become UNK, a special token that decoding drops.
    """
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, START, END, *symbols])}
    if words:
        backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
        backend.decoder = tk_decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=END,
        additional_special_tokens=[START],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) == len(vocab)
    return tokenizer


def save_policy(path: Path, tokenizer, hidden: int, layers: int, heads: int, kv_heads: int) -> str:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def chat_prompt(question: str) -> str:
    return f"{START}user\n{question}\n{INSTRUCTION}{END}\n{START}assistant\n"


def math_cfg(out_dir, init, data, *overrides) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            f"model.init={init}",
            f"run.out_dir={out_dir}",
            "task.name=math",
            f"task.data={data}",
            "run.tensorboard=false",
            "run.progress=false",
            *overrides,
        ],
    )


def test_math_training_uses_the_chat_template_and_math_verify_rewards(tmp_path, monkeypatch):
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    chars = sorted(
        set("".join(r["question"] for r in records) + INSTRUCTION + "userassistant\n0123456789")
    )
    tokenizer = chat_tokenizer(chars, words=False)
    init = save_policy(tmp_path / "init", tokenizer, hidden=32, layers=2, heads=2, kv_heads=1)

    train_batches, eval_batches = [], []
    real_sample, real_evaluate = rl.sample_groups, evaluation.evaluate

    def spy_sample(*args, **kwargs):
        groups = real_sample(*args, **kwargs)
        train_batches.append(groups)
        return groups

    def spy_evaluate(model, tok, task, items, **kwargs):
        eval_batches.append(items)
        return real_evaluate(model, tok, task, items, **kwargs)

    monkeypatch.setattr(rl, "sample_groups", spy_sample)
    monkeypatch.setattr(evaluation, "evaluate", spy_evaluate)
    out = tmp_path / "run"
    summary = rl.train(
        math_cfg(
            out,
            init,
            DATA,
            "task.test_count=3",
            "eval.prompts=3",
            "eval.samples=4",
            "eval.every=2",
            "run.steps=2",
            "rollout.prompts_per_step=2",
            "rollout.rollouts_per_prompt=4",
            "rollout.max_new_tokens=6",
            "optim.lr=1e-3",
        )
    )

    # held out: the last 3 records, evaluated before training and after its last step
    held_out = [i.meta["question"] for i in eval_batches[0]]
    assert held_out == [r["question"] for r in records[-3:]]
    assert [[i.id for i in b] for b in eval_batches] == [
        ["math/test/0", "math/test/1", "math/test/2"]
    ] * 2

    # the prompts the trainer sampled from carry the chat template, its markers as single ids
    start_id, end_id = tokenizer.convert_tokens_to_ids([START, END])
    assert len(train_batches) == 2
    for groups in train_batches:
        assert len(groups.items) == len(groups.prompt_ids) == 2 and groups.group_size == 4
        for item, prompt_ids in zip(groups.items, groups.prompt_ids):
            index = int(item.id.removeprefix("math/train/"))
            assert 0 <= index < len(records) - 3
            assert item.prompt == chat_prompt(records[index]["question"])
            assert tokenizer.decode(prompt_ids) == item.prompt
            assert prompt_ids[0] == start_id
            assert prompt_ids.count(start_id) == 2 and prompt_ids.count(end_id) == 1
            assert prompt_ids[-11:] == [
                start_id,
                *tokenizer.encode("assistant\n", add_special_tokens=False),
            ]
        # rollouts stop at eos and decode without special tokens
        assert len(groups.completions) == 2 * 4
        for row, completion in enumerate(groups.completions):
            response = groups.rollouts.tokens[row, : groups.lengths[row]].tolist()
            assert 1 <= len(response) <= 6 and end_id not in response[:-1]
            assert completion == tokenizer.decode(response, skip_special_tokens=True)
            assert END not in completion and START not in completion
        # every reward is math-verify's verdict on the decoded completion, 0 or 1
        expected = [
            float(answers_match(groups.items[row // 4].reference, c))
            for row, c in enumerate(groups.completions)
        ]
        assert groups.rewards.shape == (2, 4)
        assert groups.rewards.reshape(-1).tolist() == expected
        assert groups.verifier_errors == 0

    metrics = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2]
    train = [r for r in metrics if "train/reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for record, groups in zip(train, train_batches):
        assert record["train/reward_mean"] == pytest.approx(float(groups.rewards.mean()), abs=1e-7)
        assert 0.0 <= record["train/reward_mean"] <= 1.0
        assert record["train/verifier_errors"] == 0
        assert record["train/rollouts"] == record["step"] * 2 * 4
    evals = [r for r in metrics if "eval/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for record in evals:
        curve = [record[f"eval/pass@{k}"] for k in (1, 2, 4)]
        assert all(0.0 <= v <= 1.0 for v in curve) and curve == sorted(curve)
        assert record["eval/verifier_errors"] == 0

    assert summary["before"]["step"] == 0 and summary["after"]["step"] == 2
    for name in ("summary.md", "summary.json", "pass_at_k.png", "training.png", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text())["after"]["step"] == 2
    # the checkpoint keeps the chat template, so a resumed run or `maxrl eval` builds the same prompts
    checkpoint = latest_checkpoint(out)
    assert checkpoint.name == "step_0000002"
    assert load_tokenizer(str(checkpoint)).chat_template == CHAT_TEMPLATE


@pytest.mark.slow
def test_maxrl_learns_small_additions_from_scratch(tmp_path):
    """RL alone, from a random model: "What is a + b?" for a, b in 0..4 (25 questions).

    The vocabulary is 20 words (specials, the two roles, "What", "is", "+", "?", the digits; the
    instruction's words are UNK). Completions are 2 tokens at most and math-verify reads their
    last number, so a random policy scores about 1 in 20 and groups of 16 rollouts carry signal
    from the first step. A policy blind to the question can reach at most 5/25 = 0.2 (always
    answering 4, the most common sum), so pass@1 above 0.6 means it reads the operands.
    Measured (run seeds 0, 1, 2; 2 shared cores): pass@1 0.045 / 0.070 / 0.045 before, 0.93 /
    0.94 / 0.975 after 250 steps, about a minute each; after 25 steps it is 0.13 and the check
    fails. Nothing rewards stopping (a rollout cut at 2 tokens is not zeroed), so the trained
    policy answers 3 + 4 with "7 7" or "6 7" rather than "7" and eos.
    """
    tokenizer = chat_tokenizer(
        ["user", "assistant", "What", "is", "+", "?", *map(str, range(10))], words=True
    )
    init = save_policy(tmp_path / "init", tokenizer, hidden=64, layers=2, heads=4, kv_heads=2)
    records = [
        {"question": f"What is {a} + {b}?", "answer": f"#### {a + b}"}
        for a in range(5)
        for b in range(5)
    ]
    data = tmp_path / "add.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    steps = 250
    out = tmp_path / "run"
    # evaluated on the training questions: the check is that RL learns them, not generalisation
    rl.train(
        math_cfg(
            out,
            init,
            data,
            f"task.test_data={data}",
            "task.test_count=25",
            "eval.prompts=25",
            "eval.samples=8",
            f"eval.every={steps}",
            f"run.steps={steps}",
            f"run.checkpoint_every={steps}",
            "rollout.prompts_per_step=16",
            "rollout.rollouts_per_prompt=16",
            "rollout.max_new_tokens=2",
            "algo.estimator=maxrl",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
        )
    )
    metrics = read_metrics(out / "metrics.jsonl")
    before, after = (r for r in metrics if "eval/pass@1" in r)
    train = [r["train/reward_mean"] for r in metrics if "train/reward_mean" in r]
    assert len(train) == steps
    assert before["eval/pass@1"] < 0.15, before["eval/pass@1"]
    assert after["eval/pass@1"] > 0.6, after["eval/pass@1"]
    assert sum(train[-20:]) / 20 > 0.6, train[-20:]
    assert before["eval/verifier_errors"] == after["eval/verifier_errors"] == 0
