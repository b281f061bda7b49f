"""Export and evaluation of backbones: torchvision/Detectron2/safetensors, authors' checkpoints, linear, embed."""

import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from moco.cli import main
from moco.config import resolve
from moco.data.augment import eval_batch
from moco.data.cache import decode_images
from moco.data.folder import scan_images
from moco.evaluation.linear import LinearConfig, augmented_features, linear_eval, train_augment
from moco.export import detectron2_name, export_backbone, infer_resnet, load_backbone, load_backbone_and_config
from moco.methods import build_moco
from moco.training.checkpoint import FORMAT


def fake_checkpoint(path, *overrides):
    """A momentum-contrast checkpoint with random weights (no training needed)."""
    cfg = resolve("cifar10-cpu", overrides=list(overrides))
    torch.manual_seed(0)
    model = build_moco(cfg)
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "epoch": 1, "step": 1, "model": model.state_dict()}, path)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_export_loads_strictly(tmp_path, arch):
    model = fake_checkpoint(tmp_path / "ck.pt", f"model.arch={arch}", "model.width=64", "model.cifar_stem=false",
                            "model.head=mlp")
    out = export_backbone(tmp_path / "ck.pt", "torchvision", tmp_path / "bb.pth")
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith(("fc.", "encoder_q.", "module.")) for k in state)
    net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()  # the classifier is not part of the pretrained backbone
    net.load_state_dict(state, strict=True)
    net.eval()
    enc = model.encoder_q.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(net(x), enc.forward_features(x), atol=1e-5)
    st = tmp_path / "bb.safetensors"
    export_backbone(tmp_path / "ck.pt", "safetensors", st)
    from safetensors.torch import load_file

    st_state = load_file(str(st))
    assert st_state.keys() == state.keys() and all(torch.equal(st_state[k], state[k]) for k in state)


def expected_detectron2_r50_keys() -> set[str]:
    keys = {f"stem.conv1.{p}" for p in ("weight",)}
    keys |= {f"stem.conv1.norm.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(blocks):
            for c in (1, 2, 3):
                keys.add(f"res{stage}.{b}.conv{c}.weight")
                keys |= {f"res{stage}.{b}.conv{c}.norm.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
        keys.add(f"res{stage}.0.shortcut.weight")
        keys |= {f"res{stage}.0.shortcut.norm.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    return keys


def test_detectron2_export_names_r50(tmp_path):
    fake_checkpoint(tmp_path / "ck.pt", "model.arch=resnet50", "model.width=64", "model.cifar_stem=false")
    out = export_backbone(tmp_path / "ck.pt", "detectron2", tmp_path / "r50.pkl")
    with open(out, "rb") as f:
        obj = pickle.load(f)
    assert obj["__author__"] == "MOCO" and obj["matching_heuristics"] is True
    assert set(obj["model"]) == expected_detectron2_r50_keys()
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())
    assert detectron2_name("layer3.1.bn2.running_var") == "res4.1.conv2.norm.running_var"


def test_authors_checkpoint_layout(tmp_path, capsys, tiny_data):
    """checkpoint_XXXX.pth.tar of the authors' main_moco.py: module.encoder_q.* / module.encoder_k.* / queue."""
    model = build_moco(resolve("cifar10-cpu", overrides=["model.arch=resnet50", "model.width=64",
                                                         "model.cifar_stem=false", "model.head=mlp"]))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "checkpoint_0199.pth.tar")
    net, cfg = load_backbone_and_config(tmp_path / "checkpoint_0199.pth.tar")
    assert (cfg.model.arch, cfg.model.width, cfg.model.cifar_stem, cfg.data.image_size) == ("resnet50", 64, False, 224)
    enc = model.encoder_q.eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(net(x), enc.forward_features(x), atol=1e-5)
    assert main(["export", "--checkpoint", str(tmp_path / "checkpoint_0199.pth.tar"), "--format", "torchvision",
                 "--out", str(tmp_path / "r50.pth")]) == 0
    assert main(["knn", "--checkpoint", str(tmp_path / "checkpoint_0199.pth.tar"), "--train",
                 str(tiny_data / "train"), "--test", str(tiny_data / "test"), "--image-size", "32", "--k", "3",
                 "--no-progress", "--workers", "0"]) == 0
    assert "kNN (k=3" in capsys.readouterr().out


def test_infer_resnet_variants():
    for arch, width, stem in [("resnet18", 16, True), ("resnet34", 64, False), ("wide_resnet50_2", 64, False)]:
        from moco.models.resnet import build_resnet

        sd = build_resnet(arch, width, stem).state_dict()
        assert infer_resnet(sd) == (arch, width, stem)


def test_linear_protocol_keeps_backbone_and_learns(tmp_path, tiny_data):
    fake_checkpoint(tmp_path / "ck.pt", "model.width=8")
    backbone = load_backbone(tmp_path / "ck.pt")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    train = decode_images(scan_images(tiny_data / "train"), 16, workers=0, progress=False)
    test = decode_images(scan_images(tiny_data / "test"), 16, workers=0, progress=False)
    dev = torch.device("cpu")
    for augment, views in ((False, 0), (True, 0), (True, 3)):
        lc = LinearConfig(epochs=30, lr=0.1, batch_size=16, augment=augment, cached_views=views)
        res, clf = linear_eval(backbone, train, test, 16, dev, lc, progress=False)
        assert res["top1"] >= 75.0  # the two classes differ in colour
        assert res["cached_views"] == views
        weight, bias = clf.folded()
        assert weight.shape == (2, 64)
        f = torch.randn(5, 64) * 3 + 1  # the folded map is the classifier, BatchNorm included
        assert torch.allclose(f @ weight.t() + bias, clf(f), atol=1e-4)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, BN statistics included


def test_probing_extracted_features_is_the_linear_protocol(tmp_path, tiny_data):
    """`moco evaluate` probes each label share on one feature pass: the same classifier as linear_eval's."""
    from moco.evaluation.knn import extract_features
    from moco.evaluation.linear import probe_features

    fake_checkpoint(tmp_path / "ck.pt", "model.width=8")
    backbone = load_backbone(tmp_path / "ck.pt")
    train = decode_images(scan_images(tiny_data / "train"), 16, workers=0, progress=False)
    test = decode_images(scan_images(tiny_data / "test"), 16, workers=0, progress=False)
    dev, lc = torch.device("cpu"), LinearConfig(epochs=3, lr=0.05, batch_size=8)
    res, clf = linear_eval(backbone, train, test, 16, dev, lc, "fp32", progress=False)
    f_train, f_test = (extract_features(backbone, x, 16, dev, "fp32", normalize=False) for x in (train, test))
    y_train, y_test = torch.tensor(train.images.labels), torch.tensor(test.images.labels)
    probed, same = probe_features(f_train, y_train, f_test, y_test, 2, lc)
    assert (probed["top1"], probed["top5"], probed["n_train"]) == (res["top1"], res["top5"], res["n_train"])
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), same.state_dict().values()))
    _, other = probe_features(f_train, y_train, f_test, y_test, 2, LinearConfig(epochs=3, lr=0.05, batch_size=8,
                                                                                seed=1))
    assert not torch.equal(other.fc.weight, clf.fc.weight)  # the comparison tells two trainings apart


