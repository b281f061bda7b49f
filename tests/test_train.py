"""The pretraining loop: run directory, exact resume, refusing to mix runs, failures that keep the last checkpoint."""

import json
import math

import pytest
import torch
from conftest import tiny_config

from moco.config import ConfigError, resolve
from moco.core.errors import TrainingError
from moco.data.folder import DataError
from moco.schedules import base_lr, lr_at
from moco.tasks.pretrain import pretrain
from moco.training.checkpoint import CheckpointError, atomic_save, load_checkpoint


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_and_metrics(tmp_path, tiny_data, tiny_cfg):
    res = pretrain(tiny_cfg, tiny_data, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoint_last.pt", "checkpoint_0001.pt", "checkpoint_0003.pt",
                 "curves.png"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir()), "TensorBoard events"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 3 and steps
    for r in steps + epochs:
        assert {"epoch", "step", "loss", "pretext_acc1", "lr", "images_per_sec"} <= r.keys()
    # data/ has a test split beside train: the kNN monitor ran at the last epoch (eval_every=0)
    assert "knn_top1" in epochs[-1] and "knn_top1" not in epochs[0]
    assert res.epoch == 3 and res.step == 3 * (48 // 8)
    ck = load_checkpoint(out / "checkpoint_last.pt")
    assert {"encoder_q.conv1.weight", "encoder_k.conv1.weight", "queue", "queue_ptr"} <= ck["model"].keys()
    assert ck["epoch"] == 3 and ck["optimizer"]["state"]


@pytest.mark.parametrize("stop_at", [8, 6])  # mid-epoch (6 steps per epoch) and at an epoch boundary
def test_resume_continues_exactly(tmp_path, tiny_data, tiny_cfg, stop_at):
    pretrain(tiny_cfg, tiny_data, tmp_path / "full", progress=False)
    part = pretrain(tiny_cfg, tiny_data, tmp_path / "part", progress=False, max_steps=stop_at)
    assert part.stopped
    ck = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert ck["step"] == stop_at
    pretrain(tiny_cfg, tiny_data, tmp_path / "part", resume="auto", progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert states_equal(a["model"], b["model"])  # both encoders, queue and pointer: bit for bit
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


@pytest.mark.parametrize("pipeline", ["per_image", "device"])
def test_resume_continues_exactly_with_the_other_pipelines(tmp_path, tiny_data, pipeline):
    """The per-image (PIL views) and decode-on-device pipelines resume mid-epoch bit for bit too."""
    cfg = tiny_config(tmp_path, f"data.pipeline={pipeline}", "optim.epochs=2")
    pretrain(cfg, tiny_data, tmp_path / "full", progress=False, knn=False)
    assert pretrain(cfg, tiny_data, tmp_path / "part", progress=False, knn=False, max_steps=8).stopped
    pretrain(cfg, tiny_data, tmp_path / "part", resume="auto", progress=False, knn=False)
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] == 12 and states_equal(a["model"], b["model"])


def test_refuses_to_mix_runs(tmp_path, tiny_data, tiny_cfg):
    pretrain(tiny_config(tmp_path, "optim.epochs=1"), tiny_data, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(tiny_cfg, tiny_data, tmp_path / "run", progress=False)
    pretrain(tiny_config(tmp_path, "optim.epochs=1"), tiny_data, tmp_path / "run", overwrite=True, progress=False)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ck["epoch"] == 1


def test_resume_with_another_architecture_is_refused(tmp_path, tiny_data, tiny_cfg):
    pretrain(tiny_cfg, tiny_data, tmp_path / "run", progress=False, max_steps=2)
    with pytest.raises(CheckpointError, match="model.width=4"):
        pretrain(tiny_config(tmp_path, "model.width=8"), tiny_data, tmp_path / "run", resume="auto", progress=False)


def test_non_finite_loss_stops_with_a_message_and_keeps_checkpoint(tmp_path, tiny_data):
    pretrain(tiny_config(tmp_path, "optim.epochs=2"), tiny_data, tmp_path / "run", progress=False, max_steps=6)
    good = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    cfg = tiny_config(tmp_path, "optim.epochs=2", "method.T=1e-38", "train.log_every=1")
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step \d+; .*optim.lr.*checkpoint is kept"):
        pretrain(cfg, tiny_data, tmp_path / "run", resume="auto", progress=False)
    after = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert after["step"] == 6 and torch.equal(after["model"]["queue"], good["model"]["queue"])


def test_too_few_images_for_a_batch(tmp_path, tiny_data):
    with pytest.raises(DataError, match="fewer than one batch of 64"):
        pretrain(tiny_config(tmp_path, "optim.batch_size=64", "method.K=64"), tiny_data / "test", tmp_path / "r",
                 progress=False)


def test_lr_schedules(tmp_path):
    cos = tiny_config(tmp_path, "optim.lr=0.1", "optim.epochs=10")
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 5) == pytest.approx(0.05) and lr_at(cos, 10) < 1e-12
    step = tiny_config(tmp_path, "optim.schedule=step", "optim.milestones=[4, 8]", "optim.epochs=10", "optim.lr=1")
    assert [lr_at(step, e) for e in (0, 3.9, 4, 8.5)] == pytest.approx([1, 1, 0.1, 0.01])
    warm = tiny_config(tmp_path, "optim.warmup_epochs=2", "optim.epochs=10", "optim.lr=1")
    assert lr_at(warm, 1) == pytest.approx(0.5, rel=1e-6)


def test_the_cosine_after_a_warm_up_is_the_v3_authors_curve():
    """facebookresearch/moco-v3 main_moco.py adjust_learning_rate: lr * epoch / warmup during the warm-up, then
    lr * 0.5 * (1 + cos(pi * (epoch - warmup) / (epochs - warmup))): the full lr where the warm-up ends."""
    cfg = resolve("imagenet-v3-vit-s")  # 40 warm-up epochs of 300
    base, w, n = base_lr(cfg), cfg.optim.warmup_epochs, cfg.optim.epochs
    assert (w, n) == (40, 300)

    def authors(epoch: float) -> float:
        if epoch < w:
            return base * epoch / w
        return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / (n - w)))

    for epoch in (0.5, 20, 39.99, 40, 40.01, 100, 170, 250, 299.9, 300):
        assert lr_at(cfg, epoch) == pytest.approx(authors(epoch), rel=1e-6, abs=1e-12), epoch
    assert lr_at(cfg, 40) == pytest.approx(base)  # no drop at the boundary (it was 0.957 x base)
    assert lr_at(cfg, 170) == pytest.approx(base / 2)


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    atomic_save({"a": torch.ones(1000)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"v": torch.tensor(1)}, path)

    class Boom:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*ck.pt"):
        atomic_save({"v": Boom()}, path)
    assert load_checkpoint(path)["v"].item() == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ck.pt.tmp")]


