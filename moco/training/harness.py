"""The job harness of every command that trains: start the processes, lock the run folder, set the run up
(the task's part), plan its time budget, train to the end, collect the result, and clean up whatever
happened. A task supplies its ``set_up``, its start line and its ``finish`` (results.json, the returned
result); the harness is the same for all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from moco.core.distributed import DistInfo, check_global_batch, cleanup, init_distributed
from moco.core.errors import CheckpointError, ConfigError
from moco.core.run_lock import lock_run_folder
from moco.schema import Config
from moco.training.budget import Plan, TimeBudget
from moco.training.checkpoint import TrainState, latest_checkpoint, load_checkpoint, require_moco_checkpoint
from moco.training.loop import train
from moco.training.run import Run
from moco.training.trackers import open_trackers, require_trackers, result_record

log = logging.getLogger("moco")
R = TypeVar("R")
SetUp = Callable[[DistInfo, torch.device | None], tuple[Run, TrainState]]


def run_job(
    cfg: Config, out: Path, set_up: SetUp, started: float, announce: Callable[[Run, TrainState], None],
    finish: Callable[[Run, TrainState, bool], R], replay_plan: str | Path | None = None,
) -> R:
    """Run a training job: check that ``optim.batch_size`` divides among the processes, start them (under
    torchrun), lock ``out`` (rank 0), ``set_up`` the run (the task's), plan its time budget (counted from
    ``started``, a :func:`time.perf_counter` time; or follow ``replay_plan``), ``announce`` it on rank 0 and
    train to the end or a stop. Returns ``finish(run, state, stopped)``; the lock and the process group are
    released whatever happens."""
    check_global_batch(cfg.optim.batch_size)
    require_trackers(cfg.train.loggers)
    dinfo, dist_device = init_distributed(cfg.train.device)
    lock, run, stopped = None, None, True
    try:
        lock = lock_run_folder(out) if dinfo.is_main else None
        run, state = set_up(dinfo, dist_device)
        set_up_budget(run, state, replay_plan, started)
        if run.main:
            run.trackers = open_trackers(cfg.train.loggers, cfg.to_dict(), out, run.task.name)
        if run.finished(state):
            if run.main:
                log.info("run already finished (epoch %d, step %d)", state.epoch, state.step)
        else:
            if run.main:
                announce(run, state)
            train(run, state)
        stopped = not run.finished(state)
        result = finish(run, state, stopped)
        for t in run.trackers:
            t.results(result_record(result), state.step)
        return result
    finally:
        for t in run.trackers if run is not None else []:
            t.close(stopped)
        if lock is not None:
            lock.release()
        cleanup()


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
    monitor = run.monitor  # rank 0's: the other ranks have none to time
    timed = None if monitor is None else lambda: monitor.estimate_seconds(state.model)
    run.budget = TimeBudget.open(budget, state.budget_spent, started, timed,
                                 getattr(monitor, "cost_follows_model", False))
    if run.budget.clock.time_left() <= 0:
        state.plan.replan(state.step, state.step)
        log.warning("the time budget (%.0f s) is used up: finishing the run now", budget)


def run_length(run: Run, state: TrainState) -> str:
    """How long the run trains, for its start line: epochs x steps, batch and processes."""
    cfg, b = run.cfg, run.cfg.optim.batch_size
    procs = f" ({run.dinfo.world_size} processes x {b // run.dinfo.world_size})" if run.dinfo.enabled else ""
    if run.budget is not None:
        length = (f"a time budget of {cfg.optim.time_budget:.0f} s ({run.budget.clock.time_left():.0f} s left; the "
                  "plan follows the measured speed)")
    elif state.plan is not None:
        length = f"a recorded plan of {state.plan.total_steps} steps"
    else:
        length = f"{cfg.optim.epochs} epochs"
    return f"{length} x {run.steps_per_epoch} steps, batch {b}{procs}"
