"""COCO AP of a detector's outputs, by pycocotools' ``COCOeval`` (the reference evaluator, not a
re-implementation): AP, AP50, AP75 and AP by object size, for boxes and, when the detector predicts them, masks
and keypoints (OKS with the keypoints' own sigmas).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl")  # COCOeval.stats[0:5] for keypoints (no small objects)
COCO_PERSON_SIGMAS = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089,
                      .089)
"""COCO's 17 person keypoints' OKS sigmas (pycocotools' default)."""


def detections_to_coco(outputs: list[dict[str, torch.Tensor]], image_ids: list[int], category_ids: list[int],
                       ) -> list[dict[str, Any]]:
    """torchvision detector outputs (boxes x1, y1, x2, y2 in the original image, labels 1..C, scores, and
    optionally masks (n, 1, H, W) probabilities or keypoints (n, K, 3)) as COCO result entries; class index i is
    ``category_ids[i - 1]``. Masks are thresholded at 0.5 and run-length encoded."""
    res: list[dict[str, Any]] = []
    for out, img in zip(outputs, image_ids):
        boxes = out["boxes"].float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        labels, scores = out["labels"].tolist(), out["scores"].float().cpu().tolist()
        rles = _rles(out["masks"]) if "masks" in out else None
        kps = out["keypoints"].float().cpu() if "keypoints" in out else None
        for j, (b, c, s) in enumerate(zip(xywh, labels, scores)):
            r = {"image_id": img, "category_id": category_ids[c - 1], "bbox": [round(v, 2) for v in b],
                 "score": round(s, 5)}
            if rles is not None:
                r["segmentation"] = rles[j]
            if kps is not None:  # (x, y, 1) each, as torchvision predicts them
                r["keypoints"] = [round(v, 2) for v in kps[j].flatten().tolist()]
            res.append(r)
    return res


def _rles(masks: torch.Tensor) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    binary = (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
    rles = []
    for m in binary:
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
    return rles


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "bbox",
            sigmas: list[float] | None = None) -> dict[str, float | None]:
    """COCOeval's summary (AP, AP50, AP75, APs, APm, APl, in %; for ``iou_type="keypoints"`` no APs) of
    ``results`` against the ground truth ``gt`` (a COCO annotation dict). No detections score 0; a size with no
    ground truth is None (COCOeval's -1). ``sigmas``: the keypoints' OKS sigmas (default COCO's 17 person
    keypoints')."""
    names = KEYPOINT_STATS if iou_type == "keypoints" else STATS
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its progress and the summary table
        truth = COCO()
        truth.dataset = {"info": {}, **gt}
        truth.createIndex()
        if not results:
            return {k: 0.0 for k in names}
        found = truth.loadRes([dict(r) for r in results])  # loadRes adds fields to the entries it is given
        ev = COCOeval(truth, found, iou_type)
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.array(sigmas or COCO_PERSON_SIGMAS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (round(100.0 * float(v), 3) if v >= 0 else None) for k, v in zip(names, ev.stats)}
