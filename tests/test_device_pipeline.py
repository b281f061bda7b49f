"""The decode-on-device pipeline (data.pipeline=device), run here with the CPU as the device."""

import logging

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from moco.config import resolve
from moco.core.distributed import DistInfo
from moco.data.cache import decode_images
from moco.data.encoded import EncodedFiles, decode_on_device
from moco.data.folder import scan_images
from moco.data.pipelines import cached_batches, device_batches
from moco.schedules import view_size_at


def jpeg_folder(root, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            arr = np.clip(rng.integers(0, 256, 3) + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.jpg", quality=95)
    return root


def test_workers_read_bytes_for_rgb_jpeg_and_decode_everything_else(tmp_path):
    root = jpeg_folder(tmp_path / "d", [(20, 30)])
    Image.fromarray(np.full((12, 9), 77, np.uint8), "L").save(root / "class0" / "gray.jpg")
    Image.fromarray(np.full((10, 10, 4), 200, np.uint8), "RGBA").save(root / "class1" / "alpha.png")
    ds = EncodedFiles(scan_images(root))
    items = {str(ds.images.paths[i]): ds[i][0] for i in range(len(ds))}
    assert items["class0/000.jpg"].dim() == 1  # encoded bytes, decoded later on the device
    assert items["class0/gray.jpg"].shape == (3, 12, 9)  # grayscale -> RGB by PIL in the worker
    assert items["class1/alpha.png"].shape == (3, 10, 10)
    imgs = decode_on_device(list(items.values()), torch.device("cpu"))
    assert [tuple(t.shape) for t in imgs][:1] == [(3, 20, 30)] and all(t.dtype == torch.uint8 for t in imgs)


def test_corrupt_jpegs_are_skipped_or_replaced_with_a_warning(tmp_path, caplog):
    root = jpeg_folder(tmp_path / "d", [(64, 64), (64, 64)])
    good = (root / "class0" / "000.jpg").read_bytes()
    (root / "class1" / "000.jpg").write_bytes(good[:40])  # header only: the worker's PIL fallback fails -> skipped
    (root / "class1" / "001.jpg").write_bytes(good[: len(good) // 2])  # frame header intact, data cut
    ds = EncodedFiles(scan_images(root))
    items = [ds[i] for i in range(len(ds))]
    assert items[2][1] == 3 and items[2][2][0][0] == 2  # the next image took its place; the failure is reported
    assert "class1/000.jpg" in ds.images.paths[items[2][2][0][0]]
    with caplog.at_level(logging.WARNING, logger="moco"):
        imgs = decode_on_device([t for t, _, _ in items], torch.device("cpu"), ["a", "b", "c", "cut.jpg"])
    assert len(imgs) == 4 and "cut.jpg" in caplog.text  # a decode failure on the device: named, replaced


def test_device_views_match_the_cached_pipeline(tmp_path):
    """Same images, same draws: the device pipeline's views are the cached pipeline's (up to JPEG decoders)."""
    root = jpeg_folder(tmp_path / "d", [(16, 16)] * 8)
    cfg = resolve("cifar10-cpu", overrides=["data.image_size=16", "optim.batch_size=8", "data.workers=0",
                                            f"data.cache_dir={tmp_path / 'c'}"])
    images = scan_images(root)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    d, b = cfg.data, cfg.optim.batch_size
    cached = list(cached_batches(decode_images(images, 16, cfg.data.cache_dir, 0, progress=False), perm, 0, d, b,
                                 torch.Generator().manual_seed(1), torch.device("cpu")))
    device = list(device_batches(EncodedFiles(images), perm, 0, d, b, torch.Generator().manual_seed(1),
                                 torch.device("cpu")))
    assert len(cached) == len(device) == 2
    for (a1, a2, ai), (b1, b2, bi) in zip(cached, device):
        assert torch.equal(ai, bi)
        assert (a1 - b1).abs().mean() < 0.02 and (a2 - b2).abs().mean() < 0.02  # normalised units


def test_device_pipeline_slices_the_global_batch_like_cached(tmp_path):
    root = jpeg_folder(tmp_path / "d", [(16, 16), (20, 24), (30, 18), (16, 40)])
    cfg = resolve("cifar10-cpu", overrides=["data.image_size=16", "optim.batch_size=4", "data.workers=0",
                                            "model.bn_splits=2"])
    images = scan_images(root)
    perm = torch.arange(len(images))
    d, b = cfg.data, cfg.optim.batch_size
    one = list(device_batches(EncodedFiles(images), perm, 0, d, b, torch.Generator().manual_seed(3),
                              torch.device("cpu")))
    halves = [list(device_batches(EncodedFiles(images), perm, 0, d, b, torch.Generator().manual_seed(3),
                                  torch.device("cpu"), DistInfo(rank=r, world_size=2))) for r in range(2)]
    for step in range(2):
        joined = torch.cat([halves[0][step][0], halves[1][step][0]])
        assert torch.equal(joined, one[step][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_pretrain_with_device_pipeline(tmp_path, workers):
    from moco.tasks.pretrain import pretrain

    root = jpeg_folder(tmp_path / "data" / "train", [(16, 16), (24, 20), (18, 30)] * 4)
    cfg = tiny_config(tmp_path, "data.pipeline=device", f"data.workers={workers}", "optim.epochs=1")
    res = pretrain(cfg, root, tmp_path / "run", progress=False, knn=False)
    assert np.isfinite(res.metrics["loss"]) and res.epoch == 1


def test_train_size_sets_the_views_of_every_pipeline_and_not_evaluation(tmp_path):
    from moco.config import ConfigError
    from moco.data.pipelines import TwoViews

    root = jpeg_folder(tmp_path / "d", [(16, 16)] * 4)
    cfg = resolve("cifar10-cpu", overrides=["data.image_size=16", "data.train_size=12", "optim.batch_size=4",
                                            "model.bn_splits=2", "data.workers=0", f"data.cache_dir={tmp_path / 'c'}"])
    images = scan_images(root)
    perm, gen, cpu = torch.arange(len(images)), torch.Generator().manual_seed(0), torch.device("cpu")
    decoded = decode_images(images, 16, cfg.data.cache_dir, 0, progress=False)
    assert decoded.array.shape[1:3] == (16, 16)  # the cache (and so evaluation) stays at image_size
    for v1, v2, _ in [next(cached_batches(decoded, perm, 0, cfg.data, cfg.optim.batch_size, gen, cpu)),
                      next(device_batches(EncodedFiles(images), perm, 0, cfg.data, cfg.optim.batch_size, gen, cpu))]:
        assert v1.shape == v2.shape == (4, 3, 12, 12)
    a, b, _, _ = TwoViews(images, cfg.data, strict=True)[0]
    assert a.shape == b.shape == (3, 12, 12)
    with pytest.raises(ConfigError, match="train_size"):
        resolve("cifar10-cpu", overrides=["data.train_size=4"])
    with pytest.raises(ConfigError, match="ViTs"):
        resolve("cifar10-v3-cpu", overrides=["model.arch=vit_tiny", "model.patch_size=4", "data.train_size=16"])


def test_progressive_resizing_schedule_and_its_limits():
    from moco.config import ConfigError

    cfg = resolve("cifar10-cpu", overrides=["data.ramp_size=16", "data.ramp_epochs=[0,10]", "optim.epochs=14"])
    assert [view_size_at(cfg.data, e) for e in range(14)] == [16, 16, 16, 20, 20, 24, 24, 24, 28, 28, 32, 32, 32, 32]
    late = resolve("cifar10-cpu", overrides=["data.ramp_size=16", "data.ramp_epochs=[2,4]", "data.train_size=24"])
    assert [view_size_at(late.data, e) for e in range(6)] == [16, 16, 16, 20, 24, 24]  # up to train_size
    assert [view_size_at(resolve("cifar10-cpu").data, e) for e in range(3)] == [32, 32, 32]  # off by default
    for bad, match in [(["data.ramp_size=40"], "ramp_size"), (["data.ramp_size=4"], "ramp_size"),
                       (["data.ramp_size=16", "data.ramp_epochs=[5,2]"], "ramp_epochs"),
                       (["data.ramp_epochs=[1]"], "ramp_epochs")]:
        with pytest.raises(ConfigError, match=match):
            resolve("cifar10-cpu", overrides=bad)
    with pytest.raises(ConfigError, match="ViTs"):
        resolve("cifar10-v3-cpu", overrides=["model.arch=vit_tiny", "model.patch_size=4", "data.ramp_size=16"])


def test_pipelines_make_views_of_the_epochs_size(tmp_path):
    from moco.data.pipelines import TwoViews

    root = jpeg_folder(tmp_path / "d", [(16, 16)] * 4)
    cfg = resolve("cifar10-cpu", overrides=["data.image_size=16", "optim.batch_size=4", "model.bn_splits=2",
                                            "data.workers=0", f"data.cache_dir={tmp_path / 'c'}"])
    images = scan_images(root)
    perm, gen, cpu = torch.arange(len(images)), torch.Generator().manual_seed(0), torch.device("cpu")
    decoded = decode_images(images, 16, cfg.data.cache_dir, 0, progress=False)
    d, b = cfg.data, cfg.optim.batch_size
    for v1, v2, _ in [next(cached_batches(decoded, perm, 0, d, b, gen, cpu, size=8)),
                      next(device_batches(EncodedFiles(images), perm, 0, d, b, gen, cpu, size=8))]:
        assert v1.shape == v2.shape == (4, 3, 8, 8)
    ds = TwoViews(images, cfg.data, strict=True)
    ds.set_size(12)
    v1, v2, _, _ = ds[0]
    assert v1.shape == v2.shape == (3, 12, 12)
