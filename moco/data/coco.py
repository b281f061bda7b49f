"""Detection data in the COCO format: reading and checking an annotation file, loading its images with their
targets, and the batches ``moco detect`` trains on.

:func:`read_coco` keeps what a detector can learn from and counts the rest, each kind once in one warning
line (or, ``strict``, refuses the first with one line): an annotation of an unknown image or category, an
image whose file is missing, a box that is malformed, of zero area or outside its image. A malformed file is
refused. Crowd regions (``iscrowd``) stay in the ground truth that COCO AP is scored against, as the COCO
evaluator expects, and are not trained on, as in Detectron2. Images without boxes are valid, and category ids
need not be contiguous: the detector's classes are the categories in id order, 1..C (0 is the background).
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from moco.core.distributed import SINGLE_PROCESS, DistInfo, rank_slice
from moco.core.errors import DataError
from moco.data.folder import ImageList, first_readable, load_rgb
from moco.data.pipelines import _slices, from_workers, note_lost

log = logging.getLogger("moco")
EDGE_TOLERANCE = 1.0  # px a box may pass its image's edge (clipped back); beyond it the box is out of bounds
Target = dict[str, torch.Tensor]


@dataclass
class CocoSet:
    """An annotation file's usable images, their training targets, and the checked ground truth."""

    ann_file: Path
    images: ImageList  # root = the images folder, paths = file names; labels None
    ids: list[int]  # the COCO image ids, in the order of ``images``
    sizes: list[tuple[int, int]]  # (height, width) as the annotations give them
    boxes: list[torch.Tensor]  # per image (n, 4) x1, y1, x2, y2 in pixels, crowd regions left out
    labels: list[torch.Tensor]  # per image (n,) int64 class indices 1..C
    segmentations: list[list[Any]] | None  # per image, each box's polygons or RLE (when every box has one)
    categories: list[dict[str, Any]]  # {"id", "name"} in id order: class index i + 1 is categories[i]
    gt: dict[str, Any]  # the checked file (kept images and annotations, crowd included) for the COCO evaluator
    skipped: Counter[str] = field(default_factory=Counter)  # annotations left out, by reason
    crowd: int = 0  # crowd regions (in the ground truth, not trained on)
    keypoints: list[torch.Tensor] | None = None  # per image (n, K, 3) x, y, visibility, when the categories
    # name keypoints (COCO's person_keypoints files)
    keypoint_names: list[str] = field(default_factory=list)  # the categories' "keypoints", in order
    sigmas: list[float] | None = None  # the categories' per-keypoint OKS sigmas, when the file gives them

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def n_boxes(self) -> int:
        return sum(len(b) for b in self.boxes)

    def median_short_side(self) -> int:
        return int(statistics.median(min(s) for s in self.sizes)) if self.sizes else 0

    def decoded_mb(self) -> float:
        """The images' size decoded (RGB, one byte a channel) in MB, from the sizes the annotations give."""
        return sum(3 * h * w for h, w in self.sizes) / 2**20


def _refuse(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}")


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _refuse(path, "annotation file not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _refuse(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _refuse(path, f"cannot be read ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("categories"), list):
        raise _refuse(path, "not a COCO annotation file (it needs 'images' and 'categories' lists)")
    if not isinstance(d.get("annotations", []), list):
        raise _refuse(path, "'annotations' must be a list")
    return d


