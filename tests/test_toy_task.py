"""A task of one's own plugs into the trainer as one module: a regression head on a tiny set (predict an image's
mean brightness). It supplies its model's step, its data and its evaluation; the trainer and the job harness
do the rest (steps, lr schedule, checkpoints and exact resume, metrics, the time budget), unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from moco.config import resolve
from moco.core.distributed import DistInfo, rank_slice
from moco.training.checkpoint import TrainState, load_checkpoint
from moco.training.harness import run_job
from moco.training.logging import read_metrics
from moco.training.run import Run, augmentation_generator, open_run, start_state, training_parts
from moco.training.task import Stats, Task

# --- the toy task: everything it takes, in one place


class Regressor(nn.Module):
    """A small conv net with a scalar head, trained with the mean squared error."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_q = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.encoder_q(x).squeeze(1)
        return nn.functional.mse_loss(pred.float(), y), pred


def regression_step(model: nn.Module, batch: tuple, generator: torch.Generator) -> tuple[torch.Tensor, Stats]:
    x, y, _ = batch
    loss, pred = model(x, y)
    return loss, {"within_10pct": ((pred.detach() - y).abs() < 0.1).float().mean() * 100}


SCHEDULE_EPOCHS: list[float] = []  # what before_step saw, step by step


def note_schedule_epoch(model: nn.Module, cfg: Any, t: float) -> None:
    SCHEDULE_EPOCHS.append(t)


TOY = Task("toy", regression_step, {"within_10pct": "within 0.1"}, lambda c: f"optim.lr={c.optim.lr} too high",
           before_step=note_schedule_epoch)


