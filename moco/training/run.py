"""What every run sets up once, whatever its task: the run folder, the checkpoint to resume, and the
:class:`Run` (what stays fixed while training) whose :class:`TrainState` (what training changes) is restored
from it.

A task module builds its data, model and monitor between :func:`open_run` and :func:`start_state`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from moco.config import dump_yaml, from_dict
from moco.core.checkpoint_files import atomic_save
from moco.core.distributed import DistInfo, any_rank, barrier, check_same_config, concat_all_gather
from moco.core.errors import CheckpointError, ConfigError
from moco.core.precision import memory_format, pick_device, resolve_precision
from moco.data.pipelines import BatchSource
from moco.optim import OPTIMIZERS, trainable_parameters
from moco.schedules import base_lr
from moco.schema import Config
from moco.training.budget import TimeBudget
from moco.training.checkpoint import (
    TrainState,
    check_compatible,
    latest_checkpoint,
    load_checkpoint,
    load_newest_intact,
    require_moco_checkpoint,
)
from moco.training.logging import MetricsLogger
from moco.training.task import Monitor, Task
from moco.training.trackers import Tracker

log = logging.getLogger("moco")
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint_last.pt", "curves.png", "recipe.json")


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after every step. A second signal stops at once, except the
    same one within 2 s under torchrun: its launcher relays the Ctrl-C that the whole terminal already sent."""

    signum: int | None = None
    at: float = 0.0  # when it came (time.monotonic)
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == self.signum and time.monotonic() - self.at < 2.0 and "TORCHELASTIC_RUN_ID" in os.environ:
                return  # the same signal again at once under torchrun: its launcher relaying a Ctrl-C
            raise KeyboardInterrupt  # a second signal: stop now
        self.signum, self.at = signum, time.monotonic()
        log.warning("received %s: finishing this step and saving a checkpoint", signal.Signals(signum).name)

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


