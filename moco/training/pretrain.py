"""``pretrain``: set a run up once, then train epoch by epoch until the end or a stop.

``pretrain(cfg, data, out)`` trains MoCo on an image folder and writes the run directory (config.yaml,
metrics.jsonl, tb/, checkpoints, curves.png). Stopping is safe at any time: SIGINT/SIGTERM finish the
current step and write ``checkpoint_last.pt``; ``resume="auto"`` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import copy
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moco.config import validate
from moco.core.distributed import cleanup, env_world_size, init_distributed
from moco.core.errors import ConfigError
from moco.core.run_lock import lock_run_folder
from moco.data.folder import check_data_root
from moco.methods import describe
from moco.models.generic import custom_name
from moco.schema import Config
from moco.training.checkpoint import TrainState
from moco.training.logging import MetricsLogger
from moco.training.loop import end_of_epoch, train_one_epoch
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
) -> RunResult:
    """Pretrain MoCo on the images under ``data``, writing the run to ``out``.

    Under ``torchrun`` every process runs this function: each takes its slice of every global batch
    (``optim.batch_size`` is the global batch), shuffle BN and the queue span all processes, and
    rank 0 alone writes files and runs the kNN monitor. ``knn=False`` turns the monitor off.
    ``max_steps`` stops after that many global steps (with a checkpoint), as an interruption would.
    ``backbone`` (any module mapping images to features or feature maps) is trained instead of the one
    ``cfg.model`` describes; the run records it as ``model.arch = custom:MODULE.CLASS``.
    """
    out = Path(out)
    if backbone is not None:
        cfg = copy.deepcopy(cfg)
        cfg.model.arch = custom_name(backbone)
    validate(cfg)
    world = env_world_size()
    if cfg.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size ({cfg.optim.batch_size}) is the global batch and must divide by the "
                          f"number of processes ({world})")
    dinfo, dist_device = init_distributed(cfg.train.device)
    lock = None
    try:
        check_data_root(Path(data).expanduser())  # before any work: a bad --data or --out is one line
        lock = lock_run_folder(out) if dinfo.is_main else None
        run, state = set_up(cfg, Path(data), out, dinfo, dist_device, resume=resume, overwrite=overwrite,
                            knn_train=knn_train, knn_test=knn_test, knn=knn, progress=progress and dinfo.is_main,
                            max_steps=max_steps, backbone=backbone)
        if state.epoch >= cfg.optim.epochs:
            if run.main:
                log.info("run already finished (%d/%d epochs)", state.epoch, cfg.optim.epochs)
            return _result(run, state)
        return train(run, state)
    finally:
        if lock is not None:
            lock.release()
        cleanup()


def _result(run: Run, state: TrainState) -> RunResult:
    return RunResult(run.out, state.epoch, state.step, state.epoch < run.cfg.optim.epochs, state.last)


def _log_start(run: Run) -> None:
    cfg, b = run.cfg, run.cfg.optim.batch_size
    procs = f" ({run.dinfo.world_size} processes x {b // run.dinfo.world_size})" if run.dinfo.enabled else ""
    log.info("pretraining %s (width %d) on %d images from %s: %d epochs x %d steps, batch %d%s, %s, T=%s, %s on %s",
             cfg.model.arch, cfg.model.width, run.n_images, run.train_dir, cfg.optim.epochs, run.steps_per_epoch, b,
             procs, describe(cfg, run.n_images), cfg.method.T, cfg.train.precision, run.device)


def train(run: Run, state: TrainState) -> RunResult:
    """Train from where ``state`` stands to ``optim.epochs``, or until a signal or ``max_steps``."""
    net: torch.nn.Module = state.model
    if run.dinfo.enabled:  # gradients of encoder_q are all-reduced; the queue is kept identical by gathering keys
        dev = run.device
        net = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False)
    run.metrics = MetricsLogger(run.out) if run.main else None
    run.stop.install()
    if run.main:
        _log_start(run)
    try:
        while state.epoch < run.cfg.optim.epochs:
            totals = train_one_epoch(run, state, net)
            if state.epoch_step < run.steps_per_epoch:  # stopped mid-epoch
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
