"""The recipe chosen from the data and the machine (moco.presets.auto): fixed data summaries and machines, a
speed table instead of a measurement; and the CLI's use of it (printed, recorded, overridable)."""

import json
import logging

import pytest
import torch
import yaml

from moco.cli import main
from moco.config import resolve
from moco.presets.auto import LADDER, DataSummary, Machine, Rung, choose, enough_views

CPU = Machine("cpu", "test CPU", 24.0, 2, True, 1)
GPU = Machine("cuda", "test GPU", 80.0, 16, True, 1)


def table(per_rung: dict[Rung, float]):
    """A speed function from a table, recording which rungs were asked about."""
    asked = []

    def speed(rung):
        asked.append(rung)
        return per_rung[rung]

    speed.asked = asked
    return speed


def flat(img_s_at_32: float):
    """Speeds that fall with each rung's compute: the side after the stem squared (the CIFAR stem keeps 4x the
    ImageNet stem's) x width^2, ResNet-50 2.25x ResNet-18. The 32-px recipe runs at ``img_s_at_32``."""
    def cost(r):
        side = r.view * (4 if r.cifar_stem else 1)
        return (side / 128) ** 2 * (r.width / 16) ** 2 * (2.25 if r.arch == "resnet50" else 1.0)
    return table({r: img_s_at_32 / cost(r) for r in LADDER})


def test_cifar10_gets_the_cpu_preset_unchanged():
    r = choose(DataSummary(50_000, 32), CPU, 890.0)
    assert r.preset == "cifar10-cpu" and r.settings == {}
    assert resolve(r.preset, recipe=r.settings).to_dict() == resolve("cifar10-cpu").to_dict()


def test_a_small_folder_of_small_images_gets_a_queue_and_batch_that_fit():
    r = choose(DataSummary(300, 32), CPU, None)
    cfg = resolve(r.preset, recipe=r.settings)
    assert cfg.method.K <= 300 / 4 and cfg.method.K >= cfg.optim.batch_size
    assert cfg.optim.batch_size == 32 and cfg.optim.lr == pytest.approx(0.06 * 32 / 256)
    assert cfg.model.bn_splits == 2 and cfg.data.image_size == 32


def test_photos_get_the_largest_rung_the_budget_teaches():
    speed = flat(1200.0)  # 32 px: 1200 img/s, 48 px: 533, 64 px: 300 (CIFAR stem)
    r = choose(DataSummary(3000, 400), CPU, 1800.0, speed)
    cfg = resolve(r.preset, recipe=r.settings)
    # 48 px shows 533 * 0.9 * 1800 = 864,000 views (>= 200 epochs of 3,000); 64 px 486,000: too few
    assert (cfg.data.image_size, cfg.model.arch, cfg.model.width, cfg.model.cifar_stem) == (48, "resnet18", 16, True)
    assert r.preset == "cifar10-cpu" and cfg.data.augmentation == "cifar" and cfg.model.head == "mlp"
    assert speed.asked == list(LADDER[:3])  # cheapest first, and not past the first that does not fit
    assert cfg.optim.epochs == 288 and cfg.method.K == 512 and cfg.model.bn_splits == 8
    why = r.reasons["view and network"]
    assert "the next, resnet18 width 16 (CIFAR stem) at 64 px, would show them 162 times" in why


def test_a_short_budget_takes_the_32px_recipe_and_says_so():
    r = choose(DataSummary(3000, 400), CPU, 360.0, flat(600.0))
    cfg = resolve(r.preset, recipe=r.settings)
    assert cfg.data.image_size == 32 and "the smallest rung" in r.reasons["view and network"]
    assert set(r.settings) <= {"method.K", "optim.epochs"}  # the 32-px recipe, with a queue that fits and its length


def test_thirty_minutes_of_a_2_core_cpu_on_3000_photos_keeps_the_32px_recipe():
    """Measured (benchmarks/results/photos_pretrain_30m.json, Zen 4): 389 epochs at 32 px beat 156 at 48 px."""
    speed = table({r: 325.0 * (48 / r.view) ** 2 for r in LADDER})  # the 48-px probe that run measured
    r = choose(DataSummary(3068, 400), CPU, 1800.0, speed)
    assert "data.image_size" not in r.settings and "would show them 172 times" in r.reasons["view and network"]


def test_more_time_or_a_faster_machine_buys_a_larger_rung():
    small = choose(DataSummary(3000, 400), CPU, 1800.0, flat(600.0))
    big = choose(DataSummary(3000, 400), GPU, 1800.0, flat(60_000.0))
    small_cfg, cfg = resolve(small.preset, recipe=small.settings), resolve(big.preset, recipe=big.settings)
    assert (cfg.model.arch, cfg.data.image_size) == ("resnet50", 224)
    assert cfg.data.image_size > small_cfg.data.image_size
    assert big.preset == "imagenet-v2"  # MoCo v2's photo recipe from 128 px up
    assert cfg.data.augmentation == "v2" and cfg.method.T == 0.2 and not cfg.model.cifar_stem


