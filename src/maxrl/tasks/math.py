r"""Math word problems with checked final answers: GSM8K-style and MATH-style records.

Two record shapes are recognised (the keys of the public data sets):

- GSM8K: ``{"question": ..., "answer": "<worked solution> #### 1,234"}``; the gold answer is the
  number after ``####`` with thousands separators removed.
- MATH: ``{"problem": ..., "solution": "... \boxed{\frac{1}{2}} ..."}``, optionally with an
  ``"answer"`` field (as in MATH-500); the gold answer is ``answer`` or else the last ``\boxed{}``
  of the solution.

The prompt asks for the final answer in ``\boxed{}``. With a tokenizer that has a chat template,
the prompt is the template applied to one user message (``add_generation_prompt=True``), so
``Item.prompt`` is the complete text the policy sees; otherwise it is a plain
``Question: ...\nAnswer:`` template.

Answers are compared with math-verify (``from math_verify import parse, verify``), so "1/2",
"0.5" and "\frac{1}{2}" are equal, and so are "3" and "3.0" or "1,234" and "1234". Its parser and
sympy can take unbounded time on a pathological completion, and its own timeout uses SIGALRM,
which works only in a main thread. So checks run in a small pool of worker processes
(:class:`maxrl.tasks.checking.AnswerChecker`): each worker runs math-verify in its main thread with math-verify's
alarm as a soft limit, and the parent gives every item a hard deadline; a worker that misses it
is killed and replaced, the item scores 0, and the rest of the batch goes on. A check that raises
also scores 0, with a counted warning. Scripts that use the task must guard their entry point
with ``if __name__ == "__main__":`` because workers are started with ``spawn`` (``fork`` is
unsafe once torch or CUDA threads exist).

The paper's GSM8K setting scores 0 for a completion cut at the maximum response length: that
rule is the trainer's (``rollout.zero_reward_if_truncated``, applied by
:func:`maxrl.groups.verify_rewards` for every task), not the task's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maxrl.tasks.base import Item
from maxrl.tasks.checking import AnswerChecker

INSTRUCTION = r"Please reason step by step, and put your final answer within \boxed{}."
_QUESTION_KEYS = ("question", "problem", "prompt", "query")
_GSM8K_ANNOTATION = re.compile(r"<<[^<>]*>>")  # calculator traces such as <<48/2=24>>
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---------------------------------------------------------------------------------------------
# Records.


def load_records(source: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON or parquet file, a local dataset folder, or a `datasets` hub name.

    Files are read with ``datasets.load_dataset("json" | "parquet", data_files=...)``; anything
    else goes to ``datasets.load_dataset(source, split=split)`` (a folder holding
    ``train.jsonl`` and ``test.jsonl`` gives the splits ``train`` and ``test``).
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading math records needs the `datasets` package: pip install 'maxrl[math]'"
        ) from exc
    path = Path(source)
    builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if path.suffix in builders:
        if not path.is_file():
            raise ValueError(f"math data file {str(path)!r} does not exist")
        ds = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(str(source), split=split)
    return [dict(row) for row in ds]


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def parse_record(record: dict[str, Any]) -> tuple[str, str, str]:
    r"""``(question, gold_answer, demonstration)`` of a GSM8K- or MATH-style record.

    The demonstration (used as ``Item.target`` for supervised warm-start) ends with the answer in
    ``\boxed{}``, the format the prompt asks for.
    """
    question = next((record[k] for k in _QUESTION_KEYS if record.get(k)), None)
    if not isinstance(question, str):
        raise ValueError(
            f"math record has no question: expected one of the keys {_QUESTION_KEYS}; got keys "
            f"{sorted(record)}"
        )
    answer = record.get("answer")
    solution = record.get("solution")
    if isinstance(answer, str) and "####" in answer:
        rationale, _, gold = answer.rpartition("####")
        gold = gold.strip().replace(",", "")
        rationale = _GSM8K_ANNOTATION.sub("", rationale).strip()
        demo = f"{rationale}\nThe final answer is \\boxed{{{gold}}}.".lstrip()
    elif answer is not None and str(answer).strip():
        gold = str(answer).strip()
        demo = solution if isinstance(solution, str) and "\\boxed" in solution else None
        demo = demo or f"The final answer is \\boxed{{{gold}}}."
    elif isinstance(solution, str) and last_boxed(solution):
        gold = last_boxed(solution)
        demo = solution
    else:
        raise ValueError(
            "math record has no gold answer: expected 'answer' (GSM8K '... #### 42' or a bare "
            r"answer) or a 'solution' with \boxed{}; got keys " + str(sorted(record))
        )
    if not gold:
        raise ValueError(f"math record has an empty gold answer: {record!r}")
    return question, gold, demo


# ---------------------------------------------------------------------------------------------
# Checking answers.


def answers_match(gold: str, completion: str, soft_timeout_s: int = 1) -> bool:
    r"""Whether ``completion``'s final answer equals ``gold`` by math-verify.

    ``gold`` is a bare answer ("1234", "\frac{1}{2}"); in the completion a ``\boxed{}`` answer
    is preferred to any other match. ``soft_timeout_s`` is math-verify's own SIGALRM limit per
    parse and comparison (whole seconds; effective only in a main thread).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold = gold.strip().strip("$")
    gold_parsed = parse(f"${gold}$", parsing_timeout=soft_timeout_s)
    extraction = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    pred = parse(completion, extraction_config=extraction, parsing_timeout=soft_timeout_s)
    if not gold_parsed or not pred:
        return False
    return bool(verify(gold_parsed, pred, timeout_seconds=soft_timeout_s))


