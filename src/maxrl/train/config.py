"""The options of ``maxrl sft`` and ``maxrl train``: one dataclass per pipeline stage.

Defaults are the README's main job: a small Qwen2-style model, SFT warm-start on 9x9 mazes, then
MaxRL, sized to finish in about ten minutes on a 2-core CPU. The paper's maze settings
(docs/method.md, section 5) are in ``configs/maze_paper.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maxrl import advantages
from maxrl.tasks import TaskConfig


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
    dtype: str = _h("dtype of the weights and the optimiser: float32 | bfloat16", "float32")
    precision: str = _h(
        "matmul precision of the training forward and backward (SFT and RL): float32 | "
        "bfloat16 (linear layers autocast to bf16; weights and optimiser keep model.dtype) | auto "
        "(bfloat16 on a GPU or a CPU with AMX tiles or AVX-512 BF16, float32 elsewhere: on such "
        "CPUs bf16 ran the main job's update 1.5x to 1.65x faster, with pass@1 within seed noise; "
        "docs/results.md)",
        "auto",
    )
    gradient_checkpointing: bool = _h("recompute activations in backward to save memory", False)
    packed: bool = _h(
        "train with the packed forward of maxrl.train.packed where the model supports it "
        "(Qwen2, Llama); false: the model's own forward (the same function, another float order)",
        True,
    )
    lora_rank: int = _h("train LoRA adapters of this rank through peft (0 = full fine-tuning)", 0)


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
    workers: int = _h(
        "decode streams of the kv sampler on a CPU model (RL rollouts and evaluation), each a "
        "thread with one intra-op thread; the samples depend on it, not on the machine. On 2 "
        "cores, 2 streams sampled the main job's rollouts 1.37x and its evaluations 1.79x "
        "faster than 1 (benchmarks/rollout_workers.py); the training forward and backward "
        "stay on run.threads",
        2,
    )
    precision: str = _h(
        "matmul precision of the RL rollouts (kv sampler): model (bf16 where the update is the "
        "packed forward in bf16, model.precision, so the sampled log-probabilities are those the "
        "update computes; float32 otherwise) | float32 | bfloat16 (linear layers in bf16, the "
        "rest float32); evaluation always samples in float32",
        "model",
    )


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
    entropy_coef: float = _h(
        "weight of a token-level entropy bonus in the policy loss, with any estimator (the "
        "paper's GRPO + entropy; 0 = off)",
        0.0,
    )


@dataclass
class OptimConfig:
    lr: float = _h(
        "AdamW learning rate, the peak of the schedule (the paper's maze RL: 1e-4; the main "
        "job's constant 5e-5 before gained pass@1 within seed noise, cosine from 1e-4 beyond it: "
        "docs/results.md)",
        1e-4,
    )
    betas: list[float] = _h("AdamW betas", factory=lambda: [0.9, 0.95])
    weight_decay: float = _h("AdamW weight decay", 0.0)
    grad_clip: float = _h("clip the global gradient norm (0 = off)", 1.0)
    schedule: str = _h(
        "learning-rate schedule after the warmup: constant | linear | cosine (both decay to 0 "
        "at run.steps, so a run that decays resumes only with its own run.steps)",
        "cosine",
    )
    warmup_steps: int = _h(
        "linear warmup steps (Adam's first steps move every weight by the full lr, whatever the "
        "gradient's noise)",
        10,
    )


@dataclass
class EvalConfig:
    every: int = _h("evaluate every this many steps (and before the first and after the last)", 50)
    at_start: bool = _h(
        "evaluate before the first step (a sweep evaluates its shared start once per seed)", True
    )
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
    eval_every: int = _h(
        "evaluate the SFT model every this many steps (and before the first and after the "
        "last); 0: every eval.every steps. Each evaluation of the main job's 64 x 64 samples "
        "takes about as long as 15 SFT steps",
        250,
    )


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
    update_workers: int = _h(
        "parallel streams of the training forward and backward (RL update and SFT) on a CPU "
        "model: each micro-batch's groups split into this many shards, each in a thread (with "
        "run.threads shared among them, one each by default), their gradients summed in a fixed "
        "order, so a run depends on it, not on the machine. On 2 cores, 2 streams ran the main "
        "job's update 1.67x faster than 1 (benchmarks/train_step.py)",
        2,
    )
    keep_freed_memory: bool = _h(
        "keep freed memory for reuse instead of returning it to the OS (glibc's mallopt): a "
        "step's temporaries reuse freed pages instead of faulting in fresh ones; resident "
        "memory stays at its peak",
        True,
    )
    tensorboard: bool = _h("also log to TensorBoard in out_dir/tb", True)
    wandb_project: str = _h("also log to Weights & Biases under this project (empty = off)", "")
    progress: bool = _h("show a progress bar", True)
    allow_config_change: bool = _h(
        "resume a run folder even where this config differs from the one it was started with "
        "in more than RESUMABLE_KEYS (the new values apply from the resumed step on)",
        False,
    )


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
        _one_of("model.precision", self.model.precision, ("float32", "bfloat16", "auto"))
        _one_of("task.name", self.task.name, ("maze", "math"))
        for key in ("false_positive_rate", "false_negative_rate"):
            rate = getattr(self.task, key)
            if not 0 <= rate < 1:
                raise ValueError(f"task.{key} must be in [0, 1); got {rate}")
        if self.task.name == "math" and not self.task.data:
            raise ValueError(
                "task.name=math needs task.data=PATH (JSONL, parquet or a datasets path) to "
                "train on"
            )
        if self.task.name == "maze" and (self.task.maze_size < 5 or self.task.maze_size % 2 == 0):
            raise ValueError(
                f"task.maze_size must be an odd integer >= 5 (e.g. 9, 13 or the paper's 17); got "
                f"{self.task.maze_size}"
            )
        _one_of("rollout.backend", self.rollout.backend, ("kv", "hf", "vllm"))
        _one_of("rollout.precision", self.rollout.precision, ("model", "float32", "bfloat16"))
        if self.rollout.precision == "bfloat16" and self.rollout.backend != "kv":
            raise ValueError(
                f"rollout.precision=bfloat16 needs rollout.backend=kv; got "
                f"{self.rollout.backend!r} (set rollout.precision=model or float32)"
            )
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
            ("rollout.workers", self.rollout.workers),
            ("run.update_workers", self.run.update_workers),
        ]:
            if value < 1:
                raise ValueError(f"{key} must be >= 1; got {value}")
        if self.sft.eval_every < 0:
            raise ValueError(
                "sft.eval_every must be >= 0 (0: every eval.every steps); got "
                f"{self.sft.eval_every}"
            )
        if self.rollout.prompts_per_step % self.algo.minibatches:
            raise ValueError(
                f"algo.minibatches={self.algo.minibatches} must divide rollout.prompts_per_step="
                f"{self.rollout.prompts_per_step}: minibatches are made of whole groups"
            )


# keys a resumed run may change (see maxrl.train.setup): its length, its logging and progress,
# its checkpoint cadence, and settings that change no number it computes; anything else would
# make the resumed run a different experiment
RESUMABLE_KEYS = (
    "run.steps",
    "run.progress",
    "run.tensorboard",
    "run.wandb_project",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.allow_config_change",
    "run.keep_freed_memory",
    "eval.at_start",
    "sft.eval_every",
)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
