"""`moco evaluate`: the labels saved against a hand computation, the shared budget, resume that skips and
continues, one labels.txt per share for every init, the report rebuilt as it was, and bad input in one line."""

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import fake_checkpoint, make_image_folder

from moco.cli import main
from moco.config import MIN_BUDGET_S
from moco.core.errors import ConfigError
from moco.experiments import savings as sv
from moco.experiments.evaluate import REPORT_RESERVE_S, Budget, Costs, check_budget, evaluate, make_inits
from moco.training.checkpoint import load_checkpoint

# width 4 in bf16: torch 2.14's oneDNN hangs in fp32 4-channel channels_last backward passes (conftest)
TINY = ["optim.batch_size=8", "data.workers=0", "train.precision=bf16", "train.log_every=5"]


def line(pre: sv.Curve, rnd: sv.Curve) -> str:
    return sv.sentence("MoCo", sv.labels_saved(pre, rnd), sv.per_seed(pre, rnd), sv.seed_spread(pre, rnd),
                       sv.within_spread(pre, rnd))


def test_labels_saved_interpolates_on_the_log_label_axis():
    rnd = {0.01: [40, 42], 0.1: [55, 57], 1.0: [70, 72]}
    pre = {0.01: [50, 52], 0.1: [66, 68], 1.0: [78, 84]}
    s = sv.labels_saved(pre, rnd)
    # random init's best: 71 with all labels. MoCo's means are 67 at 10% and 81 at 100%: 71 lies 4/14 of the way,
    # so in log share it needs 10 ** (-1 + 2/7) of the labels
    assert (s.target, s.target_share, s.at_least) == (71, 1.0, False)
    assert s.needed == pytest.approx(10 ** (-5 / 7)) and s.saved == pytest.approx(1 - 10 ** (-5 / 7))
    # seed 0: 70 between 66 and 78 (1/3 of the way); seed 1: 72 between 68 and 84 (1/4)
    assert [x.saved for x in sv.per_seed(pre, rnd)] == pytest.approx([1 - 10 ** (-2 / 3), 1 - 10 ** (-3 / 4)])
    assert line(pre, rnd) == ("pretraining saves ~81% of the labels: MoCo init reaches random init's 100%-label "
                              "accuracy (71.0%) with ~19% of them (seeds: 78% to 82% saved)")


def test_labels_saved_says_when_the_curves_do_not_cross_or_it_is_noise():
    rnd = {0.01: [30.0], 0.1: [50.0], 1.0: [70.0]}
    never = {0.01: [35.0], 0.1: [55.0], 1.0: [69.0]}
    assert sv.labels_saved(never, rnd).saved is None
    assert line(never, rnd) == ("pretraining saves no labels here: MoCo init stays below random init's 100%-label "
                                "accuracy (70.0%) at every share measured (best 69.0% at 100%)")
    early = {0.01: [75.0], 0.1: [80.0], 1.0: [85.0]}
    assert line(early, rnd) == ("pretraining saves at least 99% of the labels: MoCo init reaches random init's "
                                "100%-label accuracy (70.0%) already with 1% of them, the fewest measured")
    # a short budget: random init is best at 10%; MoCo needs more than that (58 at 10%, 65 at 100%)
    short = {0.01: [30.0], 0.1: [60.0], 1.0: [55.0]}
    s = sv.labels_saved({0.01: [50.0], 0.1: [58.0], 1.0: [65.0]}, short)
    assert (s.target, s.target_share) == (60.0, 0.1) and s.needed == pytest.approx(10 ** (-5 / 7))
    assert s.saved == pytest.approx(1 - 10 ** (-5 / 7) / 0.1) and s.saved < 0
    assert sv.labels_saved(early, {0.1: [60.0], 1.0: [60.0]}).target_share == 1.0  # a tie: the larger share
    noisy_rnd, noisy = {0.1: [48.0, 58.0], 1.0: [69.0, 71.0]}, {0.1: [50.0, 60.0], 1.0: [70.0, 72.0]}
    assert sv.within_spread(noisy, noisy_rnd) and "within the seeds' spread (10.0 points)" in line(noisy, noisy_rnd)
    assert not sv.within_spread({0.1: [70.0, 71.0], 1.0: [80.0, 81.0]}, noisy_rnd)