def _categories(path: Path, d: dict[str, Any]) -> list[dict[str, Any]]:
    cats: dict[int, str] = {}
    for c in d["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise _refuse(path, f"a category needs an integer 'id', got {c!r}")
        if c["id"] in cats:
            raise _refuse(path, f"category id {c['id']} appears twice")
        cats[c["id"]] = str(c.get("name", c["id"]))
    if not cats:
        raise _refuse(path, "no categories")
    return [{"id": i, "name": cats[i]} for i in sorted(cats)]


def _keypoint_names(path: Path, d: dict[str, Any]) -> tuple[list[str], list[float] | None]:
    """The keypoints the categories name (every category that names any names the same ones), and their OKS
    sigmas when the file gives them (a category's ``sigmas``, one per keypoint)."""
    named = [c for c in d["categories"] if c.get("keypoints")]
    if not named:
        return [], None
    names = named[0]["keypoints"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _refuse(path, f"category {named[0]['id']}'s 'keypoints' must be a list of names")
    if any(c["keypoints"] != names for c in named):
        raise _refuse(path, "the categories name different keypoints; a keypoint detector predicts one set")
    sigmas = named[0].get("sigmas")
    if sigmas is not None and (not isinstance(sigmas, list) or len(sigmas) != len(names)
                               or not all(isinstance(v, (int, float)) and v > 0 for v in sigmas)):
        raise _refuse(path, f"category {named[0]['id']}'s 'sigmas' must be {len(names)} positive numbers")
    return list(names), [float(v) for v in sigmas] if sigmas else None


def _keypoints(ann: dict[str, Any], k: int) -> list[list[float]] | None:
    """An annotation's ``keypoints`` as k (x, y, visibility) triples; none given: k invisible ones; None when
    malformed."""
    kp = ann.get("keypoints")
    if kp is None:
        return [[0.0, 0.0, 0.0]] * k
    if not isinstance(kp, list) or len(kp) != 3 * k or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in kp):
        return None
    return [[float(kp[3 * j]), float(kp[3 * j + 1]), float(kp[3 * j + 2])] for j in range(k)]


def flip_permutation(names: list[str]) -> list[int]:
    """Where each keypoint goes when its image is mirrored: its left/right twin by name (``left_eye`` <->
    ``right_eye``, ``top_left`` <-> ``top_right``), itself when it has none."""
    index = {n: i for i, n in enumerate(names)}

    def twin(n: str) -> str:
        return re.sub("left|right|Left|Right|LEFT|RIGHT", lambda m: {"left": "right", "right": "left", "Left": "Right",
                                                                   "Right": "Left", "LEFT": "RIGHT",
                                                                   "RIGHT": "LEFT"}[m.group(0)], n)

    return [index.get(twin(n), i) for i, n in enumerate(names)]


def _box(ann: dict[str, Any], h: int, w: int) -> tuple[list[float] | None, str]:
    """(x1, y1, x2, y2) of an annotation's ``bbox``, clipped within :data:`EDGE_TOLERANCE`, or (None, why)."""
    b = ann.get("bbox")
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b):
        return None, "malformed bbox"
    x, y, bw, bh = (float(v) for v in b)
    if bw <= 0 or bh <= 0:
        return None, "zero-area box"
    t = EDGE_TOLERANCE
    if x < -t or y < -t or x + bw > w + t or y + bh > h + t:
        return None, "box out of bounds"
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
    if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
        return None, "zero-area box"
    return [x1, y1, x2, y2], ""


