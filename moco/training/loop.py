"""The trainer: one step, one epoch, the end of an epoch (evaluation, record, checkpoint, plot), and
:func:`train`, which runs them to the end of a run or a stop.

Each function takes the :class:`~moco.training.run.Run` (fixed) and the
:class:`~moco.training.checkpoint.TrainState` (changed in place). The run's
:class:`~moco.training.task.Task` supplies the model's step and names its statistics; the run's monitor
evaluates. Nothing here knows what a batch holds.
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from moco.core.distributed import all_reduce_mean, broadcast_int
from moco.core.errors import TrainingError
from moco.core.precision import autocast
from moco.schedules import lr_at, view_size_at
from moco.training.checkpoint import TrainState, latest_checkpoint
from moco.training.logging import MetricsLogger, plot_curves, read_metrics
from moco.training.run import Run
from moco.training.task import Stats, StepModule

log = logging.getLogger("moco")


def train_step(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: Any,
    gen: torch.Generator, precision: str, device: torch.device,
) -> tuple[torch.Tensor, Stats]:
    """One step: the task's forward (``net``: a :class:`~moco.training.task.StepModule`, DDP-wrapped under
    torchrun) under autocast, backward, optimiser. Returns the detached loss and the step's statistics; no host
    sync."""
    with autocast(device, precision):
        loss, stats = net(batch, gen)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), stats


def seconds_per_call(fn: Callable[[], Any], n: int) -> float:
    """Seconds per call of ``fn`` over ``n`` calls after one warm-up call (``fn`` syncs the device itself, as by
    reading its loss with ``.item()``)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


@dataclass
class EpochTotals:
    """Running sums of an epoch (on the device, read once at its end) and the clocks of its step records."""

    side: int  # the epoch's training-view side
    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)
    aside: float = 0.0  # seconds within the epoch not spent training (the budget timing its final evaluation)
    t_log: float = 0.0
    images_log: int = 0

    def __post_init__(self) -> None:
        self.t_log = self.start

    def add(self, loss: torch.Tensor, stats: Stats) -> None:
        self.loss += loss
        for k, v in stats.items():
            self.stats[k] += v
        self.steps += 1


def _check_finite(run: Run, state: TrainState, loss: float) -> None:
    if not math.isfinite(loss):
        kept = latest_checkpoint(run.out)
        kept_s = f"The last good checkpoint is kept: {kept}" if kept else "No checkpoint yet."
        raise TrainingError(f"loss became {loss} at epoch {state.epoch + 1}, step {state.step}; likely causes: "
                            f"{run.task.causes(run.cfg)}. {kept_s}")


def log_step(run: Run, state: TrainState, totals: EpochTotals, loss: torch.Tensor, stats: Stats,
             lr: float) -> dict[str, Any]:
    """A step record (loss and the step's statistics averaged over ranks) to metrics.jsonl; stops on a
    non-finite loss."""
    loss_v = all_reduce_mean(loss).item()
    _check_finite(run, state, loss_v)
    means = {k: all_reduce_mean(v).item() for k, v in stats.items()}
    now = time.perf_counter()
    rec = {
        "type": "step", "epoch": state.epoch + 1, "step": state.step,
        "epoch_float": round(state.epoch + state.epoch_step / run.steps_per_epoch, 4), "loss": loss_v,
        **means, "lr": lr, "images_per_sec": totals.images_log / max(now - totals.t_log, 1e-9),
    }
    if run.metrics is not None:
        run.metrics.write(rec)
        check_health(run, rec)
    totals.t_log, totals.images_log = now, 0
    return rec


def check_health(run: Run, rec: dict[str, Any]) -> None:
    """The task's health monitor reads ``rec``; each new sign of trouble is logged once and recorded."""
    if run.health is None or run.metrics is None:
        return
    for sign in run.health.observe(rec):
        run.metrics.write({"type": "health", "step": sign.step, "epoch": rec.get("epoch"), "sign": sign.name,
                           "message": sign.message})
        log.warning("health: %s", sign.message)


def open_health(run: Run, state: TrainState) -> Any:
    """Rank 0's health monitor, having read the records of the run so far (a resumed run shows no sign twice)."""
    if not run.main or run.task.health is None:
        return None
    monitor = run.task.health(run.cfg, run.steps_per_epoch, state.model, run.dinfo.world_size)
    for rec in read_metrics(run.out / "metrics.jsonl"):
        if int(rec.get("step", 0)) <= state.step:
            monitor.observe(rec)
    return monitor


def epochs_label(run: Run, state: TrainState) -> str:
    """``7/10``, or under a time budget the planned number of epochs as it stands: ``7/12.4 planned``."""
    if state.plan is None:
        return f"{run.cfg.optim.epochs}"
    return f"{run.total_steps(state) / run.steps_per_epoch:.1f} planned"


def _progress_bar(run: Run, state: TrainState) -> Any:
    """A tqdm bar over the epoch's steps, or None without progress."""
    if not run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=min(run.steps_per_epoch, state.epoch_step + run.total_steps(state) - state.step),
                initial=state.epoch_step, desc=f"epoch {state.epoch + 1}/{epochs_label(run, state)}", unit="step",
                leave=False, dynamic_ncols=True, disable=None)


