"""``pretrain``: set a run up once, then train epoch by epoch until the end or a stop.

``pretrain(cfg, data, out)`` trains MoCo on an image folder and writes the run directory (config.yaml,
metrics.jsonl, tb/, checkpoints, curves.png). Stopping is safe at any time: SIGINT/SIGTERM finish the
current step and write ``checkpoint_last.pt``; ``resume="auto"`` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import copy
import inspect
import logging
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moco.config import validate
from moco.core.distributed import check_global_batch, cleanup, init_distributed
from moco.core.errors import CheckpointError, ConfigError
from moco.core.run_lock import lock_run_folder
from moco.data.folder import ImageList, check_data_root
from moco.data.shards import check_shards, is_shard_spec
from moco.methods import describe
from moco.models.generic import custom_name
from moco.schema import Config
from moco.training.budget import BudgetClock, Plan
from moco.training.checkpoint import TrainState, latest_checkpoint, load_checkpoint, require_moco_checkpoint
from moco.training.logging import MetricsLogger
from moco.training.loop import end_of_epoch, final_cost, train_one_epoch
from moco.training.run import Run, set_up

log = logging.getLogger("moco")


@dataclass
class RunResult:
    """How a call to :func:`pretrain` ended."""

    out: Path
    epoch: int  # completed epochs
    step: int  # global steps
    stopped: bool  # ended by a signal or ``max_steps`` before ``optim.epochs``
    metrics: dict[str, Any]  # the last completed epoch's record ({} if none)

    def summary(self) -> dict[str, Any]:
        """The run folder, counters and last epoch's metrics, rounded, as the CLI prints them."""
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.metrics.items() if k != "type"}
        return {"out": str(self.out), "epoch": self.epoch, "step": self.step, **rounded}


def pretrain(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    resume: str | None = None,
    overwrite: bool = False,
    knn_train: str | Path | None = None,
    knn_test: str | Path | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    knn: bool = True,
    backbone: torch.nn.Module | None = None,
    replay_plan: str | Path | None = None,
    started: float | None = None,
    size_hint: bool = False,
) -> RunResult:
    """Pretrain MoCo on the images under ``data``, writing the run to ``out``.

    Under ``torchrun`` every process runs this function: each takes its slice of every global batch
    (``optim.batch_size`` is the global batch), shuffle BN and the queue span all processes, and
    rank 0 alone writes files and runs the kNN monitor. ``knn=False`` turns the monitor off.
    ``max_steps`` stops after that many global steps (with a checkpoint), as an interruption would.
    ``backbone`` (any module mapping images to features or feature maps) is trained instead of the one
    ``cfg.model`` describes; the run records it as ``model.arch = custom:MODULE.CLASS``.

    ``optim.time_budget`` (seconds) trains for that long instead of ``optim.epochs`` epochs, start-up and the
    final checkpoint and kNN included (:mod:`moco.training.budget`). ``replay_plan`` (a budgeted run's folder
    or checkpoint) follows that run's recorded plan without the clock: the same run, bit for bit. The budget
    counts from ``started`` (a :func:`time.perf_counter` time; default: the call), so a command can count
    its own start-up as well. ``size_hint`` (the CLI, when no preset or image size was chosen) says in one line
    when the images are much larger than the training views, and what to change.
    """
    started = time.perf_counter() if started is None else started
    out = Path(out)
    if backbone is not None:
        cfg = copy.deepcopy(cfg)
        cfg.model.arch = custom_name(backbone)
    validate(cfg)
    check_global_batch(cfg.optim.batch_size)
    dinfo, dist_device = init_distributed(cfg.train.device)
    lock = None
    try:
        if is_shard_spec(data):  # before any work: a bad --data or --out is one line; a URL stays a string
            check_shards(data)
        else:
            data = Path(data)
            check_data_root(data.expanduser())
        lock = lock_run_folder(out) if dinfo.is_main else None
        run, state = set_up(cfg, data, out, dinfo, dist_device, resume=resume, overwrite=overwrite,
                            knn_train=knn_train, knn_test=knn_test, knn=knn, progress=progress and dinfo.is_main,
                            max_steps=max_steps, backbone=backbone)
        set_up_budget(run, state, replay_plan, started)
        if run.finished(state):
            if run.main:
                log.info("run already finished (epoch %d, step %d)", state.epoch, state.step)
            return _result(run, state)
        if run.main:
            _log_start(run, state)
            if size_hint and isinstance(run.source.images, ImageList):  # a stream is not read ahead for it
                _hint_larger_images(run)
        return train(run, state)
    finally:
        if lock is not None:
            lock.release()
        cleanup()


def _result(run: Run, state: TrainState) -> RunResult:
    return RunResult(run.out, state.epoch, state.step, not run.finished(state), state.last)


def load_plan(source: str | Path) -> Plan:
    """The plan a budgeted run followed, from its folder (latest checkpoint) or a checkpoint file."""
    path = Path(source)
    ckpt_path = latest_checkpoint(path) if path.is_dir() else path
    if ckpt_path is None or not ckpt_path.is_file():
        raise CheckpointError(f"--replay-plan: no checkpoint in {path}")
    ckpt = require_moco_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
    if "budget" not in ckpt:
        raise CheckpointError(f"--replay-plan: {ckpt_path} is not from a time-budgeted run (it has no plan)")
    return Plan.from_dict(ckpt["budget"]["plan"])


