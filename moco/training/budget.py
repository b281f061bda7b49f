"""Training for a time budget (``optim.time_budget``): the run plans its own length from its measured speed,
so that training, the final checkpoint and the final kNN end at the deadline.

The plan is a map from the global step to the *schedule epoch*, the (fractional) epoch at which every
schedule is read (lr, key-encoder momentum, view size), running from 0 to ``optim.epochs`` over the
planned steps. So the whole recipe (cosine or step decay, warm-up, v3's momentum, progressive resizing)
is fitted to the planned length, and the lr reaches its end value at the deadline: *budgeted training*
(Li, Yumer and Ramanan, ICLR 2020). A re-plan at step ``s`` keeps the map continuous: the schedule epoch
reached at ``s`` is spread over the new number of remaining steps, so the lr never jumps; it only decays
faster or slower from there (the cosine re-fitted to the steps that remain).

A plan is a list of events ``(step, total steps)``: from ``step`` on, the run ends at ``total steps``. It
is stored in the checkpoint and, one record per event, in metrics.jsonl. :class:`Plan` alone (no clock)
replays a budgeted run bit for bit on any machine (``--replay-plan``).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moco.core.errors import ConfigError

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h`` or ``1h30m``; a :class:`ConfigError` otherwise."""
    s = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|s|)", s)
    if not s or "".join(a + b for a, b in parts) != s or (len(parts) > 1 and any(u == "" for _, u in parts)):
        raise ConfigError(f"--time-budget expects a duration such as 90s, 15m, 2h or 1h30m, got {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


JOB_START_ENV = "MOCO_JOB_START"  # the job's start (Unix time) that `moco pretrain --nproc` hands its workers


def process_start() -> float:
    """When this job started, on the :func:`time.perf_counter` clock: ``$MOCO_JOB_START`` (set by the
    ``--nproc`` launcher for its workers), else this process's start (Linux; elsewhere: now). The command
    counts its budget from there, so the interpreter's and torch's start-up are inside the budget too."""
    now = time.perf_counter()
    if os.environ.get(JOB_START_ENV):
        try:
            return now - max(0.0, time.time() - float(os.environ[JOB_START_ENV]))
        except ValueError:
            pass
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        uptime = float(open("/proc/uptime").read().split()[0])
        return now - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return now


@dataclass
class Plan:
    """The planned length of a budgeted run: events ``(step, total_steps)``, each in force from its step on."""

    epochs: float  # the schedules' length in schedule epochs (optim.epochs)
    events: list[tuple[int, int]] = field(default_factory=list)

    def total_at(self, step: int) -> int:
        """The planned total number of steps in force at ``step``."""
        total = self.events[0][1]
        for s, t in self.events[1:]:
            if s > step:
                break
            total = t
        return total

    @property
    def total_steps(self) -> int:
        return self.events[-1][1]

    def schedule_epoch(self, step: int) -> float:
        """The epoch at which the schedules are read at global ``step``: linear from (event step, schedule
        epoch reached there) to (its total, ``epochs``), continuous across events."""
        v, s0, total = 0.0, 0, self.events[0][1]
        for s, t in self.events[1:]:
            if s > step:
                break
            v += (self.epochs - v) * (s - s0) / max(total - s0, 1)
            s0, total = s, t
        return min(self.epochs, v + (self.epochs - v) * (step - s0) / max(total - s0, 1))

    def replan(self, step: int, total: int) -> bool:
        """From ``step`` on, end at ``total`` (at least ``step``); False if that is the plan already."""
        total = max(total, step)
        if total == self.total_at(step):
            return False
        self.events = [e for e in self.events if e[0] < step] + [(step, total)]
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "events": [list(e) for e in self.events]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(float(d["epochs"]), [(int(s), int(t)) for s, t in d["events"]])


class BudgetClock:
    """Measures the run's speed and re-plans so that training ends ``reserve()`` seconds before the deadline.

    ``due(step)`` is called after every step; when it says so, ``fit`` gives the new total if the steps that fit
    the time left differ from the plan's remaining steps by more than ``tolerance``. The speed is measured
    over the last ``window`` steps, so a drift shows within a window. ``started`` is when the job began (its
    start-up counts against the budget).
    """

    def __init__(self, budget_s: float, spent_s: float, reserve: Callable[[], float], started: float | None = None,
                 warmup: int = 5, every: int = 5, window: int = 40, tolerance: float = 0.03) -> None:
        self.budget_s, self.spent_before = budget_s, spent_s
        self.reserve, self.warmup, self.every, self.tolerance = reserve, warmup, every, tolerance
        self.start = time.perf_counter() if started is None else started
        self.deadline = self.start + budget_s - spent_s
        self.times: deque[tuple[int, float]] = deque(maxlen=window + 1)
        self.first_step: int | None = None
        self.rate = 0.0  # steps per second, over the window

    @property
    def spent(self) -> float:
        """Seconds of the budget used so far, earlier sessions included."""
        return self.spent_before + time.perf_counter() - self.start

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def due(self, step: int) -> bool:
        """Note that ``step`` is done; True when the plan should be checked now: after ``warmup`` steps (start-up,
        first allocations and compiled steps left out of the speed), then every ``every`` steps. The same steps
        on every process."""
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step = step
        done = step - self.first_step - self.warmup
        if done <= 0:
            self.times.clear()  # the speed window starts after the warm-up
        self.times.append((step, now))
        return done > 0 and done % self.every == 0

    def leave_out(self, seconds: float) -> None:
        """Leave ``seconds`` of work that is not training (timing the final kNN) out of the speed window."""
        self.times = deque(((s, t + seconds) for s, t in self.times), maxlen=self.times.maxlen)

    def fit(self, step: int, planned_total: int) -> int | None:
        """The total steps that fit the time left at the speed of the last window, when the plan should change
        (always at the first check); else None.

        With hysteresis, so that a speed that drifts ±15% does not make the plan oscillate: a plan that no longer
        fits (the run would end late) is shortened as soon as it is off by ``tolerance`` of the remaining steps;
        one that could be longer is lengthened only when it gains ``tolerance`` of the remaining steps and 1% of
        the whole run (ending a few seconds early costs little; ending late breaks the budget)."""
        (s0, t0), (s1, t1) = self.times[0], self.times[-1]
        self.rate = (s1 - s0) / max(t1 - t0, 1e-9)
        fit = step + max(0, math.floor((self.deadline - t1 - self.reserve()) * self.rate))
        left_now, left_new = planned_total - step, fit - step
        first = step - (self.first_step or 0) - self.warmup == self.every
        off = max(1.0, self.tolerance * max(left_now, 1))
        if first or left_new < left_now - off or left_new > left_now + max(off, 0.01 * planned_total):
            return fit
        return None


@dataclass
class PlanLog:
    """Which re-plans the terminal shows: the first, then one when the planned end has moved by more than
    ``moved`` of the run since the last one shown, at most one an epoch (metrics.jsonl keeps every re-plan)."""

    moved: float = 0.03
    shown_total: int | None = None
    shown_epoch: int = -1

    def show(self, total: int, epoch: int) -> bool:
        if self.shown_total is not None and (epoch == self.shown_epoch
                                             or abs(total - self.shown_total) <= self.moved * self.shown_total):
            return False
        self.shown_total, self.shown_epoch = total, epoch
        return True


@dataclass
class TimeBudget:
    """A budgeted run's clock and what it must keep for the end: the final end of epoch (``end_seconds``, as
    the last one took without its evaluation) and the final evaluation, timed twice by :meth:`time_eval` (the
    larger timing counts, or the latest when the monitor's cost follows the model)."""

    clock: BudgetClock
    evaluate_seconds: Callable[[], float] | None  # times the final evaluation (rank 0's monitor), None without one
    cost_follows_model: bool = False
    plan_log: PlanLog = field(default_factory=PlanLog)
    end_seconds: float = 1.0
    eval_timings: list[float] = field(default_factory=list)

    @classmethod
    def open(cls, budget_s: float, spent_s: float, started: float, evaluate_seconds: Callable[[], float] | None,
             cost_follows_model: bool = False) -> TimeBudget:
        """A budget of ``budget_s`` seconds, ``spent_s`` of them used by earlier sessions, counted from
        ``started``; its clock keeps :meth:`final_cost` in reserve."""
        budget = cls(BudgetClock(budget_s, spent_s, lambda: 0.0, started=started), evaluate_seconds,
                     cost_follows_model)
        budget.clock.reserve = budget.final_cost
        return budget

    def final_cost(self) -> float:
        """Seconds the run needs after its last step: the end of an epoch, the final evaluation with a tenth more
        for the machine's drift, and a small margin."""
        timings = self.eval_timings[-1:] if self.cost_follows_model else self.eval_timings
        return self.end_seconds + 1.1 * max(timings, default=0.0) + 0.25

    def time_eval(self) -> float:
        """Time the final evaluation at the first step (the warm-up), and again when the last fifth of the budget
        is left, in time to act on a machine that slowed down (ending late is worse than a few steps fewer). The
        seconds spent timing are left out of the clock's speed window, and returned (0 when it did not time)."""
        if self.evaluate_seconds is None or len(self.eval_timings) == 2:
            return 0.0
        clock = self.clock
        if self.eval_timings and clock.time_left() >= max(3 * self.final_cost(), 0.2 * clock.budget_s):
            return 0.0
        t0 = time.perf_counter()
        self.eval_timings.append(self.evaluate_seconds())
        spent = time.perf_counter() - t0
        clock.leave_out(spent)
        return spent
