"""Math task: record parsing, loading, prompts, and the math-verify checker with timeouts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from maxrl.tasks.base import Item, Task  # noqa: E402
from maxrl.tasks.checking import AnswerChecker  # noqa: E402
from maxrl.tasks.math import (  # noqa: E402
    INSTRUCTION,
    MathTask,
    answers_match,
    last_boxed,
    load_records,
    parse_record,
)

DATA = Path(__file__).parent / "data" / "gsm8k_tiny.jsonl"


def hanging_or_throwing(gold: str, completion: str) -> bool:
    """A check that hangs on "HANG", raises on "THROW", and is math-verify otherwise."""
    if completion == "HANG":
        time.sleep(600)
    if completion == "THROW":
        raise RuntimeError("checker bug")
    return answers_match(gold, completion)


def _records() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture(scope="module")
def task():
    t = MathTask(_records(), test_size=2, timeout_s=10.0)
    yield t
    t.close()


def test_gsm8k_record_gold_and_demonstration():
    question, gold, demo = parse_record(_records()[5])
    assert question.startswith("A school orders 4 crates")
    assert gold == "1234"  # "#### 1,234" loses its thousands separator
    assert "<<" not in demo and demo.endswith(r"The final answer is \boxed{1234}.")
    assert demo.startswith("The crates hold 4*250=1000 notebooks")


def test_math_record_takes_answer_or_last_boxed():
    solution = (
        r"So $x = \boxed{\frac{1}{2}}$, not $\boxed{3}$? No: the answer is \boxed{\frac{1}{2}}."
    )
    assert parse_record({"problem": "Solve.", "solution": solution}) == (
        "Solve.",
        r"\frac{1}{2}",
        solution,
    )
    # MATH-500 style: an explicit answer field wins over the solution's box
    record = {"problem": "P", "solution": r"... \boxed{0.5}", "answer": r"\frac12"}
    assert parse_record(record)[1] == r"\frac12"
    assert last_boxed(r"a \boxed{x^{2}+\frac{1}{y}} b") == r"x^{2}+\frac{1}{y}"
    assert last_boxed("no box") is None


def test_bad_records_raise():
    with pytest.raises(ValueError, match="no question"):
        parse_record({"text": "hi", "answer": "#### 3"})
    with pytest.raises(ValueError, match="no gold answer"):
        parse_record({"problem": "P", "solution": "no box here"})


def test_load_records_jsonl_parquet_and_folder(tmp_path):
    pytest.importorskip("datasets")
    rows = load_records(DATA)
    assert rows == _records()
    import datasets

    datasets.Dataset.from_list(rows[:3]).to_parquet(str(tmp_path / "part.parquet"))
    assert load_records(tmp_path / "part.parquet") == rows[:3]
    folder = tmp_path / "gsm"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[4:6]) + "\n")
    t = MathTask.from_sources(folder, folder)
    assert [i.reference for i in t.test_items(2)] == ["100", "1234"]
    assert [i.meta["question"] for i in t.train_items(4, seed=0)] != []
    with pytest.raises(ValueError, match="does not exist"):
        load_records(tmp_path / "missing.jsonl")


def test_items_prompts_and_splits(task):
    assert isinstance(task, Task)
    test = task.test_items(2)
    assert [i.id for i in test] == ["math/test/0", "math/test/1"]
    assert [i.reference for i in test] == ["0.75", "31"]
    train = task.train_items(25, seed=3)
    assert len(train) == 25 and {i.id for i in train[:10]} == {f"math/train/{k}" for k in range(10)}
    assert [i.id for i in task.train_items(25, seed=3)] == [i.id for i in train]
    assert [i.id for i in task.train_items(10, seed=4)] != [i.id for i in train[:10]]
    assert not {i.id for i in train} & {i.id for i in test}
    first = _records()[0]["question"]
    prompt = next(i.prompt for i in train if i.id == "math/train/0")
    assert prompt == f"Question: {first}\n{INSTRUCTION}\nAnswer:"
    with pytest.raises(ValueError, match="size of the test split"):
        task.test_items(3)


def test_chat_template_prompt():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]"))
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    t = MathTask(_records()[:3], test_size=1, tokenizer=tok, system_prompt="Be brief.")
    q = _records()[0]["question"]
    assert t.train_items(1, seed=0)[0].prompt in {
        f"<|system|>Be brief.\n<|user|>{r['question']}\n{INSTRUCTION}\n<|assistant|>"
        for r in _records()[:2]
    }
    assert t.format_prompt(q) == f"<|system|>Be brief.\n<|user|>{q}\n{INSTRUCTION}\n<|assistant|>"


EQUIVALENT = [
    (r"\frac{1}{2}", r"The answer is \boxed{0.5}."),
    ("0.5", r"so it is \boxed{\frac{1}{2}}"),
    ("1/2", r"\boxed{\frac{1}{2}}"),
    ("0.5", "The answer is 1/2"),
    ("3.0", r"\boxed{3}"),
    ("3", r"\boxed{3.0}"),
    ("1234", r"The total is \boxed{1,234}"),
    ("1234", "They have 1,234 notebooks."),
    ("72", r"48/2 = 24 in May, and 48 + 24 = 72. \boxed{72} Then 73 would be wrong."),
    (r"2\sqrt{2}", r"\boxed{\sqrt{8}}"),
]
WRONG = [
    ("5", r"\boxed{6}"),
    (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}"),
    ("1234", r"\boxed{1235}"),
    ("12", "I have no idea."),
    ("12", ""),
]


def test_equivalent_answers_pass_and_wrong_ones_fail(task):
    pairs = EQUIVALENT + WRONG
    items = [Item(id=str(i), prompt="", reference=gold) for i, (gold, _) in enumerate(pairs)]
    scores = task.verify(items, [c for _, c in pairs])
    assert scores == [1.0] * len(EQUIVALENT) + [0.0] * len(WRONG)


def test_gsm8k_targets_verify_against_their_own_gold(task):
    items = task.train_items(10, seed=0) + task.test_items(2)
    assert task.verify(items, [i.target for i in items]) == [1.0] * 12


def test_truncated_completions_score_zero_unchecked(task):
    """The one truncation rule (``rollout.zero_reward_if_truncated``) applies to this task too:
    a completion flagged truncated scores 0 and is never sent to math-verify."""
    from maxrl.groups import verify_rewards

    item = task.test_items(2)[1]  # gold 31
    right = r"Kim scored 36, so Lee scored \boxed{31}"
    checked = task.checker.stats["checked"]
    rewards, errors = verify_rewards(task, [item] * 3, [right] * 3, [False, True, False])
    assert rewards == [1.0, 0.0, 1.0] and errors == 0
    assert task.checker.stats["checked"] == checked + 2
    assert verify_rewards(task, [item], [right])[0] == [1.0]
    with pytest.raises(ValueError, match="truncated flags"):
        verify_rewards(task, [item], [right], [])


def test_a_task_of_held_out_records_alone_evaluates_but_does_not_train():
    task = MathTask([], _records()[:2])
    assert [i.id for i in task.test_items(2)] == ["math/test/0", "math/test/1"]
    with pytest.raises(ValueError, match="holds no training records"):
        task.train_items(4, seed=0)
    task.close()
    with pytest.raises(ValueError, match="are empty"):
        MathTask([], None)


def test_verify_needs_one_completion_per_item(task):
    item = task.test_items(1)[0]
    right = "x"
    with pytest.raises(ValueError, match="completions"):
        task.verify([item, item], [right])


def test_hanging_and_throwing_checks_score_zero_and_the_batch_goes_on():
    checker = AnswerChecker(hanging_or_throwing, workers=1, timeout_s=2.0, chunk_size=8)
    pairs = [
        ("42", r"\boxed{42}"),
        ("42", "HANG"),
        ("7", r"\boxed{7.0}"),
        ("7", "THROW"),
        ("7", r"\boxed{8}"),
        ("0.5", r"\boxed{\frac{1}{2}}"),
    ]
    with pytest.warns(RuntimeWarning) as record:
        scores = checker(pairs)
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert checker.stats == {"checked": 6, "errors": 1, "timeouts": 1, "restarts": 1}
    messages = " ".join(str(w.message) for w in record)
    assert "1 of 6 answer checks raised" in messages and "RuntimeError: checker bug" in messages
    assert "ran past 2 s" in messages
    # the replacement worker keeps scoring
    with pytest.warns(RuntimeWarning, match="1 of 3 answer checks ran past"):
        assert checker([("3", r"\boxed{3}"), ("3", "HANG"), ("3", "3.0")]) == [1.0, 0.0, 1.0]
    assert checker.stats["timeouts"] == 2
    checker.close()


def test_two_workers_score_in_order():
    checker = AnswerChecker(answers_match, workers=2, timeout_s=10.0, chunk_size=3)
    pairs = [(str(n), rf"\boxed{{{n if n % 3 else n + 1}}}") for n in range(1, 15)]
    assert checker(pairs) == [0.0 if n % 3 == 0 else 1.0 for n in range(1, 15)]
    assert checker([]) == []
    checker.close()


def test_bad_checker_settings_raise():
    with pytest.raises(ValueError, match="workers"):
        AnswerChecker(answers_match, workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        AnswerChecker(answers_match, timeout_s=0)
    with pytest.raises(ValueError, match="test_size"):
        MathTask(_records()[:2], test_size=2)


def test_a_slow_worker_start_does_not_count_against_the_first_answer(tmp_path, monkeypatch):
    """A check whose module takes longer to import than the per-item timeout: every answer is
    still scored, because a worker's first deadline runs from when it has started."""
    (tmp_path / "slow_import_check.py").write_text(
        "import time\ntime.sleep(3)\n\ndef check(gold, completion):\n    return gold == completion\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import slow_import_check

    checker = AnswerChecker(slow_import_check.check, workers=2, timeout_s=1.0, chunk_size=2)
    pairs = [("1", "1"), ("2", "3"), ("4", "4"), ("5", "5"), ("6", "7")]
    assert checker(pairs) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert checker.stats == {"checked": 5, "errors": 0, "timeouts": 0, "restarts": 0}
    checker.close()


def test_a_slow_first_check_does_not_count_against_the_first_answer(tmp_path, monkeypatch):
    """A check that imports what it needs on its first call (as math-verify's does), slower than
    the per-item timeout: the worker's warm-up takes that cost before it reports started."""
    (tmp_path / "lazy_check.py").write_text(
        "import time\n_loaded = False\n\ndef check(gold, completion):\n    global _loaded\n"
        "    if not _loaded:\n        time.sleep(3)\n        _loaded = True\n"
        "    return gold == completion\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import lazy_check

    checker = AnswerChecker(lazy_check.check, workers=1, timeout_s=1.0, chunk_size=4)
    assert checker([("1", "1"), ("2", "3"), ("4", "4")]) == [1.0, 0.0, 1.0]
    assert checker.stats["timeouts"] == 0
    checker.close()
