"""The optimiser of SFT and RL: AdamW with a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math

import torch


def lr_lambda(schedule: str, warmup: int, total: int, floor: float = 0.0):
    """The multiplier of the base learning rate at each step: a linear warmup over ``warmup``
    steps, then constant, linear or cosine decay to ``floor`` at step ``total``."""

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return floor + (1 - floor) * (1 - frac)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

    return fn


def adamw(
    params,
    *,
    lr: float,
    betas,
    weight_decay: float,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    floor: float = 0.0,
):
    """AdamW over the parameters that require gradients, and its ``LambdaLR`` scheduler."""
    optimizer = torch.optim.AdamW(
        [p for p in params if p.requires_grad],
        lr=lr,
        betas=tuple(betas),
        weight_decay=weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule, warmup_steps, total_steps, floor)
    )
    return optimizer, scheduler
