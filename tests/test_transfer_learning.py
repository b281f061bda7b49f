"""Fine-tuning and detection learn, in the default suite (as tests/test_learning.py for pretraining): short runs
from random init on small sets reach scores far above what they would with their labels paired with the wrong
images, with flipped images keeping unflipped boxes, or with the backbone left out of the optimiser.

The thresholds sit between the measured scores of a correct run and of each of those mistakes (slow AVX-512
CPU, fp32, 2026-12-06), so that a mistake fails the test with room on both sides:

- fine-tuning, 1,000 CIFAR-10 images at 16 px, 10 epochs: 27.2% top-1; labels shuffled 11.0%; backbone out of
  the optimiser 15.6% (chance 10%). Threshold 22%.
- detection, 96 canvases of coloured squares, 10 epochs: 59.8 AP; untrained 0; images paired with another
  image's boxes 0.2; flips without their boxes 23.6; backbone out of the optimiser 31.9. Threshold 45.
- keypoints (slow), the same canvases with each square's corners and centre, 10 epochs: keypoint AP 28.8 and
  46.1 in two runs (OKS sigma 0.1); untrained 0. Threshold 15.
"""

import os
import random
from pathlib import Path

import pytest
import torch
from conftest import SHARED_CIFAR, make_image_folder
from test_e2e import subset

from moco.config import resolve
from moco.data.augment import NORMALIZATIONS
from moco.data.coco import read_coco
from moco.data.pasted import PastedSpec, make_pasted_set
from moco.tasks.detect import DetectionMonitor, detect
from moco.tasks.finetune import finetune
from moco.transfer.detector import build_detector
from moco.transfer.init import dense_network as detection_backbone

FINETUNE = ["model.width=16", "model.cifar_stem=true", "train.precision=fp32", "data.image_size=16",
            "optim.batch_size=32", "data.workers=0", "train.log_every=50"]
DETECT = ["model.width=8", "model.cifar_stem=true", "data.image_size=16", "optim.batch_size=8", "data.workers=0",
          "train.precision=fp32", "train.channels_last=false", "train.log_every=50", "detect.min_size=[48]",
          "detect.max_size=80", "detect.rois_per_image=32"]


def shuffled_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """An ImageFolder of links to ``src``'s images, each put in a class drawn at random: labels paired with the
    wrong images."""
    rng = random.Random(seed)
    classes = sorted(p.name for p in src.iterdir())
    for f in sorted(src.rglob("*.jpg")):
        d = dst / rng.choice(classes)
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(f.resolve(), d / f"{f.parent.name}-{f.name}")
    return dst


@pytest.mark.skipif(not (SHARED_CIFAR / "train").is_dir(), reason="shared CIFAR-10 not available")
def test_fine_tuning_learns_and_the_same_run_on_shuffled_labels_does_not(tmp_path):
    data = tmp_path / "cifar"
    subset(SHARED_CIFAR / "train", data / "train", 100)
    subset(SHARED_CIFAR / "test", data / "test", 50)
    shuffled = shuffled_copy(data / "train", tmp_path / "shuffled")
    scores = {}
    for name, train in (("labels", data / "train"), ("shuffled", shuffled)):
        res = finetune(None, None, tmp_path / name, init="random", train_dir=train, test_dir=data / "test",
                       epochs=10, overrides=FINETUNE, progress=False)
        assert res.steps == 10 * (1000 // 32)
        scores[name] = res.top1
    assert scores["labels"] >= 22.0 and scores["shuffled"] <= 16.0, scores


def test_detection_learns_far_beyond_an_untrained_detector(tmp_path):
    objects = make_image_folder(tmp_path / "objects", classes=3, per_class=128, size=16)
    p = tmp_path / "pasted"
    make_pasted_set(objects, p, PastedSpec(96, 32, (64, 48), (1, 2), (12, 20), seed=0), category_ids=[3, 7, 11])
    cfg = resolve("cifar10-cpu", overrides=DETECT)
    val = read_coco(p / "val.json", p / "val")
    torch.manual_seed(0)
    untrained = build_detector(detection_backbone(cfg, "random", "", None), 3, cfg.detect, cfg.detect.min_size,
                               cfg.detect.max_size, *NORMALIZATIONS[cfg.data.normalize])
    before = DetectionMonitor(val, [3, 7, 11], 8, cfg, torch.device("cpu")).evaluate(untrained)["AP"]
    res = detect(None, p / "train.json", p / "train", p / "val.json", p / "val", out=tmp_path / "run",
                 init="random", epochs=10, overrides=DETECT, progress=False)
    assert res.steps == 10 * (96 // 8)
    assert res.AP >= 45.0 and res.AP >= before + 40.0, (before, res.AP)


@pytest.mark.slow
def test_keypoint_rcnn_learns_keypoints_far_beyond_an_untrained_one(tmp_path):
    objects = make_image_folder(tmp_path / "objects", classes=3, per_class=128, size=16)
    p = tmp_path / "pasted"
    make_pasted_set(objects, p, PastedSpec(96, 32, (64, 48), (1, 2), (12, 20), seed=0, keypoints=True),
                    category_ids=[3, 7, 11])
    over = [*DETECT, "train.eval_every=10", "detect.keypoint_head=[32,32,32,32]",
            "detect.oks_sigmas=[0.1,0.1,0.1,0.1,0.1]"]
    cfg = resolve("cifar10-cpu", overrides=over)
    val = read_coco(p / "val.json", p / "val")
    torch.manual_seed(0)
    untrained = build_detector(detection_backbone(cfg, "random", "", None), 3, cfg.detect, cfg.detect.min_size,
                               cfg.detect.max_size, *NORMALIZATIONS[cfg.data.normalize], keypoints=5)
    before = DetectionMonitor(val, [3, 7, 11], 8, cfg, torch.device("cpu"), sigmas=[0.1] * 5).evaluate(untrained)
    res = detect(None, p / "train.json", p / "train", p / "val.json", p / "val", out=tmp_path / "run",
                 init="random", epochs=10, overrides=over, progress=False)
    assert res.metrics["kp_AP"] >= 15.0 and res.metrics["kp_AP"] >= before["kp_AP"] + 12.0, (before, res.metrics)
