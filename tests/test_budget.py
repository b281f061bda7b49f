"""Training for a time budget: the plan, its schedules, re-planning, resume, replay and the refusals."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from moco.cli import main
from moco.config import ConfigError, resolve
from moco.evaluation import knn as knn_module
from moco.schedules import lr_at, momentum_at
from moco.tasks.pretrain import pretrain
from moco.training import budget as budget_module
from moco.training import loop as loop_module
from moco.training.budget import JOB_START_ENV, BudgetClock, Plan, TimeBudget, parse_duration
from moco.training.checkpoint import load_checkpoint
from moco.training.logging import read_metrics
from tests.conftest import make_image_folder, tiny_config


def budget_data(tmp_path):
    make_image_folder(tmp_path / "data" / "train", per_class=64, seed=0)
    make_image_folder(tmp_path / "data" / "test", per_class=8, seed=1)
    return tmp_path / "data"


def budget_cfg(tmp_path, seconds, *extra):
    # fp32 at width 8: bf16 is emulated (slow) on CPUs without native bf16, and width 4 meets a oneDNN bug in fp32
    return tiny_config(tmp_path, "optim.batch_size=16", "train.checkpoint_every=0", "train.log_every=4",
                       "train.precision=fp32", "model.width=8", f"optim.time_budget={seconds}", *extra)


def plans(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "plan"]


def test_durations():
    assert [parse_duration(t) for t in ("90", "90s", "15m", "2h", "1h30m", "1.5m")] == [90, 90, 900, 7200, 5400, 90]
    for bad in ("", "abc", "15x", "m15", "1h30"):
        with pytest.raises(ConfigError, match="duration"):
            parse_duration(bad)


@pytest.mark.slow
def test_the_command_counts_its_budget_from_the_start_of_its_process():
    code = ("import time; time.sleep(1.5); from moco.training.budget import process_start; "
            "print(time.perf_counter() - process_start())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.5 <= age < 30  # the sleep and the interpreter's start-up, not 0 (the call) nor the machine's uptime
    # `moco pretrain --nproc N` hands its own start to the workers torchrun starts later
    env = {**os.environ, JOB_START_ENV: f"{time.time() - 100:.3f}"}
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env=env).stdout)
    assert 101.5 <= age < 110


def test_the_schedule_epoch_is_continuous_across_replans_and_ends_at_the_planned_end():
    plan = Plan(10, [(0, 1000)])
    assert plan.schedule_epoch(500) == pytest.approx(5.0)
    before = plan.schedule_epoch(300)
    assert plan.replan(300, 600)  # slower than planned: fewer steps fit
    assert plan.schedule_epoch(300) == pytest.approx(before)  # no jump where the plan changes
    assert plan.schedule_epoch(600) == pytest.approx(10.0) and plan.total_at(599) == 600
    assert plan.schedule_epoch(450) == pytest.approx(before + (10 - before) / 2)  # the rest, squeezed
    assert plan.schedule_epoch(200) == pytest.approx(2.0)  # the past is unchanged
    assert not plan.replan(400, 600)  # the same plan: no event
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert [again.schedule_epoch(s) for s in range(0, 601, 50)] == [plan.schedule_epoch(s) for s in range(0, 601, 50)]


def test_a_budget_planned_cosine_and_momentum_end_at_their_end_values():
    cfg = resolve("cifar10-v3-cpu", overrides=["optim.warmup_epochs=0.5"])
    plan = Plan(cfg.optim.epochs, [(0, 400)])
    plan.replan(50, 700)
    plan.replan(320, 520)
    lrs = [lr_at(cfg, plan.schedule_epoch(s)) for s in range(0, 521)]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the lr reaches its end value at the deadline
    assert momentum_at(cfg, plan.schedule_epoch(520)) == pytest.approx(1.0)
    jumps = [abs(b - a) for a, b in zip(lrs[60:], lrs[61:])]
    assert max(jumps) < 0.02 * max(lrs)  # no jump at the re-plans: a smooth, re-fitted curve
    step = resolve("imagenet-v1")  # step decay: milestones at the same fractions of the planned length
    plan = Plan(step.optim.epochs, [(0, 2000)])
    assert lr_at(step, plan.schedule_epoch(1199)) == pytest.approx(0.03)
    assert lr_at(step, plan.schedule_epoch(1200)) == pytest.approx(0.003)


def test_refusals_are_one_line_before_any_work(tmp_path, capsys):
    for argv, match in [(["--time-budget", "15m", "--epochs", "3"], "--time-budget and --epochs"),
                        (["--time-budget", "5s"], "at least 10 s"),
                        (["--time-budget", "fifteen"], "duration")]:
        code = main(["pretrain", "--out", str(tmp_path / "r"), "--data", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert code == 2 and match in err and err.strip().count("\n") == 0
        assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_60_second_budget_ends_within_10_percent_of_its_deadline(tmp_path):
    data = budget_data(tmp_path)
    t0 = time.perf_counter()
    res = pretrain(budget_cfg(tmp_path, 60), data, tmp_path / "run", progress=False)
    wall = time.perf_counter() - t0
    assert -6.0 <= wall - 60 <= 4.0, f"ended after {wall:.1f} s"  # 10% early, or late by a step and a loaded machine
    assert not res.stopped and "knn_top1" in res.metrics
    ck = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ck["step"] == Plan.from_dict(ck["budget"]["plan"]).total_steps  # ended on its plan
    assert plans(tmp_path / "run")[0]["step"] > 0  # planned from the measured speed


@pytest.mark.slow
def test_a_slow_down_mid_run_is_re_planned_and_the_deadline_still_met(tmp_path, monkeypatch):
    data = budget_data(tmp_path)
    real_step, real_features, t_start = loop_module.train_step, knn_module.extract_feature_sets, time.perf_counter()

    def slower_after_10s(*a, **k):  # the machine gets busy a third of the way in
        out = real_step(*a, **k)
        if time.perf_counter() - t_start > 10:
            time.sleep(0.1)
        return out

    def features_slower_after_10s(model, data, *a, **k):  # and so does the final kNN: +2.9 s for its 144 images
        out = real_features(model, data, *a, **k)
        if time.perf_counter() - t_start > 10:
            time.sleep(0.02 * len(data.array))
        return out

    monkeypatch.setattr(loop_module, "train_step", slower_after_10s)
    monkeypatch.setattr(knn_module, "extract_feature_sets", features_slower_after_10s)  # the kNN and its estimate
    pretrain(budget_cfg(tmp_path, 30), data, tmp_path / "run", progress=False)
    wall = time.perf_counter() - t_start
    assert -5.0 <= wall - 30 <= 3.0, f"ended after {wall:.1f} s"  # met: not late (load aside), not much early
    before = [p["total_steps"] for p in plans(tmp_path / "run") if p["spent_s"] <= 10]
    after = [p["total_steps"] for p in plans(tmp_path / "run") if p["spent_s"] > 11]
    assert before and after and after[-1] < 0.9 * before[-1]  # re-planned down once the steps got slower
    assert plans(tmp_path / "run")[-1]["reserve_s"] > 3.0  # the kNN re-timed near the end: the slower one kept


def test_time_left_out_of_the_speed_window_does_not_count_as_training(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: now[0])
    clock = BudgetClock(100.0, 0.0, lambda: 0.0, warmup=0, every=1, window=4)
    for step in (1, 2, 3):  # one step a second
        now[0] += 1.0
        clock.due(step)
    now[0] += 5.0  # 5 s timing the final kNN again
    clock.leave_out(5.0)
    now[0] += 1.0
    clock.due(4)
    clock.fit(4, 100)
    assert clock.rate == pytest.approx(1.0)  # still one step a second, not 3 steps in 8 s


def test_the_final_evaluation_is_reserved_from_the_larger_timing_or_a_detectors_latest():
    """kNN costs the same whatever the network has learnt, so of its two timings the larger counts (a machine
    that slowed down). A detector's evaluation is not: untrained it keeps 100 boxes an image and takes longer
    to score (54 s against 39 s on the pasted set here), so its latest timing counts."""
    from moco.evaluation.knn import KnnMonitor
    from moco.tasks.detect import DetectionMonitor

    clock = BudgetClock(100.0, 0.0, lambda: 0.0)
    knn = TimeBudget(clock, None, getattr(KnnMonitor(None, None, None, None), "cost_follows_model", False),
                     end_seconds=2.0, eval_timings=[60.0, 40.0])
    assert knn.final_cost() == pytest.approx(2.0 + 1.1 * 60.0 + 0.25)
    det = TimeBudget(clock, None, DetectionMonitor(None, [1], 8, None, None).cost_follows_model, end_seconds=2.0,
                     eval_timings=[60.0, 40.0])
    assert det.final_cost() == pytest.approx(2.0 + 1.1 * 40.0 + 0.25)
    det.eval_timings = [60.0]
    assert det.final_cost() == pytest.approx(2.0 + 1.1 * 60.0 + 0.25)


@pytest.mark.slow
def test_resume_continues_the_plan_with_the_budget_that_remains(tmp_path):
    data = budget_data(tmp_path)
    cfg = budget_cfg(tmp_path, 24)
    first = pretrain(cfg, data, tmp_path / "run", progress=False, max_steps=60)  # interrupted
    assert first.stopped
    ck = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    events, spent = ck["budget"]["plan"]["events"], ck["budget"]["spent_s"]
    assert 0 < spent < 24
    t0 = time.perf_counter()
    res = pretrain(cfg, data, tmp_path / "run", resume="auto", progress=False)
    wall = time.perf_counter() - t0
    assert not res.stopped
    assert -4.0 <= wall - (24 - spent) <= 2.5, f"resumed run took {wall:.1f} s of the {24 - spent:.1f} s left"
    ck = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert [list(e) for e in ck["budget"]["plan"]["events"][: len(events)]] == \
        [list(e) for e in events if e[0] <= 60]  # the first session's plan is kept


@pytest.mark.slow
def test_replaying_a_budgeted_run_reproduces_it_bit_for_bit(tmp_path):
    data = budget_data(tmp_path)
    pretrain(budget_cfg(tmp_path, 15), data, tmp_path / "timed", progress=False)
    cfg = budget_cfg(tmp_path, 0)  # no clock: the recorded plan alone
    pretrain(cfg, data, tmp_path / "replayed", progress=False, replay_plan=tmp_path / "timed")
    a = load_checkpoint(tmp_path / "timed" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "replayed" / "checkpoint_last.pt")
    assert a["step"] == b["step"] and a["budget"]["plan"] == b["budget"]["plan"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    losses = [[r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["type"] == "step"]
              for run in ("timed", "replayed")]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_a_budgeted_checkpoint_resumed_without_a_budget_follows_its_plan_and_refuses_another(tmp_path):
    """Resumed without --time-budget, a budgeted run finishes its recorded plan as a replay would (the same
    weights as the run that was never interrupted); --replay-plan of another run's plan is refused in one line."""
    data = budget_data(tmp_path)
    pretrain(budget_cfg(tmp_path, 15), data, tmp_path / "timed", progress=False)
    cfg = budget_cfg(tmp_path, 0)
    part = pretrain(cfg, data, tmp_path / "part", progress=False, replay_plan=tmp_path / "timed", max_steps=10)
    assert part.stopped
    pretrain(cfg, data, tmp_path / "part", resume="auto", progress=False)  # no budget, no replay flag
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("timed", "part"))
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    pretrain(budget_cfg(tmp_path, 11), data, tmp_path / "other", progress=False)
    other = load_checkpoint(tmp_path / "other" / "checkpoint_last.pt")["budget"]["plan"]
    assert other != a["budget"]["plan"]
    assert pretrain(cfg, data, tmp_path / "again", progress=False, replay_plan=tmp_path / "timed",
                    max_steps=10).stopped
    with pytest.raises(ConfigError, match="follows another plan"):
        pretrain(cfg, data, tmp_path / "again", resume="auto", progress=False, replay_plan=tmp_path / "other")


