"""Semantic segmentation's scores, as torchvision's ``references/segmentation`` computes them: a confusion
matrix accumulated over the whole set (pixels of ``ignore_index`` left out), then each class's IoU, their mean
over the classes present (in the ground truth or the predictions), and the pixel accuracy."""

from __future__ import annotations

import math
from typing import Any

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255,
                     ) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of pixels: row = the true class, column = the predicted one;
    pixels whose target is ``ignore_index`` are not counted."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def segmentation_scores(cm: torch.Tensor, classes: list[str] | None = None) -> dict[str, Any]:
    """From a confusion matrix: ``mIoU`` (%, the mean over the classes that occur in the ground truth or the
    predictions; a class in neither has no IoU), ``pixel_acc`` (%), and ``iou`` (per class name, % or None)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = [float(100 * tp[c] / union[c]) if union[c] > 0 else None for c in range(len(cm))]
    present = [v for v in iou if v is not None]
    total = float(cm.sum())
    names = classes or [str(c) for c in range(len(cm))]
    return {"mIoU": sum(present) / len(present) if present else math.nan,
            "pixel_acc": float(100 * tp.sum() / total) if total else math.nan,
            "iou": dict(zip(names, iou))}
