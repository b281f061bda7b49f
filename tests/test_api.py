"""The public API (``import moco``): any backbone, your own loop, the whole job on your network, exports."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from api_nets import TinyCNN
from safetensors.torch import load_file

import moco
from moco.cli import main
from moco.core.errors import CheckpointError
from moco.export import export_backbone
from moco.models.resnet import SplitBatchNorm

ROOT = Path(__file__).resolve().parents[1]
FAST = {"model.width": 4, "model.bn_splits": 2, "data.image_size": 16, "optim.batch_size": 8, "method.K": 16,
        "optim.epochs": 2, "data.workers": 0, "train.precision": "fp32", "train.log_every": 2}


def test_the_documented_names_are_exported_with_docstrings():
    for name in moco.__all__:
        obj = getattr(moco, name)
        assert name == "__version__" or obj.__doc__, name
    assert not [n for n in moco.__all__ if n.startswith("_") and n != "__version__"]


def test_moco_around_any_backbone_infers_the_feature_width_and_trains():
    model = moco.MoCo.from_backbone(TinyCNN(), dim=32, K=24, m=0.9, T=0.2, image_size=16)
    assert model.encoder_q.fc[0].in_features == 16  # 16 channels, pooled over space
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    q, k = moco.augment(images, recipe="cifar", generator=torch.Generator().manual_seed(0))
    queue = model.queue.clone()
    loss, logits = model(q, k)
    loss.backward()
    opt.step()
    assert logits.shape == (8, 25) and not torch.equal(model.queue, queue)  # 8 keys went in
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_augment_gives_two_different_views_and_refuses_floats():
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    a, b = moco.augment(images, size=16, recipe="v2", generator=torch.Generator().manual_seed(1))
    assert a.shape == b.shape == (4, 3, 16, 16) and a.dtype == torch.float32 and not torch.equal(a, b)
    with pytest.raises(ValueError, match="uint8"):
        moco.augment(images.float())


def test_config_from_preset_takes_dict_or_list_overrides():
    assert moco.Config.from_preset("cifar10-demo", {"method.K": 8192}).method.K == 8192
    assert moco.Config.from_preset("cifar10-demo", ["optim.epochs=3"]).optim.epochs == 3


def test_a_custom_network_pretrains_through_the_api_and_loads_back_strictly(tiny_data, tmp_path):
    cfg = moco.Config.from_preset("cifar10-cpu", {**FAST, "data.cache_dir": str(tmp_path / "c")})
    net = TinyCNN()
    res = moco.pretrain(cfg, tiny_data, tmp_path / "run", backbone=net, progress=False)
    assert res.epoch == 2 and "knn_top1" in res.metrics
    assert isinstance(net.body[1], SplitBatchNorm)  # model.bn_splits=2 reaches any BatchNorm2d
    ck = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert ck["config"]["model"]["arch"] == "custom:api_nets.TinyCNN"
    loaded = moco.load_backbone(tmp_path / "run" / "checkpoint_last.pt")  # rebuilt from its import path
    given = moco.load_backbone(tmp_path / "run" / "checkpoint_last.pt", backbone=TinyCNN())
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), given(x)) and loaded(x).shape == (2, 16)
    out = export_backbone(tmp_path / "run" / "checkpoint_last.pt", "torchvision", tmp_path / "tiny.pth")
    TinyCNN().load_state_dict(torch.load(out, weights_only=True), strict=True)
    # resume refuses another network
    with pytest.raises(CheckpointError, match="model.arch"):
        moco.pretrain(cfg, tiny_data, tmp_path / "run", resume="auto", progress=False)


def test_a_custom_network_pretrains_through_the_cli(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sets = [x for k, v in {**FAST, "data.cache_dir": tmp_path / "c"}.items() for x in ("--set", f"{k}={v}")]
    assert main(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--no-progress",
                 "--set", "model.arch=custom:api_nets.TinyCNN", *sets]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "r" / "checkpoint_last.pt"), "--format", "safetensors",
                 "--out", str(tmp_path / "t.safetensors")]) == 0
    TinyCNN().load_state_dict(load_file(str(tmp_path / "t.safetensors")), strict=True)


@pytest.mark.parametrize("via", ["api", "cli"])
def test_torchvision_mobilenet_pretrains_and_exports_into_torchvision(tiny_data, tmp_path, capsys, via):
    over = {**FAST, "model.arch": "torchvision:mobilenet_v3_small", "data.cache_dir": str(tmp_path / "c")}
    if via == "api":
        moco.pretrain(moco.Config.from_preset("cifar10-cpu", over), tiny_data, tmp_path / "r", progress=False)
    else:
        sets = [x for k, v in over.items() for x in ("--set", f"{k}={v}")]
        assert main(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--no-progress", *sets]) == 0
    ck = tmp_path / "r" / "checkpoint_last.pt"
    for fmt, load in (("torchvision", lambda p: torch.load(p, weights_only=True)),
                      ("safetensors", lambda p: load_file(str(p)))):
        out = export_backbone(ck, fmt, tmp_path / f"m.{fmt}")
        net = torchvision.models.mobilenet_v3_small()
        net.classifier = torch.nn.Identity()  # a pretrained backbone has no classifier
        net.load_state_dict(load(out), strict=True)
        net.eval()
        with torch.no_grad():
            assert torch.allclose(net(torch.rand(2, 3, 16, 16) * 0 + 0.5), moco.load_backbone(ck)(
                torch.rand(2, 3, 16, 16) * 0 + 0.5), atol=1e-5)


def test_a_timm_backbone_works_when_timm_is_installed(tiny_data, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'momentum-contrast[timm]'")
    over = {**FAST, "model.arch": "timm:resnet10t", "data.cache_dir": str(tmp_path / "c")}
    moco.pretrain(moco.Config.from_preset("cifar10-cpu", over), tiny_data, tmp_path / "r", progress=False)
    out = export_backbone(tmp_path / "r" / "checkpoint_last.pt", "torchvision", tmp_path / "t.pth")
    timm.create_model("resnet10t", num_classes=0).load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_unknown_backbones_get_one_line(capsys):
    assert main(["pretrain", "--set", "model.arch=torchvision:mobilenet_v3_smal", "--print-config"]) == 2
    assert "did you mean 'torchvision:mobilenet_v3_small'" in capsys.readouterr().err


@pytest.mark.parametrize("script,args", [
    ("own_loop.py", ["--steps", "2", "--batch-size", "8", "--size", "16"]),
    ("custom_backbone.py", ["--epochs", "1", "--batch-size", "8"]),
])
def test_examples_run(tiny_data, tmp_path, script, args):
    extra = ["--data", str(tiny_data / "train")] if script == "own_loop.py" else [
        "--data", str(tiny_data), "--out", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *extra, *args], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("step 2" in r.stdout) if script == "own_loop.py" else ("features: (4, 256)" in r.stdout)
