"""One step, one epoch, and what happens at the end of an epoch (evaluation, record, checkpoint, plot).

These are the functions the training loop of :func:`moco.training.pretrain.pretrain` is made of; each
takes the :class:`~moco.training.run.Run` (fixed) and the :class:`~moco.training.checkpoint.TrainState`
(changed in place). Pretraining and fine-tuning run through the same functions: the run's
:class:`~moco.training.tasks.Task` scores a step's logits and its ``monitor`` evaluates.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from moco.core.distributed import all_reduce_mean, broadcast_int
from moco.core.errors import TrainingError
from moco.core.precision import autocast, memory_format
from moco.schedules import lr_at, momentum_at, view_size_at
from moco.training.budget import BudgetClock
from moco.training.checkpoint import TrainState, latest_checkpoint
from moco.training.logging import plot_curves, read_metrics
from moco.training.run import Run

log = logging.getLogger("moco")


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, im_q: torch.Tensor,
    im_k: torch.Tensor, gen: torch.Generator, precision: str, device: torch.device, index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: forward under autocast, backward, optimiser. Returns detached (loss, logits); no host sync.
    ``im_q`` and ``im_k`` are the batch's two tensors: the two views, or (fine-tuning) the images and labels."""
    with autocast(device, precision):
        loss, logits = model(im_q, im_k, generator=gen, index=index)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


@dataclass
class EpochTotals:
    """Running sums of an epoch (on the device, read once at its end) and the clocks of its step records."""

    side: int  # the epoch's training-view side
    loss: torch.Tensor
    acc: torch.Tensor
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)
    t_log: float = 0.0
    images_log: int = 0

    def __post_init__(self) -> None:
        self.t_log = self.start


def _check_finite(run: Run, state: TrainState, loss: float) -> None:
    if not math.isfinite(loss):
        kept = latest_checkpoint(run.out)
        kept_s = f"The last good checkpoint is kept: {kept}" if kept else "No checkpoint yet."
        c = run.cfg
        raise TrainingError(f"loss became {loss} at epoch {state.epoch + 1}, step {state.step}; likely causes: "
                            f"{run.task.causes(c)}. {kept_s}")


def log_step(run: Run, state: TrainState, totals: EpochTotals, loss: torch.Tensor, acc: torch.Tensor,
             lr: float) -> dict[str, Any]:
    """A step record (loss and training accuracy averaged over ranks) to metrics.jsonl; stops on a non-finite
    loss."""
    loss_v = all_reduce_mean(loss).item()
    _check_finite(run, state, loss_v)
    acc_v = all_reduce_mean(acc).item()
    now = time.perf_counter()
    rec = {
        "type": "step", "epoch": state.epoch + 1, "step": state.step,
        "epoch_float": round(state.epoch + state.epoch_step / run.steps_per_epoch, 4), "loss": loss_v,
        run.task.acc_key: acc_v, "lr": lr, "images_per_sec": totals.images_log / max(now - totals.t_log, 1e-9),
    }
    if run.metrics is not None:
        run.metrics.write(rec)
    totals.t_log, totals.images_log = now, 0
    return rec


def epochs_label(run: Run, state: TrainState) -> str:
    """``7/10``, or under a time budget the planned number of epochs as it stands: ``7/12.4 planned``."""
    if state.plan is None:
        return f"{run.cfg.optim.epochs}"
    return f"{run.total_steps(state) / run.steps_per_epoch:.1f} planned"


def _progress_bar(run: Run, state: TrainState):  # noqa: ANN202 - tqdm or None
    if not run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=min(run.steps_per_epoch, state.epoch_step + run.total_steps(state) - state.step),
                initial=state.epoch_step, desc=f"epoch {state.epoch + 1}/{epochs_label(run, state)}", unit="step",
                leave=False, dynamic_ncols=True, disable=None)


