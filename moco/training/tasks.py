"""What a run trains for, as the loop needs it: how a step's logits are scored, and what the end of an epoch
evaluates.

The loop, checkpoints, resume and the time budget are the same for pretraining and fine-tuning; a
:class:`Task` names the training accuracy and scores it, and a :class:`Monitor` is the evaluation run every
``train.knn_every`` epochs and at the end: the kNN monitor of pretraining, or the fine-tuned classifier's
top-1 on the test set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from moco.core.precision import autocast
from moco.data.cache import DecodedImages
from moco.data.coco import CocoSet, eval_batches
from moco.evaluation.coco_ap import coco_ap, detections_to_coco
from moco.evaluation.knn import evaluate_knn, extract_feature_sets
from moco.methods.classifier import hits
from moco.schema import Config


def positive_first(logits: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
    """Which queries found their positive key: the positive logit (column 0) is the largest."""
    return logits.argmax(1) == 0


@dataclass(frozen=True)
class Task:
    """A kind of run: its name (recorded in checkpoints, so that each resumes only its own kind), its training
    accuracy (metrics key, log label, and how a step's logits and the batch's second tensor score it), and
    what to check when the loss stops being finite."""

    name: str
    acc_key: str
    acc_label: str
    hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    causes: Callable[[Config], str]
    unused_parameters: bool = False  # some parameters may get no gradient in a step (DDP must look for them)


TASKS = {
    "pretrain": Task("pretrain", "pretext_acc1", "pretext acc", positive_first,
                     lambda c: f"learning rate too high (optim.lr={c.optim.lr}), temperature too low "
                               f"(method.T={c.method.T}) or low precision (train.precision={c.train.precision})"),
    "finetune": Task("finetune", "train_acc1", "train acc", hits,
                     lambda c: f"learning rate too high (optim.lr={c.optim.lr}, the backbone's x "
                               f"{c.finetune.backbone_lr}) or low precision (train.precision={c.train.precision})"),
    "detect": Task("detect", "box_acc1", "box acc", lambda right, _targets: right,
                   lambda c: f"learning rate too high (optim.lr={c.optim.lr}, the backbone's x "
                             f"{c.finetune.backbone_lr}), no warm-up (optim.warmup_epochs={c.optim.warmup_epochs}) "
                             f"or low precision (train.precision={c.train.precision})", unused_parameters=True),
}
"""The kinds of run the loop trains: ``pretrain`` (a contrastive method), ``finetune`` (a classifier) and
``detect`` (a detector; its training accuracy is the box classifier's on the RoIs it sampled)."""


class Monitor(Protocol):
    """The evaluation at the end of an epoch: record fields, a log fragment, and its cost for a time budget."""

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Score ``model`` (the trained method, its network as ``encoder_q``): the epoch record's fields."""
        ...

    def describe(self, rec: dict[str, Any]) -> str:
        """The log line's fragment for a record that :meth:`evaluate` filled."""
        ...

    def estimate_seconds(self, model: nn.Module) -> float:
        """Seconds :meth:`evaluate` will take, timed on a sample."""
        ...

    # A monitor may set ``cost_follows_model = True`` when its cost changes as the model trains (a detector's
    # boxes); a time budget then trusts the latest timing instead of the largest.


def _time_per_image(run_features: Callable[[DecodedImages], object], test: DecodedImages) -> float:
    """Seconds per image of ``run_features``, timed on 1,024 test images after a warming batch of 256."""
    def timed(n: int) -> float:
        sample = DecodedImages(test.array[:n], test.images, [])
        t0 = time.perf_counter()
        run_features(sample)
        return (time.perf_counter() - t0) / len(sample.array)

    timed(256)
    return timed(1024)


@dataclass
class KnnMonitor:
    """Pretraining's monitor: weighted kNN of the features ``train.knn_features`` names, the labelled
    ``memory`` classifying ``test``."""

    memory: DecodedImages
    test: DecodedImages
    cfg: Config
    device: torch.device

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        c = self.cfg
        t = c.train
        res = evaluate_knn(model.encoder_q, self.memory, self.test, c.data.image_size, self.device, t.precision,
                           t.knn_k, t.knn_t, t.channels_last, norm=c.data.normalize, features=tuple(t.knn_features))
        rec = {"knn_top1": res["top1"], "knn_top5": res["top5"], "knn_features": res["features"]}
        for name in t.knn_features[1:]:
            rec.update({f"knn_{name}_top1": res[f"{name}_top1"], f"knn_{name}_top5": res[f"{name}_top5"]})
        return rec

    def describe(self, rec: dict[str, Any]) -> str:
        extra = "".join(f", {rec[f'knn_{n}_top1']:.2f}% ({n})" for n in self.cfg.train.knn_features[1:])
        return f"  knn top-1 {rec['knn_top1']:.2f}% ({rec['knn_features']}){extra}"

    def estimate_seconds(self, model: nn.Module) -> float:
        c = self.cfg

        def features(sample: DecodedImages) -> object:
            return extract_feature_sets(model.encoder_q, sample, c.data.image_size, self.device,
                                        tuple(c.train.knn_features), c.train.precision,
                                        channels_last=c.train.channels_last, norm=c.data.normalize)

        n = len(self.memory.array) + len(self.test.array)
        return _time_per_image(features, self.test) * n * 1.05 + 0.1


@dataclass
class TestMonitor:
    """Fine-tuning's monitor: the classifier's top-1 and top-5 on ``test`` (centre crops, eval mode), whose
    labels are ``labels`` (indices of the training classes). Top-5 is left out with 5 classes or fewer,
    where it is always 100%."""

    test: DecodedImages
    labels: torch.Tensor
    num_classes: int
    cfg: Config
    device: torch.device

    def logits(self, model: nn.Module, data: DecodedImages | None = None) -> torch.Tensor:
        c = self.cfg
        out = extract_feature_sets(model.encoder_q, data or self.test, c.data.image_size, self.device, ("head",),
                                   c.train.precision, channels_last=c.train.channels_last, normalize=False,
                                   norm=c.data.normalize)["head"]
        model.train(model.training)  # the network's own modes again (frozen BatchNorm stays frozen)
        return out

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        top = self.logits(model).topk(min(5, self.num_classes), dim=1).indices
        right = top == self.labels.view(-1, 1)
        rec: dict[str, Any] = {"test_top1": 100.0 * right[:, 0].float().mean().item()}
        if self.num_classes > 5:
            rec["test_top5"] = 100.0 * right.any(1).float().mean().item()
        return rec

    def describe(self, rec: dict[str, Any]) -> str:
        top5 = f", top-5 {rec['test_top5']:.2f}%" if "test_top5" in rec else ""
        return f"  test top-1 {rec['test_top1']:.2f}%{top5}"

    def estimate_seconds(self, model: nn.Module) -> float:
        return _time_per_image(lambda s: self.logits(model, s), self.test) * len(self.test.array) * 1.05 + 0.1


@dataclass
class DetectionMonitor:
    """Detection's monitor: COCO AP of the detector's boxes (and masks, when it predicts them) on ``val``,
    by pycocotools, in batches of ``batch_size`` images; the detector's class i is ``category_ids[i - 1]``."""

    val: CocoSet
    category_ids: list[int]
    batch_size: int
    cfg: Config
    device: torch.device
    masks: bool = False
    cost_follows_model: bool = True  # an untrained detector boxes more, and is slower to score, than a trained one

    def detections(self, model: nn.Module, limit: int | None = None,
                   marks: list[float] | None = None) -> list[dict[str, Any]]:
        """The COCO result entries of the first ``limit`` (default all) validation images; ``marks`` gets the
        clock after each batch."""
        ids, cats = self.val.ids, self.category_ids
        res: list[dict[str, Any]] = []
        seen = 0
        for images, idx in eval_batches(self.val, self.batch_size, self.cfg.data.workers, self.device):
            with autocast(self.device, self.cfg.train.precision):
                outs = model.detect(images)
            res += detections_to_coco(outs, [ids[k] for k in idx], cats)
            seen += len(idx)
            if marks is not None:
                marks.append(time.perf_counter())
            if limit is not None and seen >= limit:
                break
        return res

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        found = self.detections(model)
        rec: dict[str, Any] = coco_ap(self.val.gt, found, "bbox")
        if self.masks:
            rec.update({f"mask_{k}": v for k, v in coco_ap(self.val.gt, found, "segm").items()})
        rec["detections"] = len(found)
        return rec

    def describe(self, rec: dict[str, Any]) -> str:
        mask = f", mask AP {rec['mask_AP']:.2f}" if rec.get("mask_AP") is not None else ""
        return f"  box AP {rec['AP']:.2f}, AP50 {rec['AP50']:.2f}{mask}"

    def estimate_seconds(self, model: nn.Module) -> float:
        """A full evaluation's seconds, from one pass over three batches: the loader's start and the first batch
        as they took, the rest at the pace of the later batches (the start, forking workers, would count once
        per batch if timed per image), and pycocotools' time, which grows with the detections (400 canvases
        here: 1.75 s for 7,857 boxes, 2.1 s for 40,000)."""
        n, b = len(self.val.ids), self.batch_size
        marks = [time.perf_counter()]
        found = self.detections(model, min(n, 3 * b), marks)
        if len(marks) < 3:  # a set of one batch: the timing is the whole evaluation
            return (marks[-1] - marks[0]) * 1.1 + 1.0
        pace = (marks[-1] - marks[1]) / (len(marks) - 2)  # seconds per batch after the first
        batches = -(-n // b)
        boxes = len(found) * n / min(n, 3 * b)
        return marks[1] - marks[0] + pace * (batches - 1) * 1.1 + 1.5 + 1.5e-5 * boxes  # + COCOeval's time
