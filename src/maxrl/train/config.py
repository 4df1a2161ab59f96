"""The options of ``maxrl sft`` and ``maxrl train``: one dataclass per pipeline stage.

Defaults are the README's main job: a small Qwen2-style model, SFT warm-start on 9x9 mazes, then
MaxRL, sized to finish in about ten minutes on a 2-core CPU. The paper's maze settings
(arXiv 2602.02710, section 5) are in ``configs/maze_paper.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maxrl import advantages


def _h(text: str, default: Any = None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelConfig:
    preset: str = _h(
        "architecture built from scratch when `init` is empty: tiny|small|paper", "small"
    )
    init: str = _h(
        "checkpoint to start from (a local Hugging Face model folder); empty = build `preset` "
        "and run the SFT warm-start first (maze task)",
        "",
    )
    dtype: str = _h("training dtype: float32 | bfloat16", "float32")
    gradient_checkpointing: bool = _h("recompute activations in backward to save memory", False)
    lora_rank: int = _h("train LoRA adapters of this rank through peft (0 = full fine-tuning)", 0)


@dataclass
class TaskConfig:
    name: str = _h("task: maze | math", "maze")
    maze_size: int = _h(
        "odd maze side length (the paper uses 17); a maze data file sets its own", 9
    )
    data: str = _h(
        "training data. math: JSONL, parquet, or a `datasets` name or path; maze (optional): a "
        "train.json of `maxrl maze-data format=official` or the paper's",
        "",
    )
    test_data: str = _h("held-out data (math: same formats; maze: a test.json)", "")
    test_count: int = _h("held-out prompts for evaluation (generated mazes: the held-out set)", 64)
    verify_timeout: float = _h("math: seconds per answer check before it scores 0", 5.0)


@dataclass
class RolloutConfig:
    backend: str = _h("sampler: kv (KV-cached, default) | hf (model.generate) | vllm", "kv")
    prompts_per_step: int = _h("prompts per RL step", 16)
    rollouts_per_prompt: int = _h("N, rollouts per prompt (group size)", 16)
    temperature: float = _h("sampling temperature", 1.0)
    top_p: float = _h("nucleus sampling mass (1 = off)", 1.0)
    top_k: int = _h("top-k sampling (0 = off)", 0)
    max_new_tokens: int = _h("most tokens per rollout (the paper's maze: 180)", 64)
    zero_reward_if_truncated: bool = _h(
        "a rollout cut at max_new_tokens scores 0 (the paper does this for GSM8K)", False
    )
    max_batch_size: int = _h("most sequences sampled at once (memory bound)", 4096)


@dataclass
class AlgoConfig:
    estimator: str = _h("group advantage estimator: " + " | ".join(advantages.names()), "maxrl")
    params: dict[str, Any] = _h("estimator parameters, e.g. {T: 8} for maxrl_t", factory=dict)
    reward_threshold: float | None = _h("binarise rewards as r >= threshold (None = off)", None)
    loss_agg: str = _h(
        "token aggregation: token_mean (the paper's: all response tokens of the batch weigh "
        "alike) | seq_mean (mean over tokens, then sequences) | seq_sum (sum over tokens, mean "
        "over sequences: exactly the estimator convention)",
        "token_mean",
    )
    ppo_epochs: int = _h("optimisation passes over each rollout batch (1 = on-policy)", 1)
    minibatches: int = _h(
        "optimiser steps per pass, each on whole groups (1 = one step per rollout batch)", 1
    )
    clip_eps: float = _h("PPO ratio clip range (inactive when on-policy: the ratio is 1)", 0.2)
    kl_coef: float = _h("weight of the k3 KL penalty to the frozen initial policy (0 = off)", 0.0)


@dataclass
class OptimConfig:
    lr: float = _h("AdamW learning rate (the paper's maze RL: 1e-4)", 5e-5)
    betas: list[float] = _h("AdamW betas", factory=lambda: [0.9, 0.95])
    weight_decay: float = _h("AdamW weight decay", 0.0)
    grad_clip: float = _h("clip the global gradient norm (0 = off)", 1.0)
    schedule: str = _h(
        "learning-rate schedule: constant | linear | cosine (with warmup)", "constant"
    )
    warmup_steps: int = _h(
        "linear warmup steps (Adam's first steps move every weight by the full lr, whatever the "
        "gradient's noise)",
        10,
    )


@dataclass
class EvalConfig:
    every: int = _h("evaluate every this many steps (and before the first and after the last)", 50)
    prompts: int = _h("held-out prompts per evaluation (at most task.test_count)", 64)
    samples: int = _h("samples per prompt (the largest k of pass@k)", 64)
    temperature: float = _h("evaluation sampling temperature", 1.0)
    top_p: float = _h("evaluation nucleus mass", 1.0)


@dataclass
class SFTConfig:
    steps: int = _h("SFT optimiser steps (the paper: 1500)", 500)
    batch_size: int = _h("demonstrations per step (the paper: 32)", 32)
    lr: float = _h("AdamW learning rate (the paper: 5e-4)", 5e-4)
    betas: list[float] = _h("AdamW betas", factory=lambda: [0.9, 0.95])
    weight_decay: float = _h("AdamW weight decay", 0.01)
    grad_clip: float = _h("gradient norm clip", 1.0)
    warmup_steps: int = _h("linear warmup steps, then cosine decay to 10%", 20)


@dataclass
class RunConfig:
    out_dir: str = _h("run folder: metrics, checkpoints, plots", "runs/maze")
    seed: int = _h("seed of everything (model init, prompts, sampling)", 0)
    steps: int = _h("RL steps (one rollout batch each)", 200)
    checkpoint_every: int = _h("save a checkpoint every this many steps (and at the end)", 50)
    keep_checkpoints: int = _h("checkpoints kept (older ones are deleted)", 2)
    micro_batch_size: int = _h("sequences per forward/backward (gradient accumulation)", 256)
    max_nan_steps: int = _h("consecutive non-finite steps before the run stops", 3)
    threads: int = _h(
        "torch CPU threads (0 = torch's default, one per core). One is the default: these "
        "models are small, and two threads competing with another process for two cores ran "
        "ten to twenty times slower here",
        1,
    )
    tensorboard: bool = _h("also log to TensorBoard in out_dir/tb", True)
    wandb_project: str = _h("also log to Weights & Biases under this project (empty = off)", "")
    progress: bool = _h("show a progress bar", True)


@dataclass
class TrainConfig:
    """Everything ``maxrl train`` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        advantages.validate_params(
            self.algo.estimator,
            self.rollout.rollouts_per_prompt,
            reward_threshold=self.algo.reward_threshold,
            **self.algo.params,
        )
        _one_of("algo.loss_agg", self.algo.loss_agg, ("token_mean", "seq_mean", "seq_sum"))
        _one_of("optim.schedule", self.optim.schedule, ("constant", "linear", "cosine"))
        _one_of("model.dtype", self.model.dtype, ("float32", "bfloat16"))
        _one_of("task.name", self.task.name, ("maze", "math"))
        _one_of("rollout.backend", self.rollout.backend, ("kv", "hf", "vllm"))
        for key, value in [
            ("run.steps", self.run.steps),
            ("rollout.prompts_per_step", self.rollout.prompts_per_step),
            ("rollout.max_new_tokens", self.rollout.max_new_tokens),
            ("algo.ppo_epochs", self.algo.ppo_epochs),
            ("algo.minibatches", self.algo.minibatches),
            ("eval.samples", self.eval.samples),
            ("eval.every", self.eval.every),
            ("run.micro_batch_size", self.run.micro_batch_size),
            ("run.checkpoint_every", self.run.checkpoint_every),
        ]:
            if value < 1:
                raise ValueError(f"{key} must be >= 1; got {value}")
        if self.rollout.prompts_per_step % self.algo.minibatches:
            raise ValueError(
                f"algo.minibatches={self.algo.minibatches} must divide rollout.prompts_per_step="
                f"{self.rollout.prompts_per_step}: minibatches are made of whole groups"
            )


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