def brightness_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 8-px images of random brightness, and their mean brightness."""
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(n, 1, 1, 1, generator=g)
    x = (level + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, x.mean((1, 2, 3))


@dataclass
class ToySource:
    """This process's slice of each global batch of the epoch order (the trainer's permutation)."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    dinfo: DistInfo
    decoded: None = None
    streams: bool = False
    lost: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(self.y)

    def steps_per_epoch(self, passes: int = 1) -> int:
        return self.samples * passes // self.batch_size

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int):  # noqa: ANN201 - batches
        b, part = self.batch_size, rank_slice(self.batch_size, self.dinfo)
        for i in range(start, len(perm) // b):
            idx = perm[i * b : (i + 1) * b][part]
            yield self.x[idx], self.y[idx], idx


@dataclass
class MseMonitor:
    """The test set's mean squared error."""

    x: torch.Tensor
    y: torch.Tensor

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        was = model.training
        model.eval()
        with torch.no_grad():
            mse = model(self.x, self.y)[0].item()
        model.train(was)
        return {"test_mse": mse}

    def describe(self, rec: dict[str, Any]) -> str:
        return f"  test mse {rec['test_mse']:.4f}"

    def estimate_seconds(self, model: nn.Module) -> float:
        t0 = time.perf_counter()
        self.evaluate(model)
        return time.perf_counter() - t0


def toy_train(out: Path, epochs: int = 6, max_steps: int | None = None, resume: str | None = None,
              log_every: int = 2, budget: float = 0.0, monitor: type[MseMonitor] = MseMonitor) -> TrainState:
    cfg = resolve("cifar10-cpu", overrides=[f"optim.epochs={epochs}", "optim.batch_size=16", "optim.lr=0.05",
                                            "optim.schedule=cosine", f"train.log_every={log_every}",
                                            "train.eval_every=2", f"optim.time_budget={budget}"])

    def set_up(dinfo: DistInfo, dist_device: torch.device | None) -> tuple[Run, TrainState]:
        c, device, ck, ck_path = open_run(cfg, out, dinfo, dist_device, TOY, resume)
        x, y = brightness_set(128, seed=1)
        run = Run(c, out, out, dinfo, device, ToySource(x, y, c.optim.batch_size, dinfo),
                  monitor(*brightness_set(64, seed=2)), False, TOY, max_steps)
        return run, start_state(run, training_parts(c, Regressor(), device), augmentation_generator(c), ck, ck_path)

    return run_job(cfg, out, set_up, time.perf_counter(), lambda run, state: None,
                   lambda run, state, stopped: state)


# --- what the trainer does for it


def test_a_toy_task_trains_evaluates_and_records_through_the_trainer(tmp_path):
    torch.manual_seed(0)
    untrained = MseMonitor(*brightness_set(64, seed=2)).evaluate(Regressor())["test_mse"]
    state = toy_train(tmp_path / "run")
    assert state.epoch == 6 and state.step == 6 * (128 // 16)
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert [("test_mse" in r) for r in epochs] == [False, True] * 3  # evaluated every 2 epochs (and the last)
    assert epochs[-1]["test_mse"] < 0.2 * untrained, (untrained, epochs[-1]["test_mse"])  # it learnt
    assert epochs[-1]["within_10pct"] > epochs[0]["within_10pct"]  # the task's own statistic, recorded
    steps = [r for r in recs if r["type"] == "step"]
    assert len(steps) == 6 * 8 // 2 and all("within_10pct" in r for r in steps)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["task"] == "toy"


def test_a_toy_task_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    whole = toy_train(tmp_path / "whole", epochs=3)
    torch.manual_seed(0)
    cut = toy_train(tmp_path / "cut", epochs=3, max_steps=11)  # stopped mid-epoch, with a checkpoint
    assert cut.step == 11 and cut.epoch == 1
    resumed = toy_train(tmp_path / "cut", epochs=3, resume="auto")
    assert resumed.step == whole.step
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_trainer_runs_the_tasks_hook_every_step_and_averages_its_statistics_over_the_epoch(tmp_path):
    SCHEDULE_EPOCHS.clear()
    torch.manual_seed(0)
    toy_train(tmp_path / "run", epochs=2, log_every=1)
    assert SCHEDULE_EPOCHS == [s / 8 for s in range(16)]  # before each of the 2 x 8 steps, at its schedule epoch
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for epoch in (1, 2):
        steps = [r["within_10pct"] for r in recs if r["type"] == "step" and r["epoch"] == epoch]
        (rec,) = [r for r in recs if r["type"] == "epoch" and r["epoch"] == epoch]
        assert len(steps) == 8 and rec["within_10pct"] == pytest.approx(sum(steps) / 8)


class SlowToTime(MseMonitor):
    """A monitor whose final evaluation takes 1.5 s to time (as a detector's does, in seconds)."""

    timings = 0

    def estimate_seconds(self, model: nn.Module) -> float:
        SlowToTime.timings += 1
        time.sleep(1.5)
        return 0.05


def test_a_budgets_evaluation_timing_is_not_counted_as_training_time(tmp_path):
    """Under a time budget the final evaluation is timed twice while training, 1.5 s each here, within epochs
    of about 0.25 s of training: the epochs' training time, and so their images/s, leave it out."""
    torch.manual_seed(0)
    SlowToTime.timings = 0
    state = toy_train(tmp_path / "run", budget=10.0, monitor=SlowToTime)
    assert SlowToTime.timings == 2
    epochs = [r for r in state.history if r["type"] == "epoch"]
    assert max(r["epoch_time"] for r in epochs) < 1.0, [r["epoch_time"] for r in epochs]  # counted in: >= 1.5
    assert sum(r["images_per_sec"] * r["epoch_time"] for r in epochs) == pytest.approx(state.step * 16)


def test_a_runs_training_speed_weighs_its_epochs_by_their_time():
    from moco.transfer.common import training_speed

    epochs = [{"images_per_sec": 100.0, "epoch_time": 9.0}, {"images_per_sec": 50.0, "epoch_time": 1.0}]
    assert training_speed(epochs) == pytest.approx((900 + 50) / 10)  # not the epochs' mean, 75
    assert training_speed([]) == 0.0