def test_the_plan_shares_what_is_left_and_refuses_a_budget_too_small():
    now = time.perf_counter()
    b = Budget(deadline=now + 100 + REPORT_RESERVE_S, started=now, spent_before=0.0)
    assert b.share(4) == pytest.approx(25, abs=0.2)  # an equal share of what is left after the report's reserve
    assert b.share(4, frozen_left_s=20) == pytest.approx(20, abs=0.2)
    assert b.share(100) == MIN_BUDGET_S  # never below the shortest budget a run accepts
    costs = Costs(step_s=0.5, image_s=0.001, probe_step_s=0.001)
    shortest = costs.shortest_finetune_s(1000, 20)
    assert shortest == pytest.approx(3 + 20 * 0.5 + 2 * 1.0)
    b = Budget(deadline=time.perf_counter() + 110, started=time.perf_counter(), spent_before=0.0)
    check_budget(b, costs, 10.0, 6, shortest, 110.0)  # 10 + 6 x 15 + the reserve fit
    with pytest.raises(ConfigError, match=r"--time-budget 1m50s is too small: 7 fine-tunes of at least 15 s each .* "
                                          r"need about 2m00s in all; give --time-budget 2m00s or more"):
        check_budget(b, costs, 10.0, 7, shortest, 110.0)


def test_inits_are_named_and_random_init_takes_the_first_architecture():
    inits = make_inits(["runs/a/checkpoint_last.pt", "b=x/y.pth.tar"], ["supervised:s.pt"])
    assert [(i.name, i.kind, i.path) for i in inits] == [
        ("a", "checkpoint", "runs/a/checkpoint_last.pt"), ("b", "checkpoint", "x/y.pth.tar"),
        ("random", "random", "runs/a/checkpoint_last.pt"), ("supervised", "supervised", "s.pt")]
    assert [i.name for i in make_inits("runs/a/checkpoint_last.pt")] == ["MoCo", "random"]
    with pytest.raises(ConfigError, match="own name"):
        make_inits(["random=a.pt"])
    with pytest.raises(ConfigError, match="supervised:CKPT"):
        make_inits("a.pt", ["b.pt"])


@pytest.fixture
def labelled(tmp_path):
    make_image_folder(tmp_path / "data" / "train", classes=3, per_class=12, seed=0)
    make_image_folder(tmp_path / "data" / "test", classes=3, per_class=4, seed=1)
    fake_checkpoint(tmp_path / "ck.pt")
    return tmp_path / "data", tmp_path / "ck.pt"


def _evaluate(ck, data, out, **kw):
    return evaluate(ck and str(ck), data, out, labels=["50%", "100%"], seeds=1, epochs=1, overrides=TINY,
                    progress=False, **kw)


def _image_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def test_a_resumed_evaluation_skips_finished_runs_continues_the_interrupted_one_and_rebuilds_its_report(
        labelled, tmp_path, monkeypatch):
    import moco.tasks.finetune as ft_module

    data, ck = labelled
    out = tmp_path / "ev"
    real, calls = ft_module.finetune, []

    def interrupted(**kw):  # the second fine-tune's first start stops after 5 steps, as Ctrl-C would leave it
        calls.append((kw["out"].name, kw["resume"]))
        return real(**kw, max_steps=5 if calls[-1] == ("ft-50pct-random-s0", None) else None)

    monkeypatch.setattr(ft_module, "finetune", interrupted)
    first = _evaluate(ck, data, out)
    assert first.stopped and calls == [("ft-50pct-MoCo-s0", None), ("ft-50pct-random-s0", None)]
    assert "**Not run yet** (3)" in (out / "report.md").read_text()
    frozen = (out / "runs" / "frozen-MoCo" / "results.json").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="holds an evaluation already"):
        _evaluate(ck, data, out)
    with pytest.raises(ConfigError, match="holds an evaluation with other labels, seeds: --resume auto continues"):
        evaluate(str(ck), data, out, labels=["10%"], seeds=2, resume="auto")
    calls.clear()
    done = _evaluate(None, None, out, resume="auto")  # the evaluation's own settings
    assert not done.stopped and calls == [("ft-50pct-random-s0", "auto"), ("ft-100pct-MoCo-s0", None),
                                          ("ft-100pct-random-s0", None)]
    assert (out / "runs" / "frozen-MoCo" / "results.json").stat().st_mtime_ns == frozen
    # the continued run ends where the same run uninterrupted ends
    ref = real(checkpoint=str(ck), init="random", train_dir=data / "train", test_dir=data / "test",
               out=tmp_path / "ref", labels_file=out / "labels" / "50pct.txt", epochs=1, overrides=TINY,
               flags={"train.seed": 0}, progress=False)
    a = load_checkpoint(out / "runs" / "ft-50pct-random-s0" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "ref" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    res = json.loads((out / "results.json").read_text())
    assert res["finetunes"]["ft-50pct-random-s0"]["top1"] == pytest.approx(ref.top1, abs=5e-5)  # kept to 4 places
    # every init of a share learnt from the images of its labels.txt, and the probe too
    for share, n in (("50pct", 18), ("100pct", 36)):
        listed = _image_lines(out / "labels" / f"{share}.txt")
        assert len(listed) == n
        for init in ("MoCo", "random"):
            assert _image_lines(out / "runs" / f"ft-{share}-{init}-s0" / "labels.txt") == listed
    probe = json.loads((out / "runs" / "frozen-MoCo" / "results.json").read_text())["linear"]
    assert probe["50%"]["n_train"] == 18 and probe["100%"]["n_train"] == 36
    # --report-only writes the same report from the runs
    report, results = (out / "report.md").read_text(), (out / "results.json").read_text()
    assert "Not run yet" not in report and "| 50% | 18 |" in report and "kNN, all labels" in report
    for name in ("report.md", "results.json", "evaluate.png"):
        (out / name).unlink()
    again = evaluate(out=out, report_only=True)
    assert (out / "report.md").read_text() == report and (out / "results.json").read_text() == results
    assert again.lines == [x["line"] for x in res["savings"].values()] and again.lines
    assert (out / "evaluate.png").stat().st_size > 10_000


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in ln for ln in err)
    return err[-1]