# ---------------------------------------------------------------------------------------------
# The task.


class MathTask:
    r"""Math problems with a math-verify checker, for RL with binary rewards.

    Items carry ``reference`` = the gold answer string, ``target`` = a worked solution ending in
    ``\boxed{answer}``, and ``meta`` = {question, split, index}; ``id`` is ``{name}/{split}/{index}``.
    Train and test items come from different record lists, so they never share an id.

    Args:
        train_records: GSM8K- or MATH-style records (see :func:`parse_record`); may be empty
            when ``test_records`` are given (a task for evaluation only).
        test_records: held-out records; if None, the last ``test_size`` training records are
            held out instead.
        tokenizer: a tokenizer with a chat template; without one (or without a template) the
            prompt is the plain ``Question: ...\nAnswer:`` template.
        system_prompt: an optional system message for the chat template.
        name: the task name, the first part of every item id.
        test_size: records held out from ``train_records`` when ``test_records`` is None.
        timeout_s: hard limit per answer check, in seconds.
        workers: answer-checking worker processes.
    """

    def __init__(
        self,
        train_records: Sequence[dict[str, Any]],
        test_records: Sequence[dict[str, Any]] | None = None,
        *,
        tokenizer: Any = None,
        system_prompt: str | None = None,
        name: str = "math",
        test_size: int = 0,
        timeout_s: float = 5.0,
        workers: int = 1,
    ):
        if not train_records and not test_records:
            raise ValueError("train_records and test_records are empty; pass math records")
        if test_records is None:
            if not 0 <= test_size < len(train_records):
                raise ValueError(
                    f"test_size must be in [0, {len(train_records)}) (the number of training "
                    f"records); got {test_size}"
                )
            cut = len(train_records) - test_size
            train_records, test_records = train_records[:cut], train_records[cut:]
        elif test_size:
            raise ValueError(
                f"test_size={test_size} applies only without test_records; pass one or the other"
            )
        self.name = name
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.checker = AnswerChecker(answers_match, workers=workers, timeout_s=timeout_s)
        self._train = [self._make_item(r, "train", i) for i, r in enumerate(train_records)]
        self._test = [self._make_item(r, "test", i) for i, r in enumerate(test_records)]

    @classmethod
    def from_sources(
        cls,
        train: str | Path | None,
        test: str | Path | None = None,
        *,
        train_split: str = "train",
        test_split: str = "test",
        **kwargs: Any,
    ) -> MathTask:
        """A task from data sources as accepted by :func:`load_records` (``train=None``: a task
        for evaluation only, on ``test``)."""
        if train is None and test is None:
            raise ValueError("give a training or a held-out data source (train=... or test=...)")
        test_records = None if test is None else load_records(test, test_split)
        train_records = [] if train is None else load_records(train, train_split)
        return cls(train_records, test_records, **kwargs)

    def format_prompt(self, question: str) -> str:
        """The complete prompt text for one question."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self.tokenizer is None or not template:
            return f"Question: {question}\n{INSTRUCTION}\nAnswer:"
        messages = [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _make_item(self, record: dict[str, Any], split: str, index: int) -> Item:
        question, gold, demo = parse_record(record)
        return Item(
            id=f"{self.name}/{split}/{index}",
            prompt=self.format_prompt(question),
            reference=gold,
            target=demo,
            meta={"question": question, "split": split, "index": index},
        )

    def test_items(self, count: int) -> list[Item]:
        if not 0 <= count <= len(self._test):
            raise ValueError(
                f"count must be in [0, {len(self._test)}] (the size of the test split); got {count}"
            )
        return self._test[:count]

    def train_items(self, count: int, seed: int) -> list[Item]:
        """``count`` items in a seeded order: shuffled passes over the training records."""
        if count < 0:
            raise ValueError(f"count must be >= 0; got {count}")
        if count and not self._train:
            raise ValueError(
                f"the {self.name} task holds no training records (it was built for evaluation "
                f"only); give training data (task.data=PATH)"
            )
        rng = random.Random(seed)
        items: list[Item] = []
        while len(items) < count:
            order = list(range(len(self._train)))
            rng.shuffle(order)
            items.extend(self._train[i] for i in order[: count - len(items)])
        return items

    def verify(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        """1.0 where a completion's final answer equals the item's gold answer, else 0.0."""
        if len(items) != len(completions):
            raise ValueError(f"got {len(items)} items but {len(completions)} completions")
        return self.checker([(str(item.reference), c) for item, c in zip(items, completions)])

    def answer_key(self, completion: str) -> str | None:
        r"""The answer a completion votes for in a majority vote: its last ``\boxed{}`` (or,
        without one, its last number), spaces removed; None when it gives neither."""
        boxed = last_boxed(completion)
        if boxed is None:
            numbers = _NUMBER.findall(completion)
            boxed = numbers[-1].replace(",", "") if numbers else None
        return None if not boxed else "".join(boxed.split())

    def close(self) -> None:
        """Stop the answer-checking workers."""
        self.checker.close()
