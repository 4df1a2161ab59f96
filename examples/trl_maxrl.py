"""MaxRL on GSM8K-style math with TRL's GRPO trainer (pip install 'maxrl[math,trl]').

    python examples/trl_maxrl.py model=HuggingFaceTB/SmolLM2-360M-Instruct \\
        train=gsm8k/train.jsonl test=gsm8k/test.jsonl estimator=maxrl rollouts_per_prompt=16

    accelerate launch --num_processes 8 examples/trl_maxrl.py model=... train=...

How this differs from TRL's GRPO: the group advantage is maxrl.advantages.compute(estimator, ...)
(MaxRL by default: (r - mean) / mean, zero for all-fail groups), rewards are not std-scaled, and
there is one optimiser step per rollout batch (on-policy, ratio 1, no KL), as in the paper. A
completion cut at max_completion_length scores 0 (the paper's GSM8K setting). Options are
``key=value`` pairs (``--help`` lists them); evaluate pass@k afterwards with ``maxrl eval``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from maxrl.config import parse_cli
from maxrl.integrations.trl import MaxRLConfig, MaxRLTrainer, task_dataset, task_reward
from maxrl.tasks.math import MathTask


@dataclass
class Args:
    model: str = field(default="???", metadata={"help": "model name or local path (required)"})
    train: str = field(
        default="???", metadata={"help": "training records: JSONL, parquet, folder or name"}
    )
    test: str | None = field(default=None, metadata={"help": "held-out records (optional)"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer path (default: model)"}
    )
    output_dir: str = field(default="runs/trl_maxrl", metadata={"help": "checkpoints and logs"})
    estimator: str = field(default="maxrl", metadata={"help": "maxrl.advantages estimator"})
    estimator_params: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "e.g. estimator_params.T=4 for maxrl_t"}
    )
    rollouts_per_prompt: int = field(default=16, metadata={"help": "group size N"})
    prompts_per_step: int = field(default=8, metadata={"help": "prompts per optimiser step"})
    micro_batch_size: int = field(default=16, metadata={"help": "completions per forward pass"})
    max_steps: int = field(default=200, metadata={"help": "optimiser steps"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    max_completion_length: int = field(default=1024, metadata={"help": "max response tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    loss_type: str = field(
        default="dapo", metadata={"help": "TRL loss aggregation (dapo = token mean)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for item order and sampling"})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU"})


def main(argv: list[str] | None = None) -> MaxRLTrainer | None:
    args = parse_cli(Args, sys.argv[1:] if argv is None else argv, "trl_maxrl.py", __doc__)
    if args is None:
        return None
    from accelerate import PartialState
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    task = MathTask.from_sources(args.train, args.test, tokenizer=tokenizer, name="gsm8k")
    items = task.train_items(args.max_steps * args.prompts_per_step, seed=args.seed)

    generation_batch = args.prompts_per_step * args.rollouts_per_prompt
    per_step = args.micro_batch_size * PartialState().num_processes
    if generation_batch % per_step:
        raise ValueError(
            f"prompts_per_step * rollouts_per_prompt = {generation_batch} must be a multiple of "
            f"micro_batch_size * processes = {per_step}"
        )
    config = MaxRLConfig(
        output_dir=args.output_dir,
        estimator=args.estimator,
        estimator_params=dict(args.estimator_params),
        num_generations=args.rollouts_per_prompt,
        per_device_train_batch_size=args.micro_batch_size,
        # every micro-batch of one rollout batch accumulates into a single optimiser step
        steps_per_generation=generation_batch // per_step,
        gradient_accumulation_steps=generation_batch // per_step,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        loss_type=args.loss_type,
        beta=0.0,
        num_iterations=1,
        seed=args.seed,
        use_cpu=args.use_cpu,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    )
    eos = tokenizer.eos_token_id
    trainer = MaxRLTrainer(
        model=args.model,
        reward_funcs=task_reward(task, items, eos_token_ids=eos, zero_reward_if_truncated=True),
        args=config,
        train_dataset=task_dataset(items),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    task.close()
    return trainer


if __name__ == "__main__":
    main()
