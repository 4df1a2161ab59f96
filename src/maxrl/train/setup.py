"""Everything an RL run holds between steps, built once before the loop (:func:`setup`).

:class:`Run` owns the policy, its optimiser and scheduler, the task, the sampler, the prepared
estimator, the evaluator, the logger and the checkpoints, so that the loop in
:func:`maxrl.train.rl.train` reads as the pipeline and nothing else.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from maxrl import advantages
from maxrl.config import ConfigError, changed_keys, save_config, to_dict
from maxrl.eval.evaluate import evaluator
from maxrl.groups import make_rollout_sampler, rollout_workers
from maxrl.metrics import MetricsLogger
from maxrl.models.loading import load_policy, quiet_transformers, stop_ids
from maxrl.rollout import SamplingParams
from maxrl.seeding import process_settings
from maxrl.tasks import make_task
from maxrl.tasks.base import Task
from maxrl.train.checkpoints import latest_checkpoint, load_trainer_state, save_checkpoint
from maxrl.train.config import RESUMABLE_KEYS, TrainConfig
from maxrl.train.logprobs import autocasts_to_bf16, enable_activation_checkpointing
from maxrl.train.optim import adamw
from maxrl.train.update import UpdateStats


class NonFiniteLossError(RuntimeError):
    """Repeated non-finite losses or gradients: the run stops, its checkpoints intact."""


@dataclass
class Run:
    """The state of one RL run (see :func:`setup`)."""

    cfg: TrainConfig
    out_dir: Path
    init_path: str
    model: object
    ref: object | None
    tokenizer: object
    task: Task
    optimizer: object
    scheduler: object
    sampler: object  # the RL rollouts' (rollout.precision)
    eval_sampler: object  # evaluation's, in float32
    sampling: SamplingParams
    estimator: advantages.PreparedEstimator
    evaluate: object  # step -> eval metrics
    logger: MetricsLogger
    start: int
    bad_steps: int = 0
    last: dict = field(default_factory=dict)
    _bar: object = None

    def steps(self):
        """The steps still to run, with one progress bar; evaluates first on a fresh run."""
        if self.start == 0 and self.cfg.eval.at_start:
            self.logger.log(0, self.evaluate(0))
        self._bar = tqdm(
            range(self.start + 1, self.cfg.run.steps + 1),
            desc=f"rl[{self.cfg.algo.estimator}]",
            disable=not self.cfg.run.progress,
            initial=self.start,
            total=self.cfg.run.steps,
        )
        return self._bar

    def check_finite(self, stats: UpdateStats, step: int) -> None:
        """Count a skipped (non-finite) update; stop after ``run.max_nan_steps`` in a row."""
        if stats.finite:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        warnings.warn(
            f"step {step}: non-finite loss or gradient; the update was skipped "
            f"({self.bad_steps} in a row)",
            stacklevel=2,
        )
        if self.bad_steps >= self.cfg.run.max_nan_steps:
            self.logger.close()
            good = latest_checkpoint(self.out_dir)
            raise NonFiniteLossError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (last at "
                f"step {step}); stopping. The last good checkpoint is "
                f"{good or 'none (no checkpoint was written yet)'}. Lower optim.lr, check the "
                f"rewards, or raise run.max_nan_steps"
            )

    def log(self, step: int, record: dict) -> None:
        self.logger.log(step, record)
        self.last = record
        self._bar.set_postfix(
            reward=f"{record['train/reward_mean']:.3f}",
            **({"pass1": f"{record['eval/pass@1']:.3f}"} if "eval/pass@1" in record else {}),
        )

    def save(self, step: int) -> None:
        save_checkpoint(
            self.out_dir,
            step,
            self.model,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            {"init": self.init_path},
            keep=self.cfg.run.keep_checkpoints,
        )

    def finish(self) -> dict:
        """Close the logs; write and return the before/after report."""
        self.logger.close()
        from maxrl.eval.report import write_report

        return write_report(self.out_dir, self.last)


def setup(cfg: TrainConfig, task: Task | None = None) -> Run:
    """Build (or restore from the run folder's latest checkpoint) everything the loop needs."""
    process_settings(cfg.run)
    quiet_transformers()
    out_dir = Path(cfg.run.out_dir)
    if cfg.model.init and not Path(cfg.model.init).exists():
        raise FileNotFoundError(
            f"model.init={cfg.model.init!r} does not exist; give a folder written by "
            f"save_pretrained (e.g. an SFT run's final/ folder), or leave it empty to warm-start "
            f"with SFT"
        )
    resume = latest_checkpoint(out_dir)
    if resume is not None:  # before anything in the folder changes
        check_resume(cfg, out_dir, json.loads((resume / "state.json").read_text())["step"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")

    if resume is not None:
        init_path = json.loads((resume / "state.json").read_text())["init"]
        model, tokenizer = _restore_policy(cfg, resume, init_path)
    else:
        init_path = initial_policy(cfg, out_dir)
        model, tokenizer = load_policy(init_path, cfg.model.dtype)
        model = prepare_model(model, cfg)
    ref = None
    if cfg.algo.kl_coef > 0:
        ref, _ = load_policy(init_path, cfg.model.dtype)
        ref.eval().requires_grad_(False)

    task = task if task is not None else make_task(cfg.task, tokenizer)
    optim = cfg.optim
    optimizer, scheduler = adamw(
        model.parameters(),
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        schedule=optim.schedule,
        warmup_steps=optim.warmup_steps,
        total_steps=cfg.run.steps,
    )
    start = load_trainer_state(resume, optimizer, scheduler)["step"] if resume else 0
    logger = MetricsLogger(
        out_dir,
        cfg.run.tensorboard,
        cfg.run.wandb_project,
        to_dict(cfg),
        resume_step=start if resume else -1,
    )
    roll = cfg.rollout
    precision = rollout_precision(cfg, model)
    workers = rollout_workers(roll, model)
    sampler = make_rollout_sampler(roll.backend, roll.max_batch_size, init_path, precision, workers)
    # evaluation samples in float32: its own kv sampler only where the rollouts' is bf16 (one
    # vLLM engine, not two)
    eval_sampler = sampler
    if precision != "float32":
        eval_sampler = make_rollout_sampler(
            roll.backend, roll.max_batch_size, init_path, workers=workers
        )
    sampling = SamplingParams(
        roll.max_new_tokens,
        roll.temperature,
        roll.top_p,
        roll.top_k,
        stop_token_ids=stop_ids(tokenizer),
    )
    estimator = advantages.prepare(
        cfg.algo.estimator,
        roll.rollouts_per_prompt,
        reward_threshold=cfg.algo.reward_threshold,
        **cfg.algo.params,
    )
    return Run(
        cfg=cfg,
        out_dir=out_dir,
        init_path=init_path,
        model=model,
        ref=ref,
        tokenizer=tokenizer,
        task=task,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        sampling=sampling,
        estimator=estimator,
        eval_sampler=eval_sampler,
        evaluate=evaluator(cfg, model, tokenizer, task, eval_sampler),
        logger=logger,
        start=start,
    )


def rollout_precision(cfg: TrainConfig, model) -> str:
    """The kv sampler's precision for the RL rollouts: ``rollout.precision``, where ``model``
    means bfloat16 exactly when the update is the packed forward autocast to bf16
    (``model.precision``), whose numerics the kv sampler's bf16 mode reproduces; the model's
    own forward under autocast also runs its attention in bf16, so there it means float32."""
    from maxrl.train.packed import supports_packed

    precision = cfg.rollout.precision
    if precision == "model":
        packed = cfg.model.packed and supports_packed(model)
        if cfg.rollout.backend != "kv" or not packed:
            return "float32"
        return "bfloat16" if autocasts_to_bf16(model, cfg.model.precision) else "float32"
    return precision


# keys added to the config after runs were started without them, and the value those runs used
LATER_KEYS = {"rollout.precision": "float32", "rollout.workers": 1, "run.update_workers": 1}


def check_resume(cfg: TrainConfig, out_dir: Path, step: int) -> None:
    """Refuse to resume ``out_dir`` with a config that differs from the one it was started with
    in more than ``RESUMABLE_KEYS`` (unless ``run.allow_config_change``), with another
    ``run.steps`` under a decaying schedule, or with fewer steps than its checkpoint has done;
    the error names each key with both values."""
    if cfg.run.steps < step:
        raise ConfigError(
            f"run.steps={cfg.run.steps} is below the {step} steps the checkpoint in {out_dir} "
            f"has done; give run.steps >= {step} or another run.out_dir"
        )
    saved_path = out_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
    _continue_as_started(saved, cfg)
    if cfg.run.allow_config_change:
        return
    changes = changed_keys(saved, to_dict(cfg), allowed=RESUMABLE_KEYS)
    if changes:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
        raise ConfigError(
            f"{out_dir} holds a run started with another config ({listed}); resume it with "
            f"its own values, give another run.out_dir, or pass run.allow_config_change=true"
        )
    started = saved.get("run", {}).get("steps", cfg.run.steps)
    if cfg.optim.schedule != "constant" and cfg.run.steps != started:
        raise ConfigError(
            f"{out_dir} was started for run.steps={started} with optim.schedule="
            f"{cfg.optim.schedule!r}, which decays over run.steps, so run.steps={cfg.run.steps} "
            f"would change the learning rate of its remaining steps; resume with "
            f"run.steps={started}, or pass run.allow_config_change=true"
        )


def _continue_as_started(saved: dict, cfg: TrainConfig) -> None:
    """A run folder saved before a key of ``LATER_KEYS`` existed ran with that key's old value:
    fill it into ``saved``, and into ``cfg`` where ``cfg`` holds the key's default, so that the
    resumed run goes on as it started (a value given on purpose is still compared)."""
    defaults = to_dict(TrainConfig())
    for key, old in LATER_KEYS.items():
        section, name = key.split(".")
        if name in saved.get(section, {}):
            continue
        saved.setdefault(section, {})[name] = old
        if getattr(getattr(cfg, section), name) == defaults[section][name]:
            setattr(getattr(cfg, section), name, old)


def initial_policy(cfg: TrainConfig, out_dir: Path) -> str:
    """The folder RL starts from: ``model.init``, or a fresh SFT warm-start."""
    if cfg.model.init:
        return cfg.model.init
    if cfg.task.name != "maze":
        raise ValueError(
            "model.init is empty: SFT warm-start is built in for the maze task only; give "
            "model.init=PATH to a Hugging Face model folder for other tasks"
        )
    from maxrl.train.sft import run_sft

    return str(run_sft(cfg, out_dir / "sft"))


def _restore_policy(cfg: TrainConfig, resume: Path, init_path: str):
    if (resume / "adapter_config.json").exists():  # LoRA: the base model plus saved adapters
        from peft import PeftModel

        base, tokenizer = load_policy(init_path, cfg.model.dtype)
        model = PeftModel.from_pretrained(
            prepare_model(base, cfg, lora=False), resume, is_trainable=True
        )
        return model, tokenizer
    model, tokenizer = load_policy(str(resume), cfg.model.dtype)
    return prepare_model(model, cfg), tokenizer


def prepare_model(model, cfg: TrainConfig, lora: bool = True):
    """Gradient checkpointing and LoRA adapters, as the ``model`` section asks."""
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    if lora and cfg.model.lora_rank > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ImportError("model.lora_rank > 0 needs peft: pip install peft") from exc
        lora_cfg = LoraConfig(
            r=cfg.model.lora_rank,
            lora_alpha=2 * cfg.model.lora_rank,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora_cfg)
    return model
