r"""Write GSM8K- or MATH-style records as verl RL parquet files (train.parquet, test.parquet).

    python examples/verl_prepare_math.py train=gsm8k/train.jsonl test=gsm8k/test.jsonl \
        out=~/data/maxrl_math

Each row carries the chat prompt (one user message asking for the answer in \boxed{}), the gold
answer as ``reward_model.ground_truth``, and ``data_source="HuggingFaceH4/MATH-500"`` so that
verl's built-in scorer for that source (last \boxed{} compared after string normalisation)
rewards it; point ``reward.custom_reward_function`` elsewhere for another scorer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from maxrl.config import parse_cli
from maxrl.tasks.math import INSTRUCTION, load_records, parse_record

DATA_SOURCE = "HuggingFaceH4/MATH-500"


@dataclass
class Args:
    train: str = field(default="???", metadata={"help": "training records (JSONL, parquet, ...)"})
    test: str = field(default="???", metadata={"help": "held-out records"})
    out: str = field(default="???", metadata={"help": "output folder"})


def verl_rows(records: list[dict], split: str) -> list[dict]:
    rows = []
    for index, record in enumerate(records):
        question, gold, _ = parse_record(record)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": gold},
                "extra_info": {"split": split, "index": index},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_cli(Args, sys.argv[1:] if argv is None else argv, "verl_prepare_math.py", __doc__)
    if args is None:
        return
    import datasets

    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for split, source in (("train", args.train), ("test", args.test)):
        rows = verl_rows(load_records(source, split), split)
        datasets.Dataset.from_list(rows).to_parquet(str(out / f"{split}.parquet"))
        print(f"{out / f'{split}.parquet'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
