"""One step, one epoch, and what happens at the end of an epoch (kNN, record, checkpoint, plot).

These are the functions the training loop of :func:`moco.training.pretrain.pretrain` is made of; each
takes the :class:`~moco.training.run.Run` (fixed) and the :class:`~moco.training.checkpoint.TrainState`
(changed in place).
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
from moco.data.cache import DecodedImages
from moco.evaluation.knn import evaluate_knn, extract_feature_sets
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
    """One step: forward under autocast, backward, optimiser. Returns detached (loss, logits); no host sync."""
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
        raise TrainingError(
            f"loss became {loss} at epoch {state.epoch + 1}, step {state.step}; likely causes: learning rate "
            f"too high (optim.lr={c.optim.lr}), temperature too low (method.T={c.method.T}) or "
            f"low precision (train.precision={c.train.precision}). {kept_s}"
        )


def log_step(run: Run, state: TrainState, totals: EpochTotals, loss: torch.Tensor, logits: torch.Tensor,
             lr: float) -> dict[str, Any]:
    """A step record (loss and pretext accuracy averaged over ranks) to metrics.jsonl; stops on a non-finite loss."""
    loss_v = all_reduce_mean(loss).item()
    _check_finite(run, state, loss_v)
    acc_v = all_reduce_mean((logits.argmax(1) == 0).float().mean() * 100).item()
    now = time.perf_counter()
    rec = {
        "type": "step", "epoch": state.epoch + 1, "step": state.step,
        "epoch_float": round(state.epoch + state.epoch_step / run.steps_per_epoch, 4), "loss": loss_v,
        "pretext_acc1": acc_v, "lr": lr, "images_per_sec": totals.images_log / max(now - totals.t_log, 1e-9),
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
    time_knn_when_due(run, state, clock)
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
    if run.main:
        log.info("plan: %d steps (%.2f epochs) at %.2f steps/s to end %s from now, start-up and final kNN included",
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
    perm = torch.randperm(run.n_images, generator=torch.Generator().manual_seed(epoch_seed))
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
            g["lr"] = lr
        state.model.set_momentum(momentum_at(cfg, t))
        loss, logits = train_step(net, state.optimizer, state.scaler, im_q.contiguous(memory_format=fmt),
                                  im_k.contiguous(memory_format=fmt), state.gen, cfg.train.precision, run.device,
                                  index)
        totals.loss += loss
        totals.acc += (logits.argmax(1) == 0).float().mean() * 100
        totals.steps += 1
        totals.images_log += b
        state.step += 1
        state.epoch_step += 1
        if state.step % cfg.train.log_every == 0 or state.epoch_step == run.steps_per_epoch:
            rec = log_step(run, state, totals, loss, logits, lr)
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


def estimate_knn_seconds(run: Run, state: TrainState) -> float:
    """Seconds the final kNN will take: 1,024 test images timed (after a warming batch), scaled to the memory
    and test sets, plus the vote."""
    if run.knn_sets is None:
        return 0.0
    memory, test = run.knn_sets
    cfg = run.cfg

    def timed(n: int) -> float:
        sample = DecodedImages(test.array[:n], test.images, [])
        t0 = time.perf_counter()
        extract_feature_sets(state.model.encoder_q, sample, cfg.data.image_size, run.device,
                             tuple(cfg.train.knn_features), cfg.train.precision,
                             channels_last=cfg.train.channels_last, norm=cfg.data.normalize)
        return (time.perf_counter() - t0) / len(sample.array)

    timed(256)
    return timed(1024) * (len(memory.array) + len(test.array)) * 1.05 + 0.1


def time_knn_when_due(run: Run, state: TrainState, clock: BudgetClock) -> None:
    """Rank 0 of a budgeted run times the final kNN twice: at the first step (the warm-up), and again when the
    last fifth of the budget is left, in time to act on a slower machine (the same kNN took 55 to 68 s on one
    day here; ending late is worse than a few steps fewer). The larger timing counts; the seconds spent
    timing are left out of the clock's speed window."""
    if not run.main or len(run.knn_timings) == 2:
        return
    if run.knn_timings and clock.time_left() >= max(3 * final_cost(run), 0.2 * clock.budget_s):
        return
    t0 = time.perf_counter()
    run.knn_timings.append(estimate_knn_seconds(run, state))
    clock.leave_out(time.perf_counter() - t0)


