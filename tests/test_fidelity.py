"""Fidelity settings of issue #16: per-preset normalisation, kNN on the backbone or on the head, and the
records that say which was scored."""

import json

import pytest
import torch
import torch.nn.functional as F

from moco.cli import main
from moco.config import resolve
from moco.data.augment import NORMALIZATIONS, eval_batch, sample_params
from moco.data.cache import decode_images
from moco.data.folder import DataError, scan_images
from moco.data.pipelines import cached_batches
from moco.evaluation.knn import evaluate_knn, extract_features, knn_accuracy
from moco.export.backbone import load_backbone, load_encoder_and_config
from moco.tasks.pretrain import pretrain
from moco.training.logging import read_metrics
from tests.conftest import tiny_config
from tests.test_export import fake_checkpoint


def _unnormalize(x, norm):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS[norm])
    return x * std + mean


def test_training_views_and_evaluation_use_the_configured_channel_statistics(tmp_path, tiny_data):
    images = scan_images(tiny_data / "train")
    decoded = decode_images(images, 16, tmp_path / "c", workers=0, progress=False)
    perm, cpu = torch.arange(len(images)), torch.device("cpu")
    views = {}
    for norm in ("imagenet", "cifar10"):
        cfg = resolve("cifar10-demo", overrides=["data.image_size=16", f"data.normalize={norm}"])
        q, k, _ = next(cached_batches(decoded, perm, 0, cfg.data, 8, torch.Generator().manual_seed(0), cpu))
        views[norm] = (q, k)
        x = torch.from_numpy(decoded.array[:4].copy()).permute(0, 3, 1, 2)
        pixels = x.float() / 255
        assert torch.allclose(_unnormalize(eval_batch(x, 16, norm), norm), pixels, atol=1e-5)
    # the same draws, two normalisations: the same pixels underneath
    for a, b in zip(views["imagenet"], views["cifar10"]):
        assert not torch.allclose(a, b)
        assert torch.allclose(_unnormalize(a, "imagenet"), _unnormalize(b, "cifar10"), atol=1e-5)


def test_demo_crop_scale_reaches_the_crop_draws():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    demo = sample_params(4096, 32, 32, "cifar", resolve("cifar10-demo").data.crop_min_scale, g1)
    cpu = sample_params(4096, 32, 32, "cifar", resolve("cifar10-cpu").data.crop_min_scale, g2)
    area = lambda p: ((p.boxes[:, 2] - p.boxes[:, 0]) * (p.boxes[:, 3] - p.boxes[:, 1]) / 1024)  # noqa: E731
    # (0.08, 1) reaches well below 0.2 of the image; (0.2, 1) does not (up to whole-pixel boxes)
    assert area(demo).min() < 0.12 and area(cpu).min() > 0.18


def test_head_knn_scores_the_projection_heads_output_in_the_same_pass(tmp_path, tiny_data):
    model = fake_checkpoint(tmp_path / "ck.pt", "model.width=8", "data.image_size=16")
    encoder, cfg = load_encoder_and_config(tmp_path / "ck.pt")
    train = decode_images(scan_images(tiny_data / "train"), 16, tmp_path / "c", workers=0, progress=False)
    test = decode_images(scan_images(tiny_data / "test"), 16, tmp_path / "c", workers=0, progress=False)
    cpu = torch.device("cpu")
    both = evaluate_knn(encoder, train, test, 16, cpu, "fp32", k=5, features=("backbone", "head"))
    assert both["features"] == "backbone" and {"head_top1", "head_top5"} <= both.keys()
    # by hand: the head's L2-normalised output of the query encoder (weights as trained, BN in eval mode)
    model.encoder_q.eval()
    with torch.no_grad():
        by_hand = [F.normalize(model.encoder_q(eval_batch(torch.from_numpy(d.array.copy()).permute(0, 3, 1, 2), 16)),
                               dim=1) for d in (train, test)]
    expected = knn_accuracy(by_hand[0], torch.tensor(train.images.labels), by_hand[1],
                            torch.tensor(test.images.labels), 2, k=5)
    assert both["head_top1"] == pytest.approx(expected["top1"]) and both["head_top5"] == pytest.approx(expected["top5"])
    head_only = evaluate_knn(encoder, train, test, 16, cpu, "fp32", k=5, features="head")
    assert head_only["features"] == "head" and head_only["top1"] == both["head_top1"]
    feats = extract_features(encoder, test, 16, cpu, "fp32", features="head")
    assert feats.shape == (len(test.array), cfg.model.dim)
    with pytest.raises(DataError, match="projection head"):  # a bare backbone has none
        evaluate_knn(load_backbone(tmp_path / "ck.pt"), train, test, 16, cpu, "fp32", features="head")


def test_knn_cli_records_the_feature_source(tmp_path, tiny_data, capsys):
    fake_checkpoint(tmp_path / "ck.pt", "model.width=8", "data.image_size=16", "data.normalize=cifar10")
    results = {}
    for features in ("backbone", "head"):
        code = main(["knn", "--checkpoint", str(tmp_path / "ck.pt"), "--train", str(tiny_data / "train"),
                     "--test", str(tiny_data / "test"), "--k", "5", "--features", features, "--precision", "fp32",
                     "--json", str(tmp_path / f"{features}.json"), "--no-progress", "--workers", "0"])
        assert code == 0 and f"{features} features" in capsys.readouterr().out
        results[features] = json.loads((tmp_path / f"{features}.json").read_text())
        assert results[features]["features"] == features


def test_monitor_records_which_features_it_scored(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path, "optim.epochs=1", "train.knn_features=[backbone,head]", "data.normalize=cifar10")
    res = pretrain(cfg, tiny_data, tmp_path / "run", progress=False)
    rec = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"][-1]
    assert rec["knn_features"] == "backbone" and 0 <= rec["knn_head_top1"] <= 100 and "knn_head_top5" in rec
    assert res.metrics["knn_head_top1"] == rec["knn_head_top1"]