def budget_check(run: Run, state: TrainState, bar) -> None:  # noqa: ANN001 - tqdm or None
    """Under a time budget: after a step, re-plan the run's length when its measured speed says so (rank 0
    decides, every rank follows), with a record in metrics.jsonl and a log line."""
    clock = run.clock
    if clock is None or state.plan is None:
        return
    time_eval_when_due(run, state, clock)
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
    if run.main and run.plan_log.show(fit, state.epoch):
        log.info("plan: %d steps (%.2f epochs) at %.2f steps/s to end %s from now, start-up and final evaluation "
                 "included",
                 fit, fit / spe, clock.rate, _mmss(clock.time_left()))
    if bar is not None:
        bar.total = min(spe, state.epoch_step + fit - state.step)
        bar.set_description(f"epoch {state.epoch + 1}/{epochs_label(run, state)}")
        bar.refresh()


def _mmss(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def train_one_epoch(run: Run, state: TrainState, net: torch.nn.Module) -> EpochTotals:
    """The steps of epoch ``state.epoch`` from ``state.epoch_step`` on, until its end or a stop.

    ``net`` is the model as it steps (wrapped in DDP under torchrun). Each step sets the scheduled lr and
    key-encoder momentum, steps, and every ``train.log_every`` steps writes a record.
    """
    cfg, b = run.cfg, run.cfg.optim.batch_size
    epoch_seed = cfg.train.seed * 100_003 + state.epoch
    perm = run.epoch_order(epoch_seed)
    sched = int(run.schedule_epoch(state))  # the data's epoch, or a time budget's schedule epoch
    side = view_size_at(cfg.data, sched)
    if run.main and cfg.data.ramp_size and (sched == 0 or view_size_at(cfg.data, sched - 1) != side):
        log.info("epoch %d: training views of %d px (progressive resizing)", state.epoch + 1, side)
    batches = run.source.epoch(perm, state.epoch_step, side, epoch_seed)
    fmt = memory_format(cfg.train.channels_last)
    state.model.train()
    totals = EpochTotals(side, torch.zeros((), device=run.device), torch.zeros((), device=run.device))
    bar = _progress_bar(run, state)
    for im_q, im_k, index in batches:
        t = run.schedule_epoch(state)
        lr = lr_at(cfg, t)
        for g in state.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # fine-tuning's backbone trains at a fraction of the lr
        state.model.set_momentum(momentum_at(cfg, t))
        im_q, im_k = (x.contiguous(memory_format=fmt) if isinstance(x, torch.Tensor) and x.dim() == 4 else x
                      for x in (im_q, im_k))  # detection's batches are lists (images of their own sizes)
        loss, logits = train_step(net, state.optimizer, state.scaler, im_q, im_k, state.gen, cfg.train.precision,
                                  run.device, index)
        acc = run.task.hits(logits, im_k).float().mean() * 100
        totals.loss += loss
        totals.acc += acc
        totals.steps += 1
        totals.images_log += b
        state.step += 1
        state.epoch_step += 1
        if state.step % cfg.train.log_every == 0 or state.epoch_step == run.steps_per_epoch:
            rec = log_step(run, state, totals, loss, acc, lr)
            if bar is not None:
                left = {"left": _mmss(run.clock.time_left())} if run.clock is not None else {}
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.4f}", ips=f"{rec['images_per_sec']:.0f}", **left)
        if bar is not None:
            bar.update(1)
        budget_check(run, state, bar)
        if run.should_stop(state) or (state.plan is not None and run.finished(state)):
            break
    if bar is not None:
        bar.close()
    return totals


def _files_lost(run: Run) -> int:
    """Files found unreadable while training so far (deleted, truncated or locked since the scan), all ranks."""
    n = torch.tensor(float(len(run.source.lost)), device=run.device)
    return round(all_reduce_mean(n).item() * run.dinfo.world_size)


