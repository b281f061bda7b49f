"""What the trainer needs of a task: its model's training step, an optional per-step hook, and the
evaluation run at the end of an epoch.

The trainer (:mod:`moco.training.loop`) knows steps, precision, the optimiser, schedules, the time budget,
checkpoints and logging; a :class:`Task` knows what a batch holds and what its model computes on it. A task
module (pretraining, fine-tuning, detection, or one of your own) builds its :class:`Task`, its model, its
batch source and its :class:`Monitor`, and hands them to the trainer in a
:class:`~moco.training.run.Run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from moco.schema import Config

Stats = dict[str, torch.Tensor]
"""A step's statistics by metrics key (detached scalars on the device, read once per log record)."""

Step = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, Stats]]
"""``step(model, batch, generator) -> (loss, stats)``: one batch's forward. The trainer runs it under
autocast (through DDP under torchrun), then backward and the optimiser."""


@dataclass(frozen=True)
class Task:
    """A kind of run as the trainer sees it.

    ``name`` is recorded in checkpoints (each kind resumes only its own). ``step`` is the model's training step;
    ``stats`` names its statistics (metrics key -> the label of the log line, as a percentage). ``before_step``
    (model, config, schedule epoch) runs before every step: pretraining sets the key encoder's momentum there.
    ``causes`` says what to check when the loss stops being finite. ``unused_parameters``: some parameters may
    get no gradient in a step (DDP must look for them). ``health`` builds the run's health monitor (rank 0): the
    trainer shows each of its signs once and records it in metrics.jsonl."""

    name: str
    step: Step
    stats: dict[str, str]
    causes: Callable[[Config], str]
    before_step: Callable[[nn.Module, Config, float], None] | None = None
    unused_parameters: bool = False
    health: Callable[[Config, int, nn.Module, int], Any] | None = None  # (config, steps per epoch, the model,
    # processes) -> a monitor whose ``observe(record)`` returns the signs a record shows, each once


class Monitor(Protocol):
    """The evaluation at the end of an epoch: record fields, a log fragment, and its cost for a time budget.
    A monitor may set ``cost_follows_model = True`` when its cost changes as the model trains (a detector's
    boxes); a time budget then trusts the latest timing instead of the largest."""

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Score ``model`` (the task's model, as trained): the epoch record's fields."""
        ...

    def describe(self, rec: dict[str, Any]) -> str:
        """The log line's fragment for a record that :meth:`evaluate` filled."""
        ...

    def estimate_seconds(self, model: nn.Module) -> float:
        """Seconds :meth:`evaluate` will take, timed on a sample."""
        ...


class StepModule(nn.Module):
    """``model`` with the task's step as its forward: the module the trainer calls (and DDP wraps), so that a
    step of any task runs through DDP's forward. It holds no parameters of its own."""

    def __init__(self, model: nn.Module, step: Step) -> None:
        super().__init__()
        self.model, self.step = model, step

    def forward(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Stats]:
        return self.step(self.model, batch, generator)
