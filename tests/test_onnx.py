"""`moco export --format onnx`: onnxruntime's features equal PyTorch's for our ResNets, a torchvision network and a
ViT, at any batch size; the metadata says how to prepare inputs; a missing extra is one line that names it."""

import sys

import pytest
import torch
from conftest import fake_checkpoint

from moco.cli import main
from moco.export.backbone import load_backbone_and_config
from moco.export.onnx import TOLERANCE, check_onnx

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'momentum-contrast[onnx]'")
onnx = pytest.importorskip("onnx")

NETWORKS = {
    "resnet": (),
    "torchvision": ("model.arch=torchvision:resnet18",),
    "vit": ("model.arch=vit_tiny", "model.patch_size=4", "model.head=v3", "method.dictionary=v3"),
}


def _export(tmp_path, capsys, *overrides):
    ck, out = tmp_path / "ck.pt", tmp_path / "net.onnx"
    fake_checkpoint(ck, *overrides)
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(out)]) == 0
    return ck, out, capsys.readouterr().out


@pytest.mark.parametrize("name", ["resnet", pytest.param("torchvision", marks=pytest.mark.slow),
                                  pytest.param("vit", marks=pytest.mark.slow)])
def test_onnxruntime_gives_pytorchs_features_at_any_batch_size(tmp_path, capsys, name):
    ck, out, printed = _export(tmp_path, capsys, *NETWORKS[name])
    net, cfg = load_backbone_and_config(ck)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is named, not fixed
    check = check_onnx(out, net, cfg.data.image_size, batches=(1, 2, 5), seed=1)
    assert check.relative <= TOLERANCE and check.batches == (1, 2, 5)
    assert "onnxruntime against PyTorch" in printed and "largest difference" in printed
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["moco.image_size"] == str(cfg.data.image_size) == "16"
    assert meta["moco.mean"] == "0.485,0.456,0.406" and meta["moco.std"] == "0.229,0.224,0.225"
    assert meta["moco.arch"] == cfg.model.arch


def test_the_check_catches_a_file_that_is_not_the_backbone(tmp_path, capsys):
    ck, out, _ = _export(tmp_path, capsys)
    net, cfg = load_backbone_and_config(ck)
    with torch.no_grad():
        net.layer4[-1].bn2.weight.mul_(1.5)  # the network the file should match, one layer changed
    check = check_onnx(out, net, cfg.data.image_size)
    assert not check.ok and check.relative > 100 * TOLERANCE


def test_a_missing_extra_is_one_line_that_names_it(tmp_path, capsys, monkeypatch):
    ck = tmp_path / "ck.pt"
    fake_checkpoint(ck)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "n.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'momentum-contrast[onnx]'" in err and "onnxruntime is not installed" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "n.onnx").exists()


def test_a_file_that_fails_its_check_is_refused(tmp_path, capsys, monkeypatch):
    from moco.export import formats
    from moco.export.formats import export_backbone
    from moco.export.onnx import OnnxCheck

    ck = tmp_path / "ck.pt"
    fake_checkpoint(ck)
    monkeypatch.setattr(formats, "check_onnx", lambda *a, **k: OnnxCheck(0.5, 0.1, (1, 3)))  # a wrong graph
    with pytest.raises(ValueError, match="differ from PyTorch's by 1.0e-01 of their scale"):
        export_backbone(ck, "onnx", tmp_path / "a.onnx")
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "b.onnx")]) == 1
    assert "do not deploy it" in capsys.readouterr().err