def simulate(monkeypatch, noise: float, seed: int = 0, budget: float = 890.0, rate: float = 0.8, spe: int = 195):
    """A budgeted run of the README's main job's shape on a fake clock: steps at ``rate`` steps/s, each ±``noise``
    at random and the speed itself drifting ±``noise`` over the run; returns (plans shown, by epoch; re-plans;
    the time training ended; the deadline)."""
    import random

    rnd = random.Random(seed)
    now = [0.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: now[0])
    clock = BudgetClock(budget, 0.0, lambda: 60.0, started=0.0)  # a minute kept for the final kNN
    plan, shown, log = Plan(10, [(0, 10 * spe)]), {}, budget_module.PlanLog()
    step, replans = 0, 0
    while step < plan.total_at(step):
        drift = 1 + noise * math.sin(2 * math.pi * now[0] / 300)  # slower and faster over 5-minute waves
        now[0] += (1 + rnd.uniform(-noise, noise)) / (rate * drift)
        step += 1
        if clock.due(step):
            fit = clock.fit(step, plan.total_at(step))
            if fit is not None and plan.replan(step, fit):
                replans += 1
                if log.show(fit, step // spe):
                    shown.setdefault(step // spe, 0)
                    shown[step // spe] += 1
    return shown, replans, now[0], clock.deadline - 60.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_noisy_machine_gets_at_most_one_plan_line_an_epoch_and_meets_the_deadline(monkeypatch, seed):
    shown, replans, ended, deadline = simulate(monkeypatch, noise=0.15, seed=seed)
    assert all(n == 1 for n in shown.values())  # at most one line an epoch (the README's job: about 3-10 epochs)
    assert sum(shown.values()) <= 12 and replans >= sum(shown.values())  # metrics.jsonl keeps every re-plan
    assert deadline - 0.02 * 890 <= ended <= deadline + 3.0  # not late (3 s: one step), at most 2% early
