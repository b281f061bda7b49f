"""Learning-rate schedules: linear warm-up, then cosine to zero or step decay (x0.1 at each milestone)."""

from __future__ import annotations

import math


def scheduled_lr(
    base: float, epoch: float, epochs: int, schedule: str, milestones: list[int], warmup: float = 0.0
) -> float:
    """The learning rate at a (fractional) ``epoch``."""
    if epoch < warmup:
        return base * (epoch + 1e-8) / warmup
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base * 0.1 ** sum(epoch >= m for m in milestones)
