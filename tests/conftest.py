"""Shared fixtures: small generated image folders and a tiny, fast config."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moco.config import Config, resolve

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"


def make_image_folder(root: Path, classes: int = 2, per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """An ImageFolder whose classes differ in colour, so that features can separate them."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.random.default_rng(1000 + c).integers(0, 256, 3)  # the class colour, same in every split
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            arr = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """``data/train`` (2 x 24 images) and ``data/test`` (2 x 8 images), 16 px."""
    make_image_folder(tmp_path / "data" / "train", per_class=24, seed=0)
    make_image_folder(tmp_path / "data" / "test", per_class=8, seed=1)
    return tmp_path / "data"


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    return resolve(
        "cifar10-cpu",
        overrides=[
            # width 4 in bf16: torch 2.14's oneDNN hangs in fp32 4-channel channels_last backward passes
            "model.width=4", "train.precision=bf16", "model.bn_splits=2",
            "data.image_size=16", "optim.batch_size=8", "method.K=40",
            "optim.epochs=3", "data.workers=0", f"data.cache_dir={tmp_path / 'cache'}", "train.log_every=2",
            "train.checkpoint_every=1", *overrides,
        ],
    )


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    return tiny_config(tmp_path)


def fake_checkpoint(path: Path, *overrides: str, width: int = 4):  # noqa: ANN201 - the MoCo model
    """A pretraining checkpoint with random weights (seed 123): a CIFAR-stem ResNet-18 of ``width`` at 16 px
    unless ``overrides`` say otherwise. Its key encoder differs from the query encoder (as after training), so
    that a test can tell which one was loaded. Returns the model it holds."""
    import torch

    from moco.methods import build_moco
    from moco.training.checkpoint import FORMAT

    cfg = resolve("cifar10-cpu", overrides=[f"model.width={width}", "data.image_size=16", "method.K=40",
                                            "optim.batch_size=8", *overrides])
    torch.manual_seed(123)
    model = build_moco(cfg)
    with torch.no_grad():
        for p in model.encoder_k.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "epoch": 1, "step": 1, "model": model.state_dict()}, path)
    return model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-image caches of tests go to a temporary folder, not ~/.cache."""
    monkeypatch.setenv("MOCO_CACHE", str(tmp_path_factory.getbasetemp() / "moco-cache"))