def budget_check(run: Run, state: TrainState, totals: EpochTotals, bar: Any) -> None:
    """Under a time budget: after a step, re-plan the run's length when its measured speed says so (rank 0
    decides, every rank follows), with a record in metrics.jsonl and a log line. The seconds spent timing the
    final evaluation are set aside from the epoch's training time."""
    budget = run.budget
    if budget is None or state.plan is None:
        return
    clock = budget.clock
    if run.main:
        aside = budget.time_eval()
        totals.aside += aside
        totals.t_log += aside
    if not clock.due(state.step):
        return
    fit = clock.fit(state.step, run.total_steps(state)) if run.main else None
    fit = broadcast_int(fit, run.device)
    if fit is None or not state.plan.replan(state.step, fit):
        return
    spe = run.steps_per_epoch
    rec = {"type": "plan", "step": state.step, "total_steps": fit, "epochs_planned": round(fit / spe, 3),
           "schedule_epoch": round(state.plan.schedule_epoch(state.step), 4), "steps_per_sec": clock.rate,
           "time_left": clock.time_left(), "spent_s": clock.spent, "reserve_s": clock.reserve()}
    if run.metrics is not None:
        run.metrics.write(rec)
    if run.main and budget.plan_log.show(fit, state.epoch):
        log.info("plan: %d steps (%.2f epochs) at %.2f steps/s to end %s from now, start-up and final evaluation "
                 "included", fit, fit / spe, clock.rate, _mmss(clock.time_left()))
    if bar is not None:
        bar.total = min(spe, state.epoch_step + fit - state.step)
        bar.set_description(f"epoch {state.epoch + 1}/{epochs_label(run, state)}")
        bar.refresh()


def _mmss(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _show_step(run: Run, bar: Any, rec: dict[str, Any], lr: float) -> None:
    if bar is not None:
        left = {"left": _mmss(run.budget.clock.time_left())} if run.budget is not None else {}
        bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.4f}", ips=f"{rec['images_per_sec']:.0f}", **left)


def epoch_batches(run: Run, state: TrainState) -> tuple[int, Any]:
    """(the training-view side, the batches) of epoch ``state.epoch`` from ``state.epoch_step`` on. The view
    side follows the schedule epoch (progressive resizing), announced when it changes."""
    cfg = run.cfg
    epoch_seed = cfg.train.seed * 100_003 + state.epoch
    perm = run.epoch_order(epoch_seed)
    sched = int(run.schedule_epoch(state))  # the data's epoch, or a time budget's schedule epoch
    side = view_size_at(cfg.data, sched)
    if run.main and cfg.data.ramp_size and (sched == 0 or view_size_at(cfg.data, sched - 1) != side):
        log.info("epoch %d: training views of %d px (progressive resizing)", state.epoch + 1, side)
    return side, run.source.epoch(perm, state.epoch_step, side, epoch_seed)


def train_one_epoch(run: Run, state: TrainState, net: torch.nn.Module) -> EpochTotals:
    """The steps of epoch ``state.epoch`` from ``state.epoch_step`` on, until its end or a stop.

    ``net`` is the task's step on the model (DDP-wrapped under torchrun). Each step sets the scheduled lr, runs
    the task's ``before_step``, steps, and every ``train.log_every`` steps writes a record.
    """
    cfg, task = run.cfg, run.task
    side, batches = epoch_batches(run, state)
    state.model.train()
    zero = torch.zeros((), device=run.device)
    totals = EpochTotals(side, zero.clone(), {k: zero.clone() for k in task.stats})
    bar = _progress_bar(run, state)
    for batch in batches:
        t = run.schedule_epoch(state)
        lr = lr_at(cfg, t)
        for g in state.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # a transfer's backbone trains at a fraction of the lr
        if task.before_step is not None:
            task.before_step(state.model, cfg, t)
        loss, stats = train_step(net, state.optimizer, state.scaler, batch, state.gen, cfg.train.precision,
                                 run.device)
        totals.add(loss, stats)
        totals.images_log += cfg.optim.batch_size
        state.step += 1
        state.epoch_step += 1
        if state.step % cfg.train.log_every == 0 or state.epoch_step == run.steps_per_epoch:
            _show_step(run, bar, log_step(run, state, totals, loss, stats, lr), lr)
        if bar is not None:
            bar.update(1)
        budget_check(run, state, totals, bar)
        if run.should_stop(state) or (state.plan is not None and run.finished(state)):
            break
    if bar is not None:
        bar.close()
    return totals


def _files_lost(run: Run) -> int:
    """Files found unreadable while training so far (deleted, truncated or locked since the scan), all ranks."""
    n = torch.tensor(float(len(run.source.lost)), device=run.device)
    return round(all_reduce_mean(n).item() * run.dinfo.world_size)


