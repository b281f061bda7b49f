"""Every schedule of a run, in one module: learning rate, key-encoder momentum and training-view side.

Each is a function of the (fractional, 0-based) epoch, so a run stopped anywhere resumes on the same curve.
"""

from __future__ import annotations

import math

from moco.schema import Config, DataConfig


def scheduled_lr(
    base: float, epoch: float, epochs: int, schedule: str, milestones: list[int], warmup: float = 0.0
) -> float:
    """The learning rate at a (fractional) ``epoch``: linear warm-up, then cosine to zero over the epochs after
    the warm-up (the v3 authors' ``adjust_learning_rate``: it starts at ``base`` where the warm-up ends), poly
    decay to zero (``(1 - progress) ** 0.9``, DeepLab's and torchvision's segmentation reference's), or step decay
    (x0.1 at each milestone)."""
    if epoch < warmup:
        return base * (epoch + 1e-8) / warmup
    progress = min(1.0, (epoch - warmup) / max(epochs - warmup, 1e-8))
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return base * (1.0 - progress) ** 0.9
    return base * 0.1 ** sum(epoch >= m for m in milestones)


def base_lr(cfg: Config) -> float:
    """``optim.lr``, times batch / 256 when ``optim.scale_lr`` (the v3 recipes' lr = base_lr x batch / 256)."""
    o = cfg.optim
    return o.lr * o.batch_size / 256 if o.scale_lr else o.lr


def lr_at(cfg: Config, epoch: float) -> float:
    """The run's learning rate at a fractional epoch."""
    o = cfg.optim
    return scheduled_lr(base_lr(cfg), epoch, o.epochs, o.schedule, o.milestones, o.warmup_epochs)


def momentum_at(cfg: Config, epoch: float) -> float:
    """The key encoder's momentum at a fractional epoch: constant, or v3's cosine from m0 up to 1."""
    me = cfg.method
    if me.m_schedule == "cosine":
        return 1.0 - (1.0 - me.m) * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.optim.epochs))
    return me.m


def view_size_at(d: DataConfig, epoch: int) -> int:
    """Side of the training views in (0-based) ``epoch``: ``view_size``, or with progressive resizing
    ``ramp_size`` until ``ramp_epochs[0]``, then linearly up to ``view_size`` at ``ramp_epochs[1]``,
    rounded down to a multiple of 4 px (FFCV's low-res-first schedule)."""
    lo, (start, end) = d.ramp_size, d.ramp_epochs
    if not lo or epoch >= end:
        return d.view_size
    frac = max(epoch - start, 0) / max(end - start, 1)
    return max(lo, int(lo + frac * (d.view_size - lo)) // 4 * 4)
