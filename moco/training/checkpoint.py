"""The training state, and how it turns into a checkpoint and back.

A checkpoint is a plain dict of tensors and Python values (loadable with ``torch.load(weights_only=True)``,
so opening one never runs code): ``format``, ``config``, ``epoch`` (completed epochs), ``step`` (global
step), ``epoch_step`` (steps done in an unfinished epoch), ``model`` (both encoders, queue and queue
pointer), ``optimizer``, ``rng``, ``metrics``, ``history`` and, for a time budget, ``budget`` (the plan and
the seconds spent), ``task`` (``pretrain`` or ``finetune``) and what a fine-tuning run adds (``classes``,
``labels``, ``init``). File handling (atomic writes, safe loads) is
:mod:`moco.core.checkpoint_files`, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.core.checkpoint_files import (
    FORMAT,
    atomic_save,
    latest_checkpoint,
    load_checkpoint,
    load_newest_intact,
    load_state_strict,
    require_moco_checkpoint,
)
from moco.core.errors import CheckpointError
from moco.schema import Config
from moco.training.budget import Plan

__all__ = [
    "FORMAT", "CheckpointError", "TrainState", "atomic_save", "check_compatible", "latest_checkpoint",
    "load_checkpoint", "load_newest_intact", "load_state_strict", "require_moco_checkpoint",
]

# Settings a checkpoint's weights depend on; everything else (schedule, BN splits for another process
# count, logging) may change on resume.
STRUCTURAL = (("model", ("arch", "width", "cifar_stem", "head", "dim", "mlp_dim", "patch_size")),
              ("method", ("dictionary", "K")))


def check_compatible(saved: Config, cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint whose structural settings differ from this run's."""
    for section, keys in STRUCTURAL:
        a, b = getattr(saved, section), getattr(cfg, section)
        for k in keys:
            if getattr(a, k) != getattr(b, k):
                raise CheckpointError(
                    f"{path} was made with {section}.{k}={getattr(a, k)!r}, this run asks for {getattr(b, k)!r}"
                )


@dataclass
class TrainState:
    """Everything training changes, and the counters that place it in the run: what a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator  # augmentation and shuffle-BN draws, the same on every rank
    epoch: int = 0  # completed epochs
    step: int = 0  # global steps
    epoch_step: int = 0  # steps done in the unfinished epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    plan: Plan | None = None  # a time budget's plan (optim.time_budget), or None: optim.epochs epochs
    budget_spent: float = 0.0  # seconds of the time budget used so far, earlier sessions included

    @property
    def last(self) -> dict[str, Any]:
        """The last completed epoch's record ({} before the first)."""
        return self.history[-1] if self.history else {}

    def to_checkpoint(self, cfg: Config, n_images: int, world_size: int,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict, with the global random state as it is now, and ``extra`` (the run's ``task``
        and what else its kind records)."""
        ckpt = {**(extra or {}),
            "format": FORMAT, "config": cfg.to_dict(), "epoch": self.epoch, "step": self.step,
            "epoch_step": self.epoch_step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": {"aug": self.gen.get_state(), "torch": torch.get_rng_state()},
            "metrics": self.last, "history": self.history, "n_images": n_images, "world_size": world_size,
        }
        if self.scaler.is_enabled():
            ckpt["scaler"] = self.scaler.state_dict()
        if self.plan is not None:
            ckpt["budget"] = {"plan": self.plan.to_dict(), "spent_s": self.budget_spent}
        return ckpt

    def restore(self, ckpt: dict[str, Any], path: Path) -> None:
        """Load a checkpoint dict made by :meth:`to_checkpoint` (the global random state included)."""
        load_state_strict(self.model, ckpt["model"], path, "model")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match this model ({e})") from None
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.gen.set_state(ckpt["rng"]["aug"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.epoch, self.step, self.epoch_step = ckpt["epoch"], ckpt["step"], ckpt.get("epoch_step", 0)
        self.history = list(ckpt.get("history", []))
        if "budget" in ckpt:
            self.plan = Plan.from_dict(ckpt["budget"]["plan"])
            self.budget_spent = float(ckpt["budget"]["spent_s"])


KIND_NAMES = {"pretrain": "pretraining", "finetune": "fine-tuning", "detect": "detection"}


def checkpoint_to_resume(out: Path, resume: str | None, task: str) -> dict[str, Any] | None:
    """The checkpoint of kind ``task`` that ``resume`` continues (``"auto"``: the newest intact one in ``out``;
    else a path), for a resumed run to take its config and data from; None when there is none yet. A file that
    is not ours, or a checkpoint of another kind (one without a kind is pretraining's), is refused in one line."""
    if not resume:
        return None
    if resume == "auto":
        found = load_newest_intact(out, warn=False)  # the run warns when it falls back to an older one
        if found is None:
            return None
        ck, path = found
    else:
        path = Path(resume)
        if not path.is_file():
            return None  # the run says "checkpoint not found"
        ck = require_moco_checkpoint(load_checkpoint(path), path)
    if ck.get("task", "pretrain") != task:
        raise CheckpointError(f"{path} is not a {KIND_NAMES.get(task, task)} checkpoint: `moco {task} --resume` "
                              "continues only its own runs")
    return ck