def time_eval_when_due(run: Run, state: TrainState, clock: BudgetClock) -> None:
    """Rank 0 of a budgeted run times the final evaluation (``run.monitor``) twice: at the first step (the
    warm-up), and again when the last fifth of the budget is left, in time to act on a slower machine (the same
    kNN took 55 to 68 s on one day here; ending late is worse than a few steps fewer). The larger timing counts
    (the later one for a detector, :func:`final_cost`); the seconds spent timing are left out of the clock's
    speed window."""
    if not run.main or run.monitor is None or len(run.eval_timings) == 2:
        return
    if run.eval_timings and clock.time_left() >= max(3 * final_cost(run), 0.2 * clock.budget_s):
        return
    t0 = time.perf_counter()
    run.eval_timings.append(run.monitor.estimate_seconds(state.model))
    clock.leave_out(time.perf_counter() - t0)


def final_cost(run: Run) -> float:
    """Seconds a time-budgeted run needs after its last step: the end of an epoch as the last one took (record,
    checkpoint, plot), the final evaluation (timed by :func:`time_eval_when_due`; the latest timing when the
    monitor's cost follows the model) with a tenth more for the machine's drift, and a small margin."""
    timings = run.eval_timings
    if getattr(run.monitor, "cost_follows_model", False):
        timings = timings[-1:]
    return run.end_seconds + 1.1 * max(timings, default=0.0) + 0.25


def eval_due(run: Run, state: TrainState) -> bool:
    """The monitor runs every ``train.knn_every`` epochs and at the end of the run, when there is one."""
    every = run.cfg.train.knn_every
    return run.monitor is not None and ((every and state.epoch % every == 0) or run.finished(state))


def end_of_epoch(run: Run, state: TrainState, totals: EpochTotals) -> dict[str, Any]:
    """Close the epoch: its record (with the monitor's evaluation when due) to the history and metrics.jsonl, a
    checkpoint, a log line and curves.png. Returns the record."""
    cfg = run.cfg
    t_end = time.perf_counter()
    state.epoch += 1
    state.epoch_step = 0
    elapsed = t_end - totals.start
    n = max(totals.steps, 1)
    rec: dict[str, Any] = {
        "type": "epoch", "epoch": state.epoch, "step": state.step, "loss": all_reduce_mean(totals.loss / n).item(),
        run.task.acc_key: all_reduce_mean(totals.acc / n).item(), "lr": lr_at(cfg, run.schedule_epoch(state)),
        "images_per_sec": totals.steps * cfg.optim.batch_size / max(elapsed, 1e-9), "epoch_time": elapsed,
        "view_size": totals.side, "files_lost": _files_lost(run),
    }
    if state.plan is not None:
        rec.update({"steps_planned": run.total_steps(state), "schedule_epoch": round(run.schedule_epoch(state), 4)})
    evaluated = eval_due(run, state)
    if evaluated:
        assert run.monitor is not None
        t0 = time.perf_counter()
        rec.update(run.monitor.evaluate(state.model))
        rec["eval_time"] = time.perf_counter() - t0
    state.history.append(rec)
    if run.metrics is not None:
        run.metrics.write(rec)
    run.save(state, end_of_epoch=True)
    if run.main:
        eval_s = run.monitor.describe(rec) if evaluated and run.monitor is not None else ""
        log.info("epoch %d/%s  loss %.4f  %s %.1f%%  lr %.4f  %.0f img/s  %.0fs%s", state.epoch,
                 epochs_label(run, state), rec["loss"], run.task.acc_label, rec[run.task.acc_key], rec["lr"],
                 rec["images_per_sec"], elapsed, eval_s)
        try:
            plot_curves(read_metrics(run.out / "metrics.jsonl"), run.out / "curves.png")
        except Exception as e:  # noqa: BLE001 - a plot must never stop training
            log.warning("could not draw curves.png: %s", e)
    run.end_seconds = time.perf_counter() - t_end - rec.get("eval_time", 0.0)  # a budget keeps this for the end
    return rec
