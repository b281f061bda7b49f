"""`moco reproduce`: settings, shared and skipped runs, and a report produced from the results."""

import json

import pytest

from moco.cli import main
from moco.config import ConfigError
from moco.experiments import BUDGETS, EXPERIMENTS, reproduce, run_dir, setting_config


def tiny(tmp_path) -> list[str]:
    return ["model.width=4", "train.precision=bf16",
            "model.bn_splits=2", "data.image_size=16", "optim.batch_size=8", "data.workers=0",
            f"data.cache_dir={tmp_path / 'cache'}", "train.log_every=2", "train.knn_k=5"]


def test_every_experiment_has_valid_settings_and_shares_the_base_run(tmp_path):
    data = tmp_path / "d"
    budget = BUDGETS["small"]
    dirs = {}
    for name, exp in EXPERIMENTS.items():
        from moco.config import resolve

        settings = exp.settings(resolve(budget.preset, overrides=budget.overrides))
        assert len({s.name for s in settings}) == len(settings)
        dirs[name] = {s.name: run_dir(tmp_path, setting_config(budget, s, []), data) for s in settings}
    # the recipe's own setting is one run, whichever experiment asks for it
    base = {dirs["mechanisms"]["MoCo K=4096"], dirs["momentum"]["m=0.99"], dirs["queue-size"]["MoCo K=4096"],
            dirs["symmetric"]["asymmetric, 2 epochs"]}
    assert len(base) == 1
    mech = EXPERIMENTS["mechanisms"].settings(resolve(budget.preset, overrides=budget.overrides))
    e2e = [s for s in mech if s.group == "end-to-end"]
    assert [s.x for s in e2e] == [256, 1024]  # end-to-end stops at the batch it can hold
    assert "optim.batch_size=1024" in e2e[1].overrides and "optim.lr=0.24" in e2e[1].overrides


@pytest.mark.slow
def test_momentum_experiment_writes_report_and_skips_finished_runs(tiny_data, tmp_path):
    out, runs = tmp_path / "reports" / "momentum", tmp_path / "runs"
    extra = tiny(tmp_path)
    path = reproduce("momentum", tiny_data, out, runs, "small", extra, progress=False)
    text = path.read_text()
    assert text.startswith("# Momentum of the key encoder")
    assert f"moco reproduce momentum --data {tiny_data} --out {out} --runs {runs} --set model.width=4" in text
    for m in ("m=0 ", "m=0.9 ", "m=0.99 ", "m=0.999 ", "m=0.9999 "):
        assert f"| {m.strip()} |" in text
    assert "| 59.0 |" in text and "Seed-to-seed difference" in text  # paper column and computed verdicts
    assert (out / "momentum.png").stat().st_size > 1000
    index = (out.parent / "README.md").read_text()
    assert "[Momentum of the key encoder](momentum/report.md)" in index and "| m=0.999 |" in index
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 6 and all(0 <= r["knn_top1"] <= 100 for r in rows)
    # m = 0.99 and the seed repeat differ only in the seed
    assert len({r["run"] for r in rows}) == 6
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/checkpoint_last.pt")}
    assert len(stamps) == 6
    # a second invocation runs nothing: every setting is already finished
    reproduce("momentum", tiny_data, out, runs, "small", extra, progress=False)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/checkpoint_last.pt")} == stamps


