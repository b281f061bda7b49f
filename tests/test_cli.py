"""The ``moco`` command: exit codes, one-line errors, print-config, info, knn --json."""

import json
import logging
import subprocess
import sys

import pytest
import yaml

from moco.cli import main

TINY = [
    "--set", "model.width=4", "--set", "train.precision=bf16",
    "--set", "model.bn_splits=2", "--set", "data.image_size=16", "--set", "method.K=40",
    "--batch-size", "8", "--epochs", "2", "--workers", "0", "--no-progress",
]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_print_config_shows_resolved_values(capsys):
    code, out, _ = run(["pretrain", "--preset", "cifar10-demo", "--set", "method.m=0.9", "--epochs", "7",
                        "--print-config"], capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["method"]["m"] == 0.9 and cfg["optim"]["epochs"] == 7 and cfg["method"]["K"] == 4096


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "method.k=3"], "did you mean 'method.K'"),
        (["--set", "method.m=1.5"], "method.m must be in [0, 1)"),
        (["--set", "model.width=0"], "model.width must be >= 1"),
        (["--set", "nonsense"], "--set expects key=value"),
        (["--config", "missing.yaml"], "config file not found"),
    ],
)
def test_config_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    code, out, err = run(["pretrain", "--out", str(tmp_path / "r"), *argv], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing started


def test_data_errors_exit_1(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(["pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert code == 1 and "no images found" in err and "Traceback" not in err
    code, _, err = run(["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert code == 1 and "data folder not found" in err


def test_pretrain_info_knn_roundtrip(capsys, caplog, tmp_path, tiny_data):
    code, out, _ = run(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                        "--set", f"data.cache_dir={tmp_path / 'c'}", *TINY], capsys)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epoch"] == 2 and "knn_top1" in summary
    code, out, _ = run(["info", str(tmp_path / "r" / "checkpoint_last.pt")], capsys)
    assert code == 0 and "epoch 2/2" in out and "K=40" in out
    code, out, _ = run(["info", "--json", str(tmp_path / "r" / "checkpoint_last.pt")], capsys)
    assert json.loads(out)["config"]["model"]["width"] == 4
    code, out, _ = run(["knn", "--checkpoint", str(tmp_path / "r" / "checkpoint_last.pt"), "--train",
                        str(tiny_data / "train"), "--test", str(tiny_data / "test"), "--k", "5",
                        "--json", str(tmp_path / "knn.json"), "--no-progress"], capsys)
    assert code == 0
    res = json.loads((tmp_path / "knn.json").read_text())
    assert {"top1", "top5", "n_train", "n_test"} <= res.keys() and res["n_train"] == 48 and res["n_test"] == 16
    # the same evaluation as the monitor's final kNN (k differs, so only sanity)
    assert 0 <= res["top1"] <= 100
    # a second pretrain into the same folder is refused; --resume auto on a finished run is a no-op
    code, _, err = run(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert code == 2 and "already holds a run" in err
    run_dir = tmp_path / "r"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    with caplog.at_level(logging.INFO, logger="moco"):
        code, out, _ = run(["pretrain", "--data", str(tiny_data), "--out", str(run_dir), "--resume", "auto",
                            *TINY], capsys)
    assert code == 0 and "run already finished (epoch 2" in caplog.text
    assert json.loads(out.strip().splitlines()[-1])["step"] == summary["step"]  # nothing trained
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {k: v for k, v in before.items()
                                                                       if k != "config.yaml"}


def test_bad_checkpoints_exit_1(capsys, tmp_path):
    (tmp_path / "x.pt").write_text("not a checkpoint")
    code, _, err = run(["info", str(tmp_path / "x.pt")], capsys)
    assert code == 1 and "not a readable PyTorch checkpoint" in err
    import torch

    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    code, _, err = run(["info", str(tmp_path / "other.pt")], capsys)
    assert code == 1 and "not a momentum-contrast checkpoint" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "moco", "pretrain", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout and "--resume" in out.stdout


def _photos(root, side_w, side_h, n=8):
    from PIL import Image

    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (side_w, side_h), (40 * c, 9 * i, 90)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("side", [160, 32])
def test_the_start_line_says_the_sizes_of_the_recipe_chosen_for_the_images(tmp_path, caplog, capsys, side):
    data = _photos(tmp_path / f"photos{side}", side, side - 20 if side > 32 else side)
    argv = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--no-progress", "--no-knn", "--set", "method.K=40", "--set", "model.width=4",
            "--set", "train.precision=bf16", "--set", "model.bn_splits=2"]
    with caplog.at_level(logging.INFO, logger="moco"):
        assert main(argv) == 0
    start = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pretraining"))
    if side == 32:
        assert "training views 32 px (cifar augmentation), evaluation 32 px" in start
    else:  # photos of 140 px: a view the machine's speed picks, never larger than the images
        view = int(start.split("training views ")[1].split(" px")[0])
        assert view in (32, 48, 64, 96, 128) and f"evaluation {view} px" in start
    capsys.readouterr()