@dataclass
class Run:
    """What stays fixed while a run trains: settings, places, data, and the stop conditions."""

    cfg: Config
    out: Path
    train_dir: Path
    dinfo: DistInfo
    device: torch.device
    source: BatchSource
    monitor: Monitor | None  # the end-of-epoch evaluation (rank 0): kNN when pretraining, test top-1 when fine-tuning
    progress: bool
    task: Task
    max_steps: int | None = None
    passes: int = 1  # passes over the data per epoch (fine-tuning on few labels makes an epoch of several)
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)  # what else a checkpoint records (fine-tuning:
    # the classes, the labels used, the initialisation)
    stop: StopFlag = field(default_factory=StopFlag)
    metrics: MetricsLogger | None = None  # rank 0, while training
    trackers: list[Tracker] = field(default_factory=list)  # rank 0: MLflow, W&B (train.loggers)
    health: Any = None  # rank 0, while training: the task's health monitor (Task.health)
    budget: TimeBudget | None = None  # with optim.time_budget (not when replaying a plan): measures, re-plans

    @property
    def main(self) -> bool:
        return self.dinfo.is_main

    @property
    def n_images(self) -> int:
        """The samples an epoch draws from (its source's)."""
        return self.source.samples

    @property
    def steps_per_epoch(self) -> int:
        return self.source.steps_per_epoch(self.passes)

    def epoch_order(self, seed: int) -> torch.Tensor | None:
        """The order of epoch ``seed``'s samples: ``passes`` permutations of them, one after the other (None for
        a source that streams: it orders itself)."""
        if self.source.streams:
            return None
        g = torch.Generator().manual_seed(seed)
        return torch.cat([torch.randperm(self.n_images, generator=g) for _ in range(self.passes)])

    def total_steps(self, state: TrainState) -> int:
        """The run's length in global steps: ``optim.epochs`` epochs, or a time budget's plan as it stands."""
        if state.plan is not None:
            return state.plan.total_at(state.step)
        return self.cfg.optim.epochs * self.steps_per_epoch

    def finished(self, state: TrainState) -> bool:
        """All planned steps done (a budget's plan), or ``optim.epochs`` epochs completed."""
        if state.plan is not None:
            return state.step >= state.plan.total_at(state.step)
        return state.epoch >= self.cfg.optim.epochs

    def schedule_epoch(self, state: TrainState) -> float:
        """The fractional epoch the schedules are read at: the data's epoch, or a budget plan's schedule epoch
        (0 to ``optim.epochs`` over the planned steps)."""
        if state.plan is not None:
            return state.plan.schedule_epoch(state.step)
        return state.epoch + state.epoch_step / self.steps_per_epoch

    def should_stop(self, state: TrainState) -> bool:
        """A signal on any rank, or ``max_steps`` reached: every rank stops at the same step."""
        return any_rank(self.stop.signum is not None, self.device) or (
            self.max_steps is not None and state.step >= self.max_steps)

    def stream_record(self) -> dict[str, Any] | None:
        """Where every process's readers of a streaming source stand (its ``position()``), gathered from all
        ranks, with the layout they had: what a checkpoint needs to resume a stream exactly; None for other
        sources."""
        position = getattr(self.source, "position", None)
        if position is None:
            return None
        mine = torch.tensor(position(), dtype=torch.long, device=self.device).unsqueeze(0)
        return {"processes": self.dinfo.world_size, "workers": self.source.workers,
                "positions": concat_all_gather(mine).tolist()}

    def save(self, state: TrainState, end_of_epoch: bool) -> None:
        """``checkpoint_last.pt`` (rank 0), and after every ``train.checkpoint_every`` epochs and the last one
        a kept ``checkpoint_{epoch:04d}.pt``."""
        if self.budget is not None:
            state.budget_spent = self.budget.clock.spent
        stream = self.stream_record()  # every rank takes part: the positions are gathered
        if self.main:
            ckpt = state.to_checkpoint(self.cfg, self.n_images, self.dinfo.world_size,
                                       {"task": self.task.name, **self.checkpoint_extra,
                                        **({"stream": stream} if stream else {})})
            atomic_save(ckpt, self.out / "checkpoint_last.pt")
            every = self.cfg.train.checkpoint_every
            if end_of_epoch and every and (state.epoch % every == 0 or self.finished(state)):
                atomic_save(ckpt, self.out / f"checkpoint_{state.epoch:04d}.pt")
        barrier()


def prepare_out(out: Path, resume: str | None, overwrite: bool) -> Path | None:
    """Create ``out``; refuse to mix runs. Returns the checkpoint to resume from, if any."""
    out.mkdir(parents=True, exist_ok=True)
    existing = [f for f in RUN_FILES if (out / f).exists()] + [p.name for p in out.glob("checkpoint_*.pt")]
    if resume:
        ckpt = latest_checkpoint(out) if resume == "auto" else Path(resume)
        if resume != "auto" and not ckpt.is_file():
            raise CheckpointError(f"checkpoint not found: {ckpt}")
        if ckpt is None:
            log.info("no checkpoint in %s yet: starting a new run", out)
        return ckpt
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({existing[0]}); pass --resume auto to continue it or --overwrite to replace it"
        )
    if overwrite:
        for name in existing:
            (out / name).unlink(missing_ok=True)
    return None