def test_progressive_resizing_run_records_sizes_and_resumes_exactly(tmp_path, tiny_data):
    ramp = ("data.ramp_size=8", "data.ramp_epochs=[0,2]")  # epochs of 8, 12 and 16 px views
    pretrain(tiny_config(tmp_path, *ramp), tiny_data, tmp_path / "full", progress=False, knn=False)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["view_size"] for r in records if r["type"] == "epoch"] == [8, 12, 16]
    pretrain(tiny_config(tmp_path, *ramp), tiny_data, tmp_path / "part", progress=False, knn=False, max_steps=8)
    pretrain(tiny_config(tmp_path, *ramp), tiny_data, tmp_path / "part", resume="auto", progress=False, knn=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert states_equal(a["model"], b["model"])


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, tiny_data, monkeypatch):
    cfg = tiny_config(tmp_path, "optim.epochs=2", "train.checkpoint_every=1")
    pretrain(cfg, tiny_data, tmp_path / "run", progress=False, knn=False)
    run = tmp_path / "run"
    data = (run / "checkpoint_last.pt").read_bytes()
    (run / "checkpoint_last.pt").write_bytes(data[: len(data) // 3])  # a copy cut short
    (run / "checkpoint_0002.pt").write_bytes(b"")  # a full disk
    longer = tiny_config(tmp_path, "optim.epochs=3", "train.checkpoint_every=1")
    from moco.core import checkpoint_files

    said = []  # the warning as written, whatever the logging set-up of the tests before
    monkeypatch.setattr(checkpoint_files.log, "warning", lambda msg, *args: said.append(msg % args))
    res = pretrain(longer, tiny_data, run, resume="auto", progress=False, knn=False)
    warned = [m for m in said if "resuming from" in m]
    assert len(warned) == 1 and "checkpoint_last.pt" in warned[0] and "checkpoint_0001.pt" in warned[0]
    assert res.epoch == 3 and not res.stopped  # trained epochs 2 and 3 again from epoch 1's checkpoint
    for name in ("checkpoint_last.pt", "checkpoint_0001.pt", "checkpoint_0002.pt", "checkpoint_0003.pt"):
        (run / name).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be read"):
        pretrain(longer, tiny_data, run, resume="auto", progress=False, knn=False)