def test_reproduce_cli_errors_and_dry_run(tiny_data, tmp_path, capsys):
    assert main(["reproduce", "shuffle-bn", "--data", str(tiny_data), "--runs", str(tmp_path / "r"),
                 "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 4 and not (tmp_path / "r").exists()
    assert main(["reproduce", "momentum", "--data", str(tmp_path / "nope")]) == 1
    assert "data folder not found" in capsys.readouterr().err
    assert main(["reproduce", "momentum", "--data", str(tiny_data), "--set", "method.q=1", "--dry-run"]) == 2
    with pytest.raises(ConfigError, match="unknown experiment"):
        reproduce("nope", tiny_data, tmp_path, tmp_path)


@pytest.mark.parametrize("name", ["mechanisms", "momentum", "queue-size", "shuffle-bn", "symmetric"])
def test_verdicts_find_settings_by_role_not_by_name_or_position(name):
    from moco.config import resolve

    budget = BUDGETS["small"]
    exp = EXPERIMENTS[name]
    settings = exp.settings(resolve(budget.preset, overrides=budget.overrides))
    results = {s.name: {"knn_top1": 30.0 + i, "pretext_acc1": 10.0 + 2 * i, "loss": 5.0, "loss_spread": 0.1,
                        "train_time": 100.0 + i, "K": 4096} for i, s in enumerate(settings)}
    before = exp.verdicts(settings, results)
    renamed = [type(s)(**{**vars(s), "name": f"#{i} {s.name}"}) for i, s in enumerate(settings)][::-1]
    moved = {f"#{i} {s.name}": results[s.name] for i, s in enumerate(settings)}
    assert exp.verdicts(renamed, moved) == before  # other display names, reversed order: the same sentences
    assert sum(s.role == "baseline" for s in settings) == 1 and sum(s.role == "seed" for s in settings) == 1


@pytest.mark.slow
def test_transfer_writes_its_report_and_skips_finished_runs(tmp_path, monkeypatch):
    """The transfer experiment end to end on 4 tiny classes: MoCo and the supervised network on the first two, then
    each init fine-tuned on the other two and trained as a detector and a segmenter on them pasted on canvases; a
    second invocation runs nothing."""
    from conftest import make_image_folder

    from moco.experiments import transfer

    data = tmp_path / "d"
    make_image_folder(data / "train", classes=4, per_class=16, seed=0)
    make_image_folder(data / "test", classes=4, per_class=4, seed=1)
    monkeypatch.setitem(transfer.TRANSFER_BUDGETS, "small", transfer.TransferBudget(
        "cifar10-cpu", ["optim.epochs=1", "method.K=40"], 0.0, 0.0, 1, ("50%",), 1, "a tiny test budget",
        detect_s=0.0, detect_epochs=1, detect_set=transfer.PastedSpec(8, 4, (48, 40), (1, 2), (10, 16)),
        detect_overrides=("detect.min_size=[40]", "detect.rois_per_image=16"), segment_s=0.0, segment_epochs=1,
        segment_overrides=("segment.head=fcn",)))
    out, runs = tmp_path / "reports" / "transfer", tmp_path / "runs"
    path = reproduce("transfer", data, out, runs, "small", tiny(tmp_path), progress=False)
    text = path.read_text()
    assert text.startswith("# Transfer") and "| 50% |" in text and "Pretext classes" in text
    res = json.loads((out / "results.json").read_text())
    assert res["pretext_classes"] == ["class0", "class1"] and res["downstream_classes"] == ["class2", "class3"]
    assert sorted(r["init"] for r in res["finetunes"].values()) == ["MoCo", "random", "supervised"]
    assert all(r["images"] == 16 for r in res["finetunes"].values())  # 50% of 2 x 16, the same for every init
    assert set(res["probes"]) == {"MoCo", "supervised"} and "50%" in res["probes"]["MoCo"]["linear"]
    # the same wall time as MoCo (its training and monitoring), at least the shortest budget
    assert res["supervised"]["seconds"] == max(round(res["moco_seconds"], 1), transfer.MIN_BUDGET_S)
    assert sorted(r["init"] for r in res["detection"].values()) == ["MoCo", "random", "supervised"]
    assert all(0 <= r["AP"] <= 100 and r["steps"] == 1 for r in res["detection"].values())  # 8 canvases, batch 8
    assert "## Detection (COCO AP" in text and "Detection (COCO AP on the pasted" in text
    assert sorted(r["init"] for r in res["segmentation"].values()) == ["MoCo", "random", "supervised"]
    assert all(0 <= r["mIoU"] <= 100 and r["steps"] == 1 for r in res["segmentation"].values())
    assert "## Segmentation (mIoU" in text and "Segmentation (mIoU on the pasted" in text
    assert ("[Transfer: fine-tuning with few labels, detection and segmentation](transfer/report.md)"
            in (out.parent / "README.md").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("checkpoint_last.pt")}
    assert len(stamps) == 11  # MoCo, supervised, 3 fine-tunes, 3 detectors, 3 segmenters
    reproduce("transfer", data, out, runs, "small", tiny(tmp_path), progress=False)
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("checkpoint_last.pt")} == stamps