def eval_due(run: Run, state: TrainState) -> bool:
    """The monitor runs every ``train.eval_every`` epochs and at the end of the run, when there is one."""
    every = run.cfg.train.eval_every
    return run.monitor is not None and ((every and state.epoch % every == 0) or run.finished(state))


def epoch_record(run: Run, state: TrainState, totals: EpochTotals, elapsed: float) -> dict[str, Any]:
    """The epoch's record: mean loss and statistics over its steps and ranks, lr, speed, view side, files lost
    (and under a plan, the planned steps and the schedule epoch)."""
    cfg, n = run.cfg, max(totals.steps, 1)
    rec: dict[str, Any] = {
        "type": "epoch", "epoch": state.epoch, "step": state.step, "loss": all_reduce_mean(totals.loss / n).item(),
        **{k: all_reduce_mean(v / n).item() for k, v in totals.stats.items()},
        "lr": lr_at(cfg, run.schedule_epoch(state)),
        "images_per_sec": totals.steps * cfg.optim.batch_size / max(elapsed, 1e-9), "epoch_time": elapsed,
        "view_size": totals.side, "files_lost": _files_lost(run),
    }
    if state.plan is not None:
        rec.update({"steps_planned": run.total_steps(state), "schedule_epoch": round(run.schedule_epoch(state), 4)})
    return rec


def _log_epoch(run: Run, state: TrainState, rec: dict[str, Any], evaluated: bool) -> None:
    """The epoch's log line (with the monitor's fragment when it evaluated) and curves.png, on rank 0."""
    eval_s = run.monitor.describe(rec) if evaluated and run.monitor is not None else ""
    stats = "".join(f"  {label} {rec[k]:.1f}%" for k, label in run.task.stats.items())
    log.info("epoch %d/%s  loss %.4f%s  lr %.4f  %.0f img/s  %.0fs%s", state.epoch, epochs_label(run, state),
             rec["loss"], stats, rec["lr"], rec["images_per_sec"], rec["epoch_time"], eval_s)
    try:
        plot_curves(read_metrics(run.out / "metrics.jsonl"), run.out / "curves.png")
    except Exception as e:  # noqa: BLE001 - a plot must never stop training
        log.warning("could not draw curves.png: %s", e)


def end_of_epoch(run: Run, state: TrainState, totals: EpochTotals) -> dict[str, Any]:
    """Close the epoch: its record (with the monitor's evaluation when due) to the history and metrics.jsonl, a
    checkpoint, a log line and curves.png. Returns the record."""
    t_end = time.perf_counter()
    state.epoch += 1
    state.epoch_step = 0
    rec = epoch_record(run, state, totals, t_end - totals.start - totals.aside)
    evaluated = eval_due(run, state)
    if evaluated:
        assert run.monitor is not None
        t0 = time.perf_counter()
        rec.update(run.monitor.evaluate(state.model))
        rec["eval_time"] = time.perf_counter() - t0
    state.history.append(rec)
    if run.metrics is not None:
        run.metrics.write(rec)
        check_health(run, rec)
    run.save(state, end_of_epoch=True)
    if run.main:
        _log_epoch(run, state, rec, evaluated)
    if run.budget is not None:  # what the end of an epoch costs, kept for the last one
        run.budget.end_seconds = time.perf_counter() - t_end - rec.get("eval_time", 0.0)
    return rec


# BatchNorm statistics stay each process's own (per-device BN, as the paper's shuffle BN needs; SyncBN layers
# sync themselves) and a queue is kept equal by gathering keys: DDP must not broadcast buffers before each
# forward. torch 2.13 renamed the switch (``broadcast_buffers`` warns from then on); the new one still syncs
# once at start, where every process holds the same buffers (one seed, or one checkpoint).
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


def stepper(run: Run, model: torch.nn.Module) -> torch.nn.Module:
    """The module each step calls: the task's step on ``model``, DDP-wrapped under torchrun (the gradients are
    all-reduced)."""
    net: torch.nn.Module = StepModule(model, run.task.step)
    if run.dinfo.enabled:
        dev = run.device
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None, **NO_BUFFER_SYNC,
            find_unused_parameters=run.task.unused_parameters)
    return net


def train(run: Run, state: TrainState) -> bool:
    """Train from where ``state`` stands to the end (``optim.epochs``, or a time budget's plan), or until a
    signal or ``max_steps``, with a checkpoint either way. Returns whether it stopped before the end."""
    net = stepper(run, state.model)
    run.metrics = MetricsLogger(run.out, trackers=run.trackers) if run.main else None
    run.health = open_health(run, state)
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
                return True
            end_of_epoch(run, state, totals)
            if run.should_stop(state):
                if run.main:
                    log.warning("stopped after epoch %d; continue with --resume auto", state.epoch)
                return not run.finished(state)
    finally:
        run.stop.restore()
        if run.metrics is not None:
            run.metrics.close()
    return False


def _why(run: Run, state: TrainState) -> str:
    if run.stop.signum:
        return signal.Signals(run.stop.signum).name
    return f"max_steps={run.max_steps}" if run.max_steps is not None and state.step >= run.max_steps else "another rank"
