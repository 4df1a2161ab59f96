"""``maxrl train``: RL with group advantages, on-policy by default, on any task and causal LM.

One step, top to bottom in :func:`train`: prompts -> N rollouts each -> verifier rewards ->
group advantages (any estimator of :mod:`maxrl.advantages`, by name) -> policy loss ->
optimiser step; evaluation every few steps.

How this differs from textbook PPO, following the paper's setup (docs/method.md): one
optimiser step per rollout batch, so the importance ratio is exactly 1 and clipping never fires
(``algo.ppo_epochs`` and ``algo.minibatches`` turn PPO back on); token-mean loss aggregation; no
KL term unless ``algo.kl_coef`` is set; no value function. The advantage of a sequence is shared
by all its tokens.

With no ``model.init``, the run first warm-starts a maze model with SFT (``maxrl sft``), exactly
as the paper does before RL. A run folder that already holds checkpoints is resumed from the
latest one, and replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

from maxrl.config import parse_cli
from maxrl.groups import flip_rewards, group_stats, sample_groups
from maxrl.metrics import Timer
from maxrl.seeding import generator, step_seed
from maxrl.tasks.base import Task
from maxrl.train.config import TrainConfig
from maxrl.train.setup import NonFiniteLossError, Run, setup
from maxrl.train.update import optimise

__all__ = ["NonFiniteLossError", "main", "rl_step", "train"]


def train(cfg: TrainConfig, task: Task | None = None) -> dict:
    """Run (or resume) RL; return the summary (pass@k before and after, timings).

    ``task`` overrides ``cfg.task`` with any object following :class:`maxrl.tasks.base.Task`.
    """
    run = setup(cfg, task)
    for step in run.steps():
        record = rl_step(run, step)
        # 5. evaluate, log, checkpoint
        if step % cfg.eval.every == 0 or step == cfg.run.steps:
            timer = Timer()
            record.update(run.evaluate(step))
            record["time/eval_s"] = timer.lap()
        run.log(step, record)
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
            run.save(step)
    return run.finish()


def rl_step(run: Run, step: int) -> dict:
    """One RL step, stages 1 to 4 of the pipeline; returns its training metrics."""
    cfg, roll, seed = run.cfg, run.cfg.rollout, run.cfg.run.seed
    timer = Timer()
    # 1. prompts, every draw seeded by (seed, step)
    items = run.task.train_items(roll.prompts_per_step, seed=step_seed(seed, step, "prompts"))
    # 2. N rollouts per prompt, scored by the verifier
    groups = sample_groups(
        run.model, run.tokenizer, run.task, items, roll.rollouts_per_prompt, run.sampler,
        run.sampling, generator(seed, step, "rollouts"), roll.zero_reward_if_truncated,
    )  # fmt: skip
    flips = {}
    if cfg.task.false_positive_rate or cfg.task.false_negative_rate:  # a noisy verifier
        noise = generator(seed, step, "verifier_noise")
        groups, flips = flip_rewards(
            groups, cfg.task.false_positive_rate, cfg.task.false_negative_rate, noise
        )
    rollout_s = timer.lap()
    # 3. group advantages, (prompts, N)
    adv = run.estimator(groups.rewards, mean_logprob=groups.mean_logprobs())
    # 4. policy loss and optimiser step(s)
    stats = optimise(
        run.model, run.optimizer, groups, adv, cfg.algo, cfg.optim,
        micro_batch_size=cfg.run.micro_batch_size, seed=seed, step=step, ref_model=run.ref,
        precision=cfg.model.precision, packed=cfg.model.packed, workers=cfg.run.update_workers,
    )  # fmt: skip
    run.check_finite(stats, step)
    run.scheduler.step()
    train_s = timer.lap()
    record = {f"train/{k}": v for k, v in group_stats(groups.rewards).items()}
    if groups.clean_rewards is not None:
        record["train/clean_reward_mean"] = float(groups.clean_rewards.mean())
        record.update({f"train/{k}": v for k, v in flips.items()})
    record.update(stats.metrics())
    record.update(
        {
            "train/response_length": float(groups.lengths.float().mean()),
            "train/truncated_frac": float(groups.truncated.float().mean()),
            "train/verifier_errors": groups.verifier_errors,
            "train/adv_abs_mean": float(adv.abs().mean()),
            "train/lr": run.scheduler.get_last_lr()[0],
            "train/rollouts": step * roll.prompts_per_step * roll.rollouts_per_prompt,
            "time/rollout_s": rollout_s,
            "time/train_s": train_s,
            "time/rollout_tokens_per_s": int(groups.lengths.sum()) / max(rollout_s, 1e-9),
        }
    )
    return record


def main(argv: list[str]) -> int:
    cfg = parse_cli(TrainConfig, argv, "train", __doc__)
    if cfg is None:
        return 0
    summary = train(cfg)
    print(summary["table"])
    print(f"run folder: {cfg.run.out_dir}")
    return 0