def test_views_never_exceed_the_images():
    r = choose(DataSummary(3000, 100), GPU, 7200.0, flat(60_000.0))
    assert r.settings["data.image_size"] == 96 and r.preset == "cifar10-cpu"


def test_the_batch_fits_the_memory_and_the_lr_follows_it():
    tiny = Machine("cuda", "small GPU", 2.0, 8, True, 1)
    r = choose(DataSummary(100_000, 500), tiny, 72_000.0, flat(60_000.0))
    s, cfg = r.settings, resolve(r.preset, recipe=r.settings)
    assert (cfg.data.image_size, cfg.model.arch) == (224, "resnet50")
    assert s["optim.batch_size"] == 16 and s["optim.lr"] == pytest.approx(0.06 * 16 / 256)  # 50 MB an image, 1 GB
    assert "memory" in r.reasons["optim.batch_size"]


def test_several_processes_shuffle_bn_across_them():
    r = choose(DataSummary(3000, 400), Machine("cuda", "GPU", 80.0, 16, True, 4), 1800.0, flat(60_000.0))
    assert resolve(r.preset, recipe=r.settings).model.bn_splits == 1
    assert "across the 4 processes" in r.reasons["model.bn_splits"]


def test_no_budget_sizes_for_an_hour_and_states_the_epochs():
    r = choose(DataSummary(3000, 400), CPU, None, flat(600.0))
    assert "sized for 1 h" in r.reasons["view and network"] and "--time-budget" in r.reasons["optim.epochs"]
    assert enough_views(500) == 200_000 and enough_views(10_000) == 2_000_000


def _photos(root, side, n=12):
    from PIL import Image

    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (side, side - 20), (60 * c, 9 * i, 90)).save(root / f"c{c}" / f"{i}.jpg")
    return root


def test_the_cli_prints_records_and_lets_every_choice_be_overridden(tmp_path, caplog, capsys):
    data = _photos(tmp_path / "photos", 120)
    argv = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--no-progress", "--no-knn", "--set", "model.width=4", "--set", "method.K=16",
            "--set", "train.precision=bf16", "--set", "model.bn_splits=2"]
    code = main([*argv, "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("# 24 images about 100 px: the 32-px recipe's network")
    cfg = yaml.safe_load(out)
    view = cfg["data"]["image_size"]  # as large as this machine's speed allows in an hour, at most the images' 100
    assert view in (32, 48, 64, 96) and cfg["model"]["cifar_stem"] and cfg["model"]["width"] == 4
    with caplog.at_level(logging.INFO, logger="moco"):
        assert main(argv) == 0
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("recipe chosen for the data") for m in said)
    assert any("method.K:" in m and "[you set 16]" in m for m in said)
    assert any("method.K=16 keys for 24 images" in m and "--set method.K=8" in m for m in said)  # half or more
    rec = json.loads((tmp_path / "run" / "recipe.json").read_text())
    ran = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # measured again: may differ from the print
    assert rec["preset"] == "cifar10-cpu" and rec["settings"].get("data.image_size", 32) == ran["data"]["image_size"]
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("# recipe chosen for the data (recipe.json)")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run")]) == 0
    assert "recipe      chosen for the data: 24 images about 100 px" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="moco"):  # a preset named: nothing is chosen
        caplog.clear()
        assert main([*argv[:4], str(tmp_path / "run2"), *argv[5:], "--preset", "cifar10-cpu",
                     "--set", "method.K=8"]) == 0
    assert not any(r.getMessage().startswith("recipe chosen") for r in caplog.records)
    assert not any("sit in the queue" in r.getMessage() for r in caplog.records)  # 8 keys for 24 images: fine
    assert not (tmp_path / "run2" / "recipe.json").exists()



def test_the_probe_times_the_trainers_own_step_and_leaves_the_random_state(monkeypatch):
    """probe_speed runs moco's pretraining step (train_step on the rung's MoCo and optimiser), not a loop of its
    own, and the run's seeding is untouched."""
    from moco.tasks.recipe import probe_speed
    from moco.training import loop

    calls = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda net, *a: calls.append(type(net.model).__name__) or real(net, *a))
    state = torch.random.get_rng_state()
    speed = probe_speed("cpu", batch=8, steps=2)
    assert speed(LADDER[0]) > 0 and speed(LADDER[0]) == speed(LADDER[0])  # measured once per rung
    assert calls == ["MoCo"] * 3  # a warm-up and 2 timed steps of the trainer's own step
    assert torch.equal(torch.random.get_rng_state(), state)


def test_shards_are_summarised_from_their_image_headers(tmp_path):
    from moco.tasks.recipe import summarize

    data = _photos(tmp_path / "photos", 120)
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "sh"), "--no-progress"]) == 0
    shards = sorted(str(p) for p in (tmp_path / "sh").glob("*.tar"))
    assert summarize(shards) == summarize(data) == DataSummary(24, 100)  # 120 x 100 px: the shorter side