def test_bad_input_gets_one_line(labelled, tmp_path, capsys):
    data, ck = labelled
    args = ["evaluate", "--checkpoint", str(ck), "--set", TINY[0], "--set", TINY[2], "--no-progress"]
    make_image_folder(tmp_path / "notest" / "train", classes=2, per_class=4)
    assert main([*args, "--data", str(tmp_path / "notest"), "--out", str(tmp_path / "a")]) == 1
    assert "has no test/ (or val/) folder" in _err(capsys)
    make_image_folder(tmp_path / "extra" / "train", classes=2, per_class=4)
    make_image_folder(tmp_path / "extra" / "test", classes=3, per_class=2)
    assert main([*args, "--data", str(tmp_path / "extra"), "--out", str(tmp_path / "b")]) == 1
    assert "has 1 class(es) that" in (e := _err(capsys)) and "(class2)" in e
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "bad.pt"), "--data", str(data), "--out",
                 str(tmp_path / "c")]) == 1
    assert "MoCo (checkpoint)" in (e := _err(capsys)) and "not a readable PyTorch checkpoint" in e
    assert main([*args, "--data", str(data), "--out", str(tmp_path / "d"), "--time-budget", "20s"]) == 2
    e = _err(capsys)
    assert "--time-budget 20s is too small: 12 fine-tunes of at least" in e and "give --time-budget" in e
    assert main(["evaluate", "--out", str(tmp_path / "e"), "--report-only"]) == 1
    assert "holds no evaluation" in _err(capsys)
    assert main([*args, "--data", str(data), "--epochs", "1", "--each", "1m"]) == 2
    assert "give one of them" in _err(capsys)


@pytest.mark.slow
def test_the_whole_evaluation_ends_within_its_budget_each_run_taking_its_share(labelled, tmp_path, monkeypatch):
    import moco.tasks.finetune as ft_module

    data, ck = labelled
    real, given = ft_module.finetune, []

    def recorded(**kw):
        given.append((time.perf_counter(), kw["time_budget"]))
        return real(**kw)

    monkeypatch.setattr(ft_module, "finetune", recorded)
    t0, budget = time.perf_counter(), 45.0
    res = evaluate(str(ck), data, tmp_path / "ev", labels=["100%"], seeds=1, time_budget=budget, overrides=TINY,
                   progress=False, started=t0)
    wall = time.perf_counter() - t0
    assert not res.stopped and wall <= budget
    assert len(given) == 2
    for i, (start, seconds) in enumerate(given):  # an equal share of what was left when it started
        assert seconds == pytest.approx((t0 + budget - start - REPORT_RESERVE_S) / (2 - i), abs=0.05)
    assert 0.6 < given[1][1] / given[0][1] < 1.6
    ran = [json.loads((tmp_path / "ev" / "runs" / f / "results.json").read_text())["config"]["optim"]["time_budget"]
           for f in ("ft-100pct-MoCo-s0", "ft-100pct-random-s0")]
    assert ran == pytest.approx([s for _, s in given], abs=0.01)  # the runs trained with the budgets given