def set_up_budget(run: Run, state: TrainState, replay_plan: str | Path | None, started: float) -> None:
    """The run's plan: a recorded one to replay (no clock), or under ``optim.time_budget`` a plan that the clock
    revises as it measures the speed (resumed runs continue theirs with the budget that remains)."""
    cfg, spe = run.cfg, run.steps_per_epoch
    if replay_plan is not None:
        plan = load_plan(replay_plan)
        if state.plan is not None and state.plan.events != plan.events[: len(state.plan.events)]:
            raise ConfigError(f"--replay-plan {replay_plan}: this run's checkpoint follows another plan")
        state.plan = plan
        return
    budget = cfg.optim.time_budget
    if not budget:
        return  # a budgeted checkpoint resumed without a budget follows the rest of its plan as a replay would
    if state.plan is None:
        if state.step:
            raise ConfigError(f"{run.out} was started without a time budget; resume it without --time-budget")
        state.plan = Plan(cfg.optim.epochs, [(0, cfg.optim.epochs * spe)])  # until the speed is measured
    run.clock = BudgetClock(budget, state.budget_spent, lambda: final_cost(run), started=started)
    if run.clock.time_left() <= 0:
        state.plan.replan(state.step, state.step)
        log.warning("the time budget (%.0f s) is used up: finishing the run now", budget)


def run_length(run: Run, state: TrainState) -> str:
    """How long the run trains, for its start line: epochs x steps, batch and processes."""
    cfg, b = run.cfg, run.cfg.optim.batch_size
    procs = f" ({run.dinfo.world_size} processes x {b // run.dinfo.world_size})" if run.dinfo.enabled else ""
    if run.clock is not None:
        length = (f"a time budget of {cfg.optim.time_budget:.0f} s ({run.clock.time_left():.0f} s left; the plan "
                  f"follows the measured speed)")
    elif state.plan is not None:
        length = f"a recorded plan of {state.plan.total_steps} steps"
    else:
        length = f"{cfg.optim.epochs} epochs"
    return f"{length} x {run.steps_per_epoch} steps, batch {b}{procs}"


def _log_start(run: Run, state: TrainState) -> None:
    cfg, d = run.cfg, run.cfg.data
    log.info("pretraining %s (width %d) on %d images from %s: %s, %s, T=%s, %s on %s; training views %d px "
             "(%s augmentation), evaluation %d px", cfg.model.arch, cfg.model.width, run.n_images, run.train_dir,
             run_length(run, state), describe(cfg, run.n_images), cfg.method.T, cfg.train.precision, run.device,
             d.view_size, d.augmentation, d.image_size)


LARGER = 4  # images this many times the training side (median) get the size hint


def median_side(images: ImageList, sample: int = 64) -> int:
    """The median shorter side of up to ``sample`` images spread over the list (read from their headers)."""
    from PIL import Image

    step = max(1, len(images) // sample)
    sides = []
    for p in images.paths[::step][:sample]:
        try:
            with Image.open(images.root / p) as im:
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - an unreadable file says nothing about the others' size
            continue
    return int(statistics.median(sides)) if sides else 0


def _hint_larger_images(run: Run) -> None:
    """One line when the images are far larger than the training views: what the model misses, the preset or
    setting to change, and what it costs per image."""
    side, view = median_side(run.source.images), run.cfg.data.view_size
    if side < LARGER * view:
        return
    log.warning("your images are about %d px a side (median), %d times the %d-px training views: the model does "
                "not see their detail. For photos use --preset imagenet-v2 (224-px views) or --set "
                "data.image_size=N; 224 px costs about %d times the compute per image of %d px", side, side // view,
                view, round((224 / view) ** 2), view)


# BatchNorm statistics stay each process's own (per-device BN, as the paper's shuffle BN needs) and the queue is
# kept equal by gathering keys: DDP must not broadcast buffers before each forward. torch 2.13 renamed the
# switch (``broadcast_buffers`` warns from then on); the new one still syncs once at start, where every process
# holds the same buffers (one seed, or one checkpoint).
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


def train(run: Run, state: TrainState) -> RunResult:
    """Train from where ``state`` stands to the end (``optim.epochs``, or a time budget's plan), or until a
    signal or ``max_steps``: the loop of every kind of run (``run.task``): pretraining, fine-tuning, detection."""
    net: torch.nn.Module = state.model
    if run.dinfo.enabled:  # gradients of encoder_q are all-reduced; the queue is kept identical by gathering keys
        dev = run.device
        net = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[dev.index] if dev.type == "cuda" else None, **NO_BUFFER_SYNC,
            find_unused_parameters=run.task.unused_parameters)
    run.metrics = MetricsLogger(run.out) if run.main else None
    run.stop.install()
    try:
        while not run.finished(state):
            totals = train_one_epoch(run, state, net)
            if state.epoch_step < run.steps_per_epoch and not run.finished(state):  # stopped mid-epoch
                run.save(state, end_of_epoch=False)
                if run.main:
                    log.warning("stopped (%s) at epoch %d, step %d; checkpoint saved to %s; continue with "
                                "--resume auto", _why(run, state), state.epoch + 1, state.step,
                                run.out / "checkpoint_last.pt")
                return _result(run, state)
            end_of_epoch(run, state, totals)
            if run.should_stop(state):
                if run.main:
                    log.warning("stopped after epoch %d; continue with --resume auto", state.epoch)
                return _result(run, state)
    finally:
        run.stop.restore()
        if run.metrics is not None:
            run.metrics.close()
    return _result(run, state)


def _why(run: Run, state: TrainState) -> str:
    if run.stop.signum:
        return signal.Signals(run.stop.signum).name
    return f"max_steps={run.max_steps}" if run.max_steps is not None and state.step >= run.max_steps else "another rank"