def training_parts(
    cfg: Config, model: torch.nn.Module, device: torch.device,
    params: Callable[[torch.nn.Module], Any] = trainable_parameters,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """``model`` on ``device`` (channels_last if configured), the optimiser ``optim.optimizer`` names over
    ``params(model)`` (parameters, or groups with an ``lr_scale``) at the base lr, and the fp16 grad scaler."""
    model = model.to(device, memory_format=memory_format(cfg.train.channels_last))
    optimizer = OPTIMIZERS[cfg.optim.optimizer](params(model), base_lr(cfg), cfg.optim)
    return model, optimizer, torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16")


def augmentation_generator(cfg: Config) -> torch.Generator:
    """The generator of a run's random draws on the host (augmentation, shuffle BN, flips): seeded from
    ``train.seed``, the same on every rank, saved in checkpoints."""
    return torch.Generator().manual_seed(cfg.train.seed + 1)


def open_run(
    cfg: Config, out: Path, dinfo: DistInfo, dist_device: torch.device | None, task: Task,
    resume: str | None = None, overwrite: bool = False,
) -> tuple[Config, torch.device, dict[str, Any] | None, Path | None]:
    """What every run does first: pick the device and resolve the precision (on a copy of ``cfg``; what runs goes
    into config.yaml, the caller's config keeps its ``auto``), check that all ranks agree, check and clean the run
    folder, and load the checkpoint to resume (of the same ``task``, with the same structure). Returns (the
    config as it runs, the device, the checkpoint or None, its path). Seeds torch's global generator."""
    main = dinfo.is_main
    device = dist_device or pick_device(cfg.train.device)
    cfg = replace(cfg, train=replace(cfg.train, precision=resolve_precision(cfg.train.precision, device)))
    check_same_config(cfg.to_dict(), device)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs CUDA; use bf16 on the CPU")
    ckpt_path = prepare_out(out, resume, overwrite) if main else None
    barrier()
    if not main:  # rank 0 has checked and cleaned the folder; the others only look for the checkpoint
        ckpt_path = (latest_checkpoint(out) if resume == "auto" else Path(resume)) if resume else None
    ckpt = None
    if resume == "auto" and ckpt_path is not None:  # a damaged newest checkpoint: the newest that loads
        ckpt, ckpt_path = load_newest_intact(out, warn=main) or (None, None)
    elif ckpt_path is not None:
        ckpt = require_moco_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
    if ckpt is not None:
        kind = ckpt.get("task", "pretrain")
        if kind != task.name:
            raise CheckpointError(f"{ckpt_path} is a {kind} checkpoint; `moco {task.name}` resumes only its own")
        check_compatible(from_dict(ckpt["config"]), cfg, ckpt_path)
    torch.manual_seed(cfg.train.seed)
    return cfg, device, ckpt, ckpt_path


def resume_stream(run: Run, record: dict[str, Any] | None, state: TrainState) -> None:
    """Give a streaming source the positions its checkpoint recorded for this rank's readers. Resumed mid-epoch
    with other processes or workers than the checkpoint's, the readers' positions are computed as if no sample
    had failed in another layout, so the rest of that epoch is approximate: said in one line."""
    resume_at = getattr(run.source, "resume_at", None)
    if resume_at is None or record is None:
        return
    before = {"processes": record["processes"], "workers": record["workers"]}
    now = {"processes": run.dinfo.world_size, "workers": run.source.workers}
    if before == now:
        resume_at(record["positions"][run.dinfo.rank])
        return
    resume_at(None)
    if state.epoch_step == 0 or not run.main:
        return
    log.warning("this epoch's shards were read by %d process(es) x %d worker(s), now by %d x %d: the rest of "
                "epoch %d continues approximately (a few samples may come twice, others not at all); the "
                "epochs after it are exact again", before["processes"], before["workers"], now["processes"],
                now["workers"], state.epoch + 1)


def start_state(run: Run, parts: tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler],
                gen: torch.Generator, ckpt: dict[str, Any] | None, ckpt_path: Path | None) -> TrainState:
    """The training state of ``run`` from its (model, optimiser, scaler) and augmentation generator, restored
    from ``ckpt`` when resuming; rank 0 writes config.yaml."""
    state = TrainState(*parts, gen=gen)
    if ckpt is not None:
        assert ckpt_path is not None
        state.restore(ckpt, ckpt_path)
        if run.main:
            log.info("resumed from %s at epoch %d, step %d", ckpt_path, state.epoch + (state.epoch_step > 0),
                     state.step)
        resume_stream(run, ckpt.get("stream"), state)
    if run.main:
        (run.out / "config.yaml").write_text(dump_yaml(run.cfg))
    return state