def final_cost(run: Run) -> float:
    """Seconds a time-budgeted run needs after its last step: the end of an epoch as the last one took (record,
    checkpoint, plot), the final kNN (timed by :func:`time_knn_when_due`) with a tenth more for the machine's
    drift, and a small margin."""
    return run.end_seconds + 1.1 * max(run.knn_timings, default=0.0) + 0.25


def knn_due(run: Run, state: TrainState) -> bool:
    """The kNN monitor runs every ``train.knn_every`` epochs and at the end of the run, given labelled data."""
    every = run.cfg.train.knn_every
    return run.knn_sets is not None and ((every and state.epoch % every == 0) or run.finished(state))


def end_of_epoch(run: Run, state: TrainState, totals: EpochTotals) -> dict[str, Any]:
    """Close the epoch: its record (with kNN when due) to the history and metrics.jsonl, a checkpoint,
    a log line and curves.png. Returns the record."""
    cfg = run.cfg
    t_end = time.perf_counter()
    state.epoch += 1
    state.epoch_step = 0
    elapsed = t_end - totals.start
    n = max(totals.steps, 1)
    rec: dict[str, Any] = {
        "type": "epoch", "epoch": state.epoch, "step": state.step, "loss": all_reduce_mean(totals.loss / n).item(),
        "pretext_acc1": all_reduce_mean(totals.acc / n).item(), "lr": lr_at(cfg, run.schedule_epoch(state)),
        "images_per_sec": totals.steps * cfg.optim.batch_size / max(elapsed, 1e-9), "epoch_time": elapsed,
        "view_size": totals.side, "files_lost": _files_lost(run),
    }
    if state.plan is not None:
        rec.update({"steps_planned": run.total_steps(state), "schedule_epoch": round(run.schedule_epoch(state), 4)})
    if knn_due(run, state):
        assert run.knn_sets is not None
        t0 = time.perf_counter()
        res = evaluate_knn(state.model.encoder_q, *run.knn_sets, cfg.data.image_size, run.device,
                           cfg.train.precision, cfg.train.knn_k, cfg.train.knn_t, cfg.train.channels_last,
                           norm=cfg.data.normalize, features=tuple(cfg.train.knn_features))
        rec.update({"knn_top1": res["top1"], "knn_top5": res["top5"], "knn_features": res["features"]})
        for name in cfg.train.knn_features[1:]:
            rec.update({f"knn_{name}_top1": res[f"{name}_top1"], f"knn_{name}_top5": res[f"{name}_top5"]})
        rec["knn_time"] = time.perf_counter() - t0
    state.history.append(rec)
    if run.metrics is not None:
        run.metrics.write(rec)
    run.save(state, end_of_epoch=True)
    if run.main:
        knn_s = f"  knn top-1 {rec['knn_top1']:.2f}% ({rec['knn_features']})" if "knn_top1" in rec else ""
        knn_s += "".join(f", {rec[f'knn_{n}_top1']:.2f}% ({n})" for n in cfg.train.knn_features[1:] if knn_s)
        log.info("epoch %d/%s  loss %.4f  pretext acc %.1f%%  lr %.4f  %.0f img/s  %.0fs%s", state.epoch,
                 epochs_label(run, state), rec["loss"], rec["pretext_acc1"], rec["lr"], rec["images_per_sec"], elapsed,
                 knn_s)
        try:
            plot_curves(read_metrics(run.out / "metrics.jsonl"), run.out / "curves.png")
        except Exception as e:  # noqa: BLE001 - a plot must never stop training
            log.warning("could not draw curves.png: %s", e)
    run.end_seconds = time.perf_counter() - t_end - rec.get("knn_time", 0.0)  # a budget keeps this for the end
    return rec
