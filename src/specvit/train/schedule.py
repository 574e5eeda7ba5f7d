"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (per optimizer step)."""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float, kind: str = "cosine") -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps``; then cosine from 1 to ``min_ratio`` at ``total_steps``
    (``kind="constant"`` stays at 1 after warm-up).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer, *, total_steps: int, warmup_steps: int, min_lr: float, lr: float, kind: str = "cosine"):
    """A ``LambdaLR`` following :func:`lr_factor` (its state is checkpointed)."""
    min_ratio = min(1.0, min_lr / lr)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio, kind=kind),
    )