def test_cached_augmented_views_are_fresh_augmentations_in_dataset_order(tmp_path, tiny_data):
    fake_checkpoint(tmp_path / "ck.pt", "model.width=8")
    backbone = load_backbone(tmp_path / "ck.pt").eval()
    train = decode_images(scan_images(tiny_data / "train"), 16, workers=0, progress=False)
    dev = torch.device("cpu")
    g = torch.Generator().manual_seed(3)
    v1 = augmented_features(backbone, train, 16, dev, "fp32", g, batch_size=5)
    v2 = augmented_features(backbone, train, 16, dev, "fp32", g, batch_size=5)
    assert v1.shape == (len(train.array), 64) and not torch.allclose(v1, v2)  # a new draw per view
    g = torch.Generator().manual_seed(3)  # batch by batch: the same draws, the same images, in order
    idx = torch.arange(5)
    with torch.no_grad():
        direct = backbone.forward_features(train_augment(train.batch(idx), 16, g))
    assert torch.allclose(v1[:5], direct, atol=1e-5)


def test_linear_cli_writes_json_and_classifier(tmp_path, tiny_data, capsys):
    fake_checkpoint(tmp_path / "ck.pt", "model.width=8", "data.image_size=16")
    code = main(["linear", "--checkpoint", str(tmp_path / "ck.pt"), "--train", str(tiny_data / "train"), "--test",
                 str(tiny_data / "test"), "--epochs", "5", "--lr", "0.1", "--batch-size", "16", "--json",
                 str(tmp_path / "lin.json"), "--no-progress", "--workers", "0"])
    assert code == 0
    import json

    res = json.loads((tmp_path / "lin.json").read_text())
    assert {"top1", "top5", "n_train", "n_test"} <= res.keys()
    assert torch.load(tmp_path / "linear_classifier.pt", weights_only=True)["weight"].shape == (2, 64)
    code = main(["linear", "--checkpoint", str(tmp_path / "ck.pt"), "--train", str(tiny_data / "train"), "--test",
                 str(tiny_data / "test"), "--cached-views", "4", "--no-progress", "--workers", "0"])
    assert code != 0 and "--cached-views needs --augment" in capsys.readouterr().err


def test_embed_matches_direct_forward(tmp_path, tiny_data):
    fake_checkpoint(tmp_path / "ck.pt", "model.width=8", "data.image_size=16")
    assert main(["embed", "--checkpoint", str(tmp_path / "ck.pt"), "--data", str(tiny_data / "test"), "--out",
                 str(tmp_path / "e.npz"), "--precision", "fp32", "--no-progress", "--workers", "0"]) == 0
    e = np.load(tmp_path / "e.npz")
    assert e["features"].dtype == np.float32 and e["features"].shape == (16, 64)
    assert list(e["labels"]) == [0] * 8 + [1] * 8 and e["paths"][0] == "class0/000.png"
    net = load_backbone(tmp_path / "ck.pt")
    dec = decode_images(scan_images(tiny_data / "test"), 16, workers=0, progress=False)
    x = eval_batch(torch.from_numpy(np.array(dec.array)).permute(0, 3, 1, 2), 16)
    with torch.no_grad():
        ref = net.forward_features(x)
    assert np.allclose(e["features"], ref.numpy(), atol=1e-4)


def test_neighbors_picture(tmp_path, tiny_data):
    fake_checkpoint(tmp_path / "ck.pt", "model.width=8", "data.image_size=16")
    q = tiny_data / "test" / "class1" / "003.png"
    assert main(["neighbors", "--checkpoint", str(tmp_path / "ck.pt"), "--data", str(tiny_data / "test"),
                 "--query", str(q), "--k", "4", "--out", str(tmp_path / "grid.png"), "--precision", "fp32",
                 "--no-progress", "--workers", "0"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 1000
    from moco.evaluation.retrieval import nearest, query_images

    net = load_backbone(tmp_path / "ck.pt")
    dec = decode_images(scan_images(tiny_data / "test"), 16, workers=0, progress=False)
    _, qs = query_images(q, 16)
    sims, idx = nearest(net, dec, qs, 16, torch.device("cpu"), 4, "fp32")
    assert dec.images.paths[int(idx[0, 0])] == "class1/003.png" and sims[0, 0] > 0.999
