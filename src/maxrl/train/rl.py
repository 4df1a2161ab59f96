"""``maxrl train``: RL with group advantages, on-policy by default, on any task and causal LM.

One step, top to bottom in :func:`train`:
prompts -> N rollouts each -> verifier rewards -> group advantages (any estimator of
:mod:`maxrl.advantages`, by name) -> policy loss -> optimiser step; evaluation every few steps.

How this differs from textbook PPO, following the paper's setup (MAXRL.md section 5): one
optimiser step per rollout batch, so the importance ratio is exactly 1 and clipping never fires
(``algo.ppo_epochs`` and ``algo.minibatches`` turn PPO back on); token-mean loss aggregation; no
KL term unless ``algo.kl_coef`` is set; no value function. The advantage of a sequence is shared
by all its tokens.

With no ``model.init``, the run first warm-starts a maze model with SFT (``maxrl sft``), exactly
as the paper does before RL. A run folder that already holds checkpoints is resumed from the
latest one, and replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maxrl import advantages
from maxrl.config import parse_cli, save_config, to_dict
from maxrl.eval.evaluate import evaluator, group_stats, make_rollout_sampler, sample_groups
from maxrl.rollout import SamplingParams
from maxrl.tasks import make_task
from maxrl.tasks.base import Task
from maxrl.train.common import (
    MetricsLogger,
    Timer,
    generator,
    latest_checkpoint,
    load_policy,
    load_trainer_state,
    lr_lambda,
    quiet_transformers,
    response_logprobs,
    save_checkpoint,
    set_threads,
    step_seed,
    stop_ids,
)
from maxrl.train.config import TrainConfig
from maxrl.train.loss import aggregation_denominator, policy_loss


class NonFiniteLossError(RuntimeError):
    """Repeated non-finite losses or gradients: the run stops, its checkpoints intact."""


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


def _prepare_model(model, cfg: TrainConfig, lora: bool = True):
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if lora and cfg.model.lora_rank > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ImportError("model.lora_rank > 0 needs peft: pip install peft") from exc
        lora = LoraConfig(
            r=cfg.model.lora_rank,
            lora_alpha=2 * cfg.model.lora_rank,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def train(cfg: TrainConfig, task: Task | None = None) -> dict:
    """Run (or resume) RL; return the summary (pass@k before and after, timings).

    ``task`` overrides ``cfg.task`` with any object following :class:`maxrl.tasks.base.Task`.
    """
    set_threads(cfg.run.threads)
    quiet_transformers()
    out_dir = Path(cfg.run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")

    resume = latest_checkpoint(out_dir)
    if resume is not None:
        init_path = json.loads((resume / "state.json").read_text())["init"]
        if (resume / "adapter_config.json").exists():  # LoRA: the base model plus saved adapters
            from peft import PeftModel

            base, tokenizer = load_policy(init_path, cfg.model.dtype)
            model = PeftModel.from_pretrained(
                _prepare_model(base, cfg, lora=False), resume, is_trainable=True
            )
        else:
            model, tokenizer = load_policy(str(resume), cfg.model.dtype)
            model = _prepare_model(model, cfg)
    else:
        init_path = initial_policy(cfg, out_dir)
        model, tokenizer = load_policy(init_path, cfg.model.dtype)
        model = _prepare_model(model, cfg)
    ref_model = None
    if cfg.algo.kl_coef > 0:
        ref_model, _ = load_policy(init_path, cfg.model.dtype)
        ref_model.eval().requires_grad_(False)

    task = task if task is not None else make_task(cfg.task, tokenizer)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, cfg.run.steps)
    )
    start = load_trainer_state(resume, optimizer, scheduler)["step"] if resume else 0
    logger = MetricsLogger(
        out_dir,
        cfg.run.tensorboard,
        cfg.run.wandb_project,
        to_dict(cfg),
        resume_step=start if resume else -1,
    )

    sampler = make_rollout_sampler(cfg.rollout.backend, cfg.rollout.max_batch_size, init_path)
    stops = stop_ids(tokenizer)
    roll = cfg.rollout
    train_params = SamplingParams(
        roll.max_new_tokens, roll.temperature, roll.top_p, roll.top_k, stop_token_ids=stops
    )
    est_params = advantages.validate_params(
        cfg.algo.estimator, roll.rollouts_per_prompt, **cfg.algo.params
    )

    run_eval = evaluator(cfg, model, tokenizer, task, sampler)

    if start == 0:
        logger.log(0, run_eval(0))

    bad_steps = 0
    bar = tqdm(
        range(start + 1, cfg.run.steps + 1),
        desc=f"rl[{cfg.algo.estimator}]",
        disable=not cfg.run.progress,
        initial=start,
        total=cfg.run.steps,
    )
    last = {}
    for step in bar:
        timer = Timer()
        # 1. prompts and rollouts, every draw seeded by (seed, step)
        items = task.train_items(
            roll.prompts_per_step, seed=step_seed(cfg.run.seed, step, "prompts")
        )
        groups = sample_groups(
            model,
            tokenizer,
            task,
            items,
            roll.rollouts_per_prompt,
            sampler,
            train_params,
            generator(cfg.run.seed, step, "rollouts"),
            roll.zero_reward_if_truncated,
        )
        rollout_s = timer.lap()
        # 2. group advantages from the registry
        adv = advantages.compute(
            cfg.algo.estimator,
            groups.rewards.reshape(-1, roll.rollouts_per_prompt),
            reward_threshold=cfg.algo.reward_threshold,
            **est_params,
        ).reshape(-1)
        # 3. policy loss and optimiser step(s)
        stats = optimise(
            model, ref_model, optimizer, groups, adv, cfg, step, tokenizer.pad_token_id
        )
        train_s = timer.lap()
        if not stats["finite"]:
            bad_steps += 1
            warnings.warn(
                f"step {step}: non-finite loss or gradient; the update was skipped "
                f"({bad_steps} in a row)",
                stacklevel=1,
            )
            if bad_steps >= cfg.run.max_nan_steps:
                logger.close()
                good = latest_checkpoint(out_dir)
                raise NonFiniteLossError(
                    f"{bad_steps} consecutive steps had a non-finite loss or gradient (last at "
                    f"step {step}); stopping. The last good checkpoint is "
                    f"{good or 'none (no checkpoint was written yet)'}. Lower optim.lr, check the "
                    f"rewards, or raise run.max_nan_steps"
                )
        else:
            bad_steps = 0
        scheduler.step()
        tokens = int(groups.lengths.sum())
        record = {
            f"train/{k}": v
            for k, v in group_stats(groups.rewards, roll.rollouts_per_prompt).items()
        }
        record.update(
            {
                "train/loss": stats["loss"],
                "train/grad_norm": stats["grad_norm"],
                "train/entropy": stats["entropy"],
                "train/clip_frac": stats["clip_frac"],
                "train/kl": stats["kl"],
                "train/skipped": int(not stats["finite"]),
                "train/response_length": float(groups.lengths.float().mean()),
                "train/truncated_frac": float(groups.truncated.float().mean()),
                "train/verifier_errors": groups.verifier_errors,
                "train/adv_abs_mean": float(adv.abs().mean()),
                "train/lr": scheduler.get_last_lr()[0],
                "train/rollouts": step * roll.prompts_per_step * roll.rollouts_per_prompt,
                "time/rollout_s": rollout_s,
                "time/train_s": train_s,
                "time/rollout_tokens_per_s": tokens / max(rollout_s, 1e-9),
            }
        )
        if step % cfg.eval.every == 0 or step == cfg.run.steps:
            record.update(run_eval(step))
            record["time/eval_s"] = timer.lap()
        logger.log(step, record)
        last = record
        bar.set_postfix(
            reward=f"{record['train/reward_mean']:.3f}",
            **({"pass1": f"{record['eval/pass@1']:.3f}"} if "eval/pass@1" in record else {}),
        )
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
            save_checkpoint(
                out_dir,
                step,
                model,
                tokenizer,
                optimizer,
                scheduler,
                {"init": init_path},
                keep=cfg.run.keep_checkpoints,
            )
    logger.close()
    from maxrl.eval.report import write_report

    return write_report(out_dir, last)


def optimise(model, ref_model, optimizer, groups, adv, cfg: TrainConfig, step: int, pad_id: int):
    """PPO-style epochs x minibatches over one rollout batch (one plain step by default).

    Minibatches and micro-batches are made of whole groups, so each prompt's forward pass is
    shared by its rollouts (see :func:`response_logprobs`).
    """
    algo = cfg.algo
    n = groups.group_size
    prompts = groups.prompt_ids[::n]
    n_groups = len(prompts)
    on_policy = algo.ppo_epochs == 1 and algo.minibatches == 1
    shared = not cfg.model.gradient_checkpointing
    temp = cfg.rollout.temperature
    ref_logp = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logp = _by_groups(
                ref_model,
                prompts,
                groups.response_ids,
                n,
                pad_id,
                temp,
                cfg.run.micro_batch_size,
                shared,
            )
    per_mb = n_groups // algo.minibatches
    groups_per_micro = max(1, cfg.run.micro_batch_size // n)
    totals = {"loss": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "kl": 0.0}
    finite = True
    ent_sum, ent_count = 0.0, 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    for epoch in range(algo.ppo_epochs):
        order = (
            torch.arange(n_groups)
            if on_policy
            else torch.randperm(
                n_groups, generator=generator(cfg.run.seed, step, f"minibatch{epoch}")
            )
        )
        for mb in range(algo.minibatches):
            mb_groups = order[mb * per_mb : (mb + 1) * per_mb]
            mb_seqs = (mb_groups[:, None] * n + torch.arange(n)).reshape(-1)
            mb_mask = (
                torch.arange(groups.logprobs.shape[1])[None, :] < groups.lengths[mb_seqs, None]
            )
            denom = aggregation_denominator(algo.loss_agg, mb_mask)
            optimizer.zero_grad(set_to_none=True)
            mb_loss = 0.0
            for sub in _chunks(len(mb_groups), groups_per_micro):
                g_idx = mb_groups[sub]
                seqs = (g_idx[:, None] * n + torch.arange(n)).reshape(-1)
                logp, mask, ent = response_logprobs(
                    model,
                    [prompts[i] for i in g_idx.tolist()],
                    [groups.response_ids[i] for i in seqs.tolist()],
                    n,
                    pad_id,
                    temp,
                    entropy=epoch == 0,
                    shared_prefix=shared,
                )
                width = logp.shape[1]
                out = policy_loss(
                    logp,
                    None if on_policy else groups.logprobs[seqs, :width],
                    adv[seqs],
                    mask,
                    agg=algo.loss_agg,
                    denom=denom,
                    clip_eps=algo.clip_eps,
                    on_policy=on_policy,
                    ref_logp=None if ref_logp is None else ref_logp[seqs, :width],
                    kl_coef=algo.kl_coef,
                )
                out.loss.backward()
                mb_loss += out.loss.item()
                totals["clip_frac"] += float(out.clip_frac)
                totals["kl"] += float(out.kl)
                if ent is not None:
                    ent_sum += float(ent.detach().sum())
                    ent_count += float(mask.sum())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not (math.isfinite(mb_loss) and math.isfinite(grad_norm)):
                finite = False
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            totals["loss"] += mb_loss
            totals["grad_norm"] += grad_norm
    updates = algo.ppo_epochs * algo.minibatches
    tokens = float(groups.lengths.sum()) * algo.ppo_epochs
    return {
        "finite": finite,
        "loss": totals["loss"] / updates,
        "grad_norm": totals["grad_norm"] / updates,
        "entropy": ent_sum / max(ent_count, 1.0),
        "clip_frac": totals["clip_frac"] / max(tokens, 1.0),
        "kl": totals["kl"] / max(tokens, 1.0),
    }


def _by_groups(model, prompts, responses, n, pad_id, temp, micro, shared) -> torch.Tensor:
    """Response log-probabilities of a whole batch, micro-batch by micro-batch, (B, max_len)."""
    width = max(len(r) for r in responses)
    out = torch.zeros(len(responses), width)
    per = max(1, micro // n)
    for sub in _chunks(len(prompts), per):
        seqs = slice(sub.start * n, sub.stop * n)
        logp, _, _ = response_logprobs(
            model, prompts[sub], responses[seqs], n, pad_id, temp, shared_prefix=shared
        )
        out[seqs, : logp.shape[1]] = logp
    return out


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def main(argv: list[str]) -> int:
    cfg = parse_cli(TrainConfig, argv, "train", __doc__)
    if cfg is None:
        return 0
    summary = train(cfg)
    print(summary["table"])
    print(f"run folder: {cfg.run.out_dir}")
    return 0