def _image_entries(path: Path, d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The file's image entries by id, each checked (an integer id, a file name, a positive size; no id twice)."""
    images: dict[int, dict[str, Any]] = {}
    for im in d["images"]:
        ok = (isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
              and all(isinstance(im.get(k), int) and im[k] > 0 for k in ("width", "height")))
        if not ok:
            raise _refuse(path, f"an image entry needs an integer id, a file_name, width and height; got {im!r}")
        if im["id"] in images:
            raise _refuse(path, f"image id {im['id']} appears twice")
        images[im["id"]] = im
    return images


def _usable_box(ann: Any, images: dict[int, dict[str, Any]], missing: set[int],
                index: dict[int, int]) -> tuple[list[float] | None, str]:
    """(the box as x1, y1, x2, y2, '') of an annotation training can use, or (None, why it is left out)."""
    if not isinstance(ann, dict):
        return None, "malformed annotation"
    img = ann.get("image_id")
    if img not in images:
        return None, "unknown image id"
    if img in missing:
        return None, "annotation of a missing image file"
    if ann.get("category_id") not in index:
        return None, "unknown category id"
    return _box(ann, images[img]["height"], images[img]["width"])


def _segmentations(path: Path, per_image: list[list[tuple[list[float], int, Any]]], warn: bool) -> list | None:
    """Each image's objects' segmentations, when every object has one (else None: boxes only, said once when
    only some have one)."""
    has_seg = [bool(s) for objs in per_image for _, _, s in objs]
    if has_seg and all(has_seg):
        return [[s for _, _, s in objs] for objs in per_image]
    if any(has_seg) and warn:
        log.warning("%s: %d of %d boxes have no segmentation: training boxes only", path,
                    has_seg.count(False), len(has_seg))
    return None


def _ground_truth(ann: dict[str, Any], box: list[float], kp: list[list[float]] | None, new_id: int) -> dict[str, Any]:
    """An annotation as the COCO evaluator gets it: renumbered (it keys on ids), its box clipped, its area (the
    mask's when the file gives it), and with keypoints their count (COCOeval ignores objects with none visible)."""
    x1, y1, x2, y2 = box
    kept = {**ann, "id": new_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(ann.get("area") or
            (x2 - x1) * (y2 - y1)), "iscrowd": int(bool(ann.get("iscrowd")))}
    if kp is not None:
        kept["num_keypoints"] = sum(v > 0 for _, _, v in kp)
    return kept


def read_coco(ann_file: str | Path, images_dir: str | Path, strict: bool = False, warn: bool = True) -> CocoSet:
    """Read and check a COCO annotation file whose ``file_name`` s are under ``images_dir``."""
    path, root = Path(ann_file).expanduser(), Path(images_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"images folder not found: {root}")
    d = _load_json(path)
    cats = _categories(path, d)
    index = {c["id"]: i + 1 for i, c in enumerate(cats)}
    skipped: Counter[str] = Counter()
    first: dict[str, str] = {}

    def skip(why: str, what: str) -> None:
        if strict:
            raise _refuse(path, f"{what}: {why} (--strict-data refuses it)")
        skipped[why] += 1
        first.setdefault(why, what)

    kp_names, sigmas = _keypoint_names(path, d)
    n_kp = len(kp_names)
    images = _image_entries(path, d)
    missing = {i for i, im in images.items() if not (root / im["file_name"]).is_file()}
    for i in sorted(missing):
        skip("image file missing", f"image {i} ({root / images[i]['file_name']})")
    per_image: dict[int, list[tuple[list[float], int, Any]]] = {i: [] for i in images if i not in missing}
    kps: dict[int, list[list[list[float]]]] = {i: [] for i in per_image}
    kept_anns, crowd = [], 0
    for n, ann in enumerate(d.get("annotations", [])):
        box, why = _usable_box(ann, images, missing, index)
        if box is None:
            skip(why, f"annotation {ann.get('id', f'#{n}') if isinstance(ann, dict) else f'#{n}'}")
            continue
        kp = _keypoints(ann, n_kp) if n_kp else None
        if n_kp and kp is None:
            skip("malformed keypoints", f"annotation {ann.get('id', f'#{n}')}")
            continue
        kept_anns.append(_ground_truth(ann, box, kp, len(kept_anns) + 1))
        if ann.get("iscrowd"):
            crowd += 1
            continue
        per_image[ann["image_id"]].append((box, index[ann["category_id"]], ann.get("segmentation")))
        if kp is not None:
            kps[ann["image_id"]].append(kp)
    order = sorted(per_image)
    segmentations = _segmentations(path, [per_image[i] for i in order], warn)
    if skipped and warn:
        log.warning("%s: left out %s (first: %s)", path,
                    ", ".join(f"{n} x {why}" for why, n in skipped.most_common()),
                    "; ".join(f"{first[w]}" for w in list(first)[:2]))
    gt = {"images": [images[i] for i in order], "annotations": kept_anns, "categories": d["categories"]}
    return CocoSet(
        path, ImageList(root, [images[i]["file_name"] for i in order]), order,
        [(images[i]["height"], images[i]["width"]) for i in order],
        [torch.tensor([b for b, _, _ in per_image[i]], dtype=torch.float32).view(-1, 4) for i in order],
        [torch.tensor([c for _, c, _ in per_image[i]], dtype=torch.int64) for i in order],
        segmentations, cats, gt, skipped, crowd,
        [torch.tensor(kps[i], dtype=torch.float32).view(-1, n_kp, 3) for i in order] if n_kp else None,
        kp_names, sigmas,
    )


def polygons_to_mask(seg: Any, h: int, w: int) -> np.ndarray:
    """A COCO segmentation (polygons, or RLE compressed or not) as an (h, w) uint8 mask (pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle)


class CocoImages(torch.utils.data.Dataset):
    """Item ``i``: (image ``i`` as (3, H, W) uint8, its target, the index read, [(index, why) of files that
    failed]); an image that cannot be read, or whose size is not the annotations', is replaced by the next
    readable one (and passed over from then on, as the folder pipelines do). The target holds ``boxes``,
    ``labels`` and, with ``masks``, the boxes' masks.

    With ``sizes`` (the detector's largest shorter side and its longer side's cap), a JPEG larger than the detector
    will use is decoded at a reduced scale (PIL's draft mode: 1/2, 1/4 or 1/8, never below what the detector
    resizes it to), and its target is scaled with it: :func:`reduction` gives an image's factors, which
    :func:`restore` undoes on a prediction.

    With ``cache_mb`` of room for the whole set decoded (:meth:`CocoSet.decoded_mb`), each image is decoded once,
    on its first read, and then kept in memory (``cache``): read in this process, not in loader workers."""

    def __init__(self, data: CocoSet, masks: bool, strict: bool, cache_mb: float = 0, keypoints: bool = False,
                 sizes: tuple[int, int] = (0, 0)) -> None:
        self.data, self.masks, self.strict = data, masks and data.segmentations is not None, strict
        self.keypoints = keypoints and data.keypoints is not None
        self.sizes = sizes
        self.lost: dict[int, str] = {}
        self.cache: dict[int, torch.Tensor] | None = {} if 0 < data.decoded_mb() <= cache_mb else None

    def workers(self, workers: int) -> int:
        """The loader workers to read with: none when the images are kept in memory."""
        return 0 if self.cache is not None else workers

    def __len__(self) -> int:
        return len(self.data.ids)

    def _read(self, path: Path, k: int) -> torch.Tensor:
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        h, w = self.data.sizes[k]
        img = load_rgb(path, draft_size=draft_side(h, w, *self.sizes))
        if img.size != (w, h) and reduction(img.size[1], img.size[0], h, w) is None:
            raise ValueError(f"it is {img.size[0]}x{img.size[1]}, the annotations say {w}x{h}")
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.cache is not None:
            self.cache[k] = x
        return x

    def target(self, k: int) -> Target:
        t = {"boxes": self.data.boxes[k], "labels": self.data.labels[k]}
        if self.keypoints:
            assert self.data.keypoints is not None
            t["keypoints"] = self.data.keypoints[k]
        if self.masks:
            assert self.data.segmentations is not None
            h, w = self.data.sizes[k]
            ms = [polygons_to_mask(s, h, w) for s in self.data.segmentations[k]]
            t["masks"] = torch.from_numpy(np.stack(ms)) if ms else torch.zeros((0, h, w), dtype=torch.uint8)
        return t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target, int, list[tuple[int, str]]]:
        img, k, failed = first_readable(self.data.images, i, self._read, self.lost, self.strict, indexed=True)
        t = self.target(k)
        h, w = self.data.sizes[k]
        factors = reduction(img.shape[1], img.shape[2], h, w)
        return img, (t if factors in (None, (1.0, 1.0)) else scale_target(t, *factors, img.shape[1:])), k, failed


def draft_side(h: int, w: int, short: int, long: int) -> int | None:
    """The side both of a decoded ``h`` x ``w`` image's sides must keep so that the detector, which resizes it to a
    shorter side of ``short`` and a longer side of at most ``long``, loses nothing: None (decode whole) when no
    sizes are given or the image is not larger."""
    if not short:
        return None
    r = min(short / min(h, w), (long or float("inf")) / max(h, w))
    return math.ceil(r * max(h, w)) if r < 0.5 else None


def reduction(dh: int, dw: int, h: int, w: int) -> tuple[float, float] | None:
    """(y, x) factors of an image decoded at ``dh`` x ``dw`` from one of ``h`` x ``w``, when that is a JPEG scale
    reduction (1, 1/2, 1/4 or 1/8, sides rounded up); None when it is another size."""
    for f in (1, 2, 4, 8):
        if (dh, dw) == (-(-h // f), -(-w // f)):
            return dh / h, dw / w
    return None


def scale_target(t: Target, fy: float, fx: float, size: tuple[int, int]) -> Target:
    """A target for its image decoded at (``fy``, ``fx``) of its size (``size``: the decoded (H, W))."""
    out = {**t, "boxes": t["boxes"] * torch.tensor([fx, fy, fx, fy])}
    if "keypoints" in t:
        kp = t["keypoints"].clone()
        kp[..., 0] *= fx
        kp[..., 1] *= fy
        out["keypoints"] = kp
    if "masks" in t:
        m = t["masks"]
        out["masks"] = F.interpolate(m[None].float(), size=tuple(size), mode="nearest")[0].to(m.dtype) if len(m) \
            else m.new_zeros((0, *size))
    return out


def in_own_size(out: dict[str, torch.Tensor], image: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A prediction on ``image`` in the coordinates of the image file it was decoded from (``size``: (H, W))."""
    factors = reduction(image.shape[-2], image.shape[-1], *size)
    return out if factors in (None, (1.0, 1.0)) else restore(out, *factors, size)


def restore(out: dict[str, torch.Tensor], fy: float, fx: float, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A detector's prediction on an image decoded at (``fy``, ``fx``) of its size, in the image's own
    coordinates (``size``: its (H, W)); masks are thresholded at 0.5 as they are resized, one at a time."""
    res = {**out, "boxes": out["boxes"] / out["boxes"].new_tensor([fx, fy, fx, fy])}
    if "keypoints" in out:
        kp = out["keypoints"].clone()
        kp[..., 0] /= fx
        kp[..., 1] /= fy
        res["keypoints"] = kp
    if "masks" in out:
        res["masks"] = torch.stack([F.interpolate(m[None].float(), size=tuple(size), mode="bilinear")[0] > 0.5
                                    for m in out["masks"]]).to(torch.uint8) if len(out["masks"]) else \
            out["masks"].new_zeros((0, 1, *size), dtype=torch.uint8)
    return res


def flip_target(t: Target, width: int, keypoint_flip: list[int] | None = None) -> Target:
    """A target mirrored left to right, as its image flipped in a ``width``-px frame; keypoints trade places with
    their left/right twins (``keypoint_flip``, :func:`flip_permutation`), and invisible ones stay at (0, 0), as
    COCO keeps them."""
    b = t["boxes"]
    out = {**t, "boxes": torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1) if len(b) else b}
    if "masks" in t:
        out["masks"] = t["masks"].flip(-1)
    if "keypoints" in t:
        kp = t["keypoints"].clone()
        kp[..., 0] = width - kp[..., 0]
        if keypoint_flip is not None:
            kp = kp[:, keypoint_flip]
        kp[kp[..., 2] == 0] = 0
        out["keypoints"] = kp
    return out


def _items(batch: list) -> list:  # the DataLoader's collate: keep the items as they are
    return batch


class DetectionSource:
    """``moco detect``'s batches: this process's slice of each global batch of images, read in DataLoader
    workers, each flipped with probability ``flip`` (drawn for the whole global batch from ``gen``, the same on
    every process); yields (images as float (3, H, W) in [0, 1], their targets, the indices read). The detector
    resizes, normalises and pads."""

    decoded = None  # no decoded cache: images keep their sizes
    streams = False

    def __init__(self, data: CocoSet, masks: bool, flip: float, workers: int, batch_size: int,
                 gen: torch.Generator, device: torch.device, dinfo: DistInfo = SINGLE_PROCESS,
                 strict: bool = False, cache_mb: float = 0, keypoints: bool = False,
                 sizes: tuple[int, int] = (0, 0)) -> None:
        self.data, self.flip, self.batch_size = data, flip, batch_size
        self.gen, self.device, self.dinfo = gen, device, dinfo
        self.dataset = CocoImages(data, masks, strict, cache_mb, keypoints, sizes)
        self.keypoint_flip = flip_permutation(data.keypoint_names) if keypoints else None
        self.workers = self.dataset.workers(workers)
        self.images, self.lost = data.images, self.dataset.lost

    @property
    def samples(self) -> int:
        return len(self.images)

    def steps_per_epoch(self, passes: int = 1) -> int:
        return self.samples * passes // self.batch_size

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[tuple[list, list, torch.Tensor]]:
        b, dinfo = self.batch_size, self.dinfo
        part = rank_slice(b, dinfo)
        batches = [s.tolist() for s in _slices(perm, start, b, dinfo)]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=_items,
            generator=torch.Generator().manual_seed(seed + 7919 * dinfo.rank), pin_memory=self.device.type == "cuda")
        for items in from_workers(loader):
            flips = (torch.rand(b, generator=self.gen) < self.flip)[part]
            note_lost(self.lost, [f for it in items for f in it[3]], self.images)
            images, targets = [], []
            for (img, t, _, _), f in zip(items, flips.tolist()):
                x = img.to(self.device, non_blocking=True).float().div_(255)
                if f:
                    x, t = x.flip(-1), flip_target(t, x.shape[-1], self.keypoint_flip)
                images.append(x)
                targets.append({k: v.to(self.device, non_blocking=True) for k, v in t.items()})
            yield images, targets, torch.tensor([it[2] for it in items])


def eval_batches(ds: CocoImages, batch_size: int, workers: int, device: torch.device,
                 ) -> Iterator[tuple[list[torch.Tensor], list[int]]]:
    """The images of ``ds`` in order, in batches, as float (3, H, W) in [0, 1] with their indices; an
    unreadable image is left out (with a warning), so that it scores as missed."""
    order = list(range(len(ds)))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[order[i:i + batch_size]
                                                            for i in range(0, len(order), batch_size)],
                                         num_workers=ds.workers(workers), collate_fn=_items)
    for items in loader:
        note_lost(ds.lost, [f for it in items for f in it[3]], ds.data.images)
        fresh = {}
        for img, _, k, _ in items:
            fresh.setdefault(k, img)  # a replaced image is the next one again: score each once
        yield [fresh[k].to(device).float().div_(255) for k in fresh], list(fresh)
