"""Supervised warm-start: next-token loss on the answer tokens only (docs/method.md).

The paper trains its maze model with SFT before RL: AdamW (0.9, 0.95), weight decay 0.01, lr 5e-4,
batch 32, gradient clip 1.0, 1500 steps, loss on answer tokens only. ``maxrl sft`` reads the same
config file as ``maxrl train`` and runs only this stage, into ``<run.out_dir>/sft``; its
``final/`` folder is a Hugging Face checkpoint that ``model.init`` accepts.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maxrl.config import parse_cli, save_config
from maxrl.eval.evaluate import evaluator
from maxrl.groups import encode_prompts, make_rollout_sampler, rollout_workers
from maxrl.metrics import MetricsLogger, Timer, read_metrics
from maxrl.models.loading import build_policy, load_policy, quiet_transformers
from maxrl.seeding import process_settings, step_seed
from maxrl.tasks import make_task
from maxrl.train.checkpoints import latest_checkpoint, load_trainer_state, save_checkpoint
from maxrl.train.config import TrainConfig
from maxrl.train.logprobs import compute_precision, policy_logprobs
from maxrl.train.optim import adamw
from maxrl.train.streams import backward_in_streams, shards, update_workers


def sft_batch(tokenizer, items) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """(prompt ids, answer ids, answer lengths): the answers (the demonstration and eos) as a
    right-padded (B, longest) tensor, the tokens the loss is on."""
    prompts = encode_prompts(tokenizer, items)
    answers = [
        tokenizer(it.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for it in items
    ]
    lengths = torch.tensor([len(a) for a in answers])
    ids = torch.full((len(items), int(lengths.max())), tokenizer.pad_token_id, dtype=torch.long)
    for i, answer in enumerate(answers):
        ids[i, : len(answer)] = torch.tensor(answer)
    return prompts, ids, lengths


def _answer_loss(model, cfg: TrainConfig, tokenizer, batch, index: torch.Tensor):
    """(loss, its value) of demonstrations ``index`` of ``batch`` (prompts, answers, lengths,
    the batch's answer tokens): their summed answer log-likelihood over the whole batch's
    answer tokens, so that the shards' losses sum to the batch's mean."""
    prompts, answers, lengths, tokens = batch
    with compute_precision(model, cfg.model.precision):
        logp, mask, _ = policy_logprobs(
            model, [prompts[i] for i in index.tolist()], answers[index], lengths[index], 1,
            tokenizer.pad_token_id, packed=cfg.model.packed,
        )  # fmt: skip
    loss = -(logp * mask).sum() / tokens
    return loss, loss.item()


def run_sft(cfg: TrainConfig, out_dir: Path) -> Path:
    """Run (or resume, or reuse) the SFT stage; return the folder of the final checkpoint."""
    final = out_dir / "final"
    if (final / "config.json").exists():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    s = cfg.sft
    resume = latest_checkpoint(out_dir)
    if resume is not None:
        model, tokenizer = load_policy(str(resume), cfg.model.dtype)
    else:
        model, tokenizer = build_policy(cfg.model.preset, cfg.run.seed, cfg.model.dtype)
    task = make_task(cfg.task, tokenizer)
    optimizer, scheduler = adamw(
        model.parameters(),
        lr=s.lr,
        betas=s.betas,
        weight_decay=s.weight_decay,
        schedule="cosine",
        warmup_steps=s.warmup_steps,
        total_steps=s.steps,
        floor=0.1,
    )
    start = 0
    if resume is not None:
        start = load_trainer_state(resume, optimizer, scheduler)["step"]
    logger = MetricsLogger(out_dir, cfg.run.tensorboard, "", resume_step=start if resume else -1)
    sampler = make_rollout_sampler(
        cfg.rollout.backend,
        cfg.rollout.max_batch_size,
        workers=rollout_workers(cfg.rollout, model),
    )

    run_eval = evaluator(cfg, model, tokenizer, task, sampler)

    if start == 0:
        logger.log(0, run_eval(0))
    model.train()
    workers = update_workers(cfg.run.update_workers, model)
    params = [p for p in model.parameters() if p.requires_grad]
    timer = Timer()
    bar = tqdm(
        range(start + 1, s.steps + 1),
        desc="sft",
        disable=not cfg.run.progress,
        initial=start,
        total=s.steps,
    )
    every = s.eval_every or cfg.eval.every
    for step in bar:
        items = task.train_items(s.batch_size, seed=step_seed(cfg.run.seed, step, "sft"))
        prompts, answers, lengths = sft_batch(tokenizer, items)
        # mean next-token loss over the answer tokens, by the trainer's forward, the
        # demonstrations shared by the update's streams
        batch = (prompts, answers, lengths, float(lengths.sum()))
        optimizer.zero_grad(set_to_none=True)
        parts = shards(torch.arange(len(prompts)), workers)
        losses = [partial(_answer_loss, model, cfg, tokenizer, batch, part) for part in parts]
        loss = sum(backward_in_streams(losses, params))
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        scheduler.step()
        record = {
            "sft/loss": loss,
            "sft/grad_norm": grad_norm.item(),
            "sft/lr": scheduler.get_last_lr()[0],
            "time/step_s": timer.lap(),
        }
        if step % every == 0 or step == s.steps:
            record.update(run_eval(step))
            bar.set_postfix(loss=f"{record['sft/loss']:.3f}", pass1=f"{record['eval/pass@1']:.3f}")
        logger.log(step, record)
        if step % cfg.run.checkpoint_every == 0 or step == s.steps:
            save_checkpoint(
                out_dir, step, model, tokenizer, optimizer, scheduler, keep=cfg.run.keep_checkpoints
            )
    logger.close()
    tmp = out_dir / ".final_tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(final)
    return final


def main(argv: list[str]) -> int:
    cfg = parse_cli(TrainConfig, argv, "sft", __doc__)
    if cfg is None:
        return 0
    process_settings(cfg.run)
    quiet_transformers()
    out_dir = Path(cfg.run.out_dir) / "sft"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    final = run_sft(cfg, out_dir)
    evals = [r for r in read_metrics(out_dir / "metrics.jsonl") if "eval/pass@1" in r]
    if evals:
        print(
            f"SFT held-out pass@1: {evals[0]['eval/pass@1']:.3f} (step {evals[0]['step']}) -> "
            f"{evals[-1]['eval/pass@1']:.3f} (step {evals[-1]['step']})"
        )
    print(f"checkpoint: {final}")
    return 0
