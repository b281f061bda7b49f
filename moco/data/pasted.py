"""A small detection and segmentation set made from a labelled image folder: its images pasted at random sides
and places onto plain canvases, with their boxes and classes written as COCO annotation files, and a class map
per canvas (a palette PNG: 0 the background, category i in id order i + 1, over each pasted square).

A CPU trains a detector on it in minutes, so ``moco detect`` can be tested and its initialisations compared
without downloading VOC or COCO. Training and validation canvases draw their objects from disjoint halves of
the folder; every draw comes from ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from moco.core.errors import DataError
from moco.data.folder import load_rgb, scan_images

KEYPOINTS = ["top_left", "top_right", "bottom_right", "bottom_left", "centre"]
"""The pasted squares' keypoints (a flip swaps the lefts and rights), each with an OKS sigma of 0.05."""
PALETTE = [v for c in range(256) for v in ((c * 67) % 256, (c * 151) % 256, (c * 37) % 256)]
"""The class maps' colours (to look at them; the value is the class)."""


@dataclass(frozen=True)
class PastedSpec:
    """The set's shape: canvases (width x height), objects per canvas and their sides, and how many canvases."""

    n_train: int = 2000
    n_val: int = 400
    canvas: tuple[int, int] = (128, 96)
    objects: tuple[int, int] = (1, 3)  # per canvas, both ends included
    sides: tuple[int, int] = (24, 48)  # px, both ends included
    empty: float = 0.0  # the share of canvases left without objects
    segmentations: bool = False  # polygons (the pasted squares) for Mask R-CNN
    keypoints: bool = False  # each square's four corners and centre (KEYPOINTS), visible, for Keypoint R-CNN
    seed: int = 0


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A plain colour with a gentle gradient and some noise, (h, w, 3) uint8."""
    base = rng.uniform(40, 215, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None] * rng.uniform(-40, 40, size=3)
    img = base + ramp + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, side: int, w: int, h: int, taken: list[tuple[int, int, int]],
           tries: int = 30) -> tuple[int, int] | None:
    """A place for a ``side``-px square inside the canvas that overlaps none of ``taken`` (x, y, side)."""
    for _ in range(tries):
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        if all(x + side <= tx or tx + ts <= x or y + side <= ty or ty + ts <= y for tx, ty, ts in taken):
            return x, y
    return None


def _split(rng: np.random.Generator, canvases: int, objects: list[int], spec: PastedSpec, folder: Path,
           images: Any, out: Path, name: str, categories: list[dict[str, Any]]) -> dict[str, Any]:
    w, h = spec.canvas
    pool = iter(objects)
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / f"{name}_maps").mkdir(exist_ok=True)
    index = {c["id"]: i + 1 for i, c in enumerate(categories)}
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
    for i in range(canvases):
        img = _background(rng, w, h)
        classes = np.zeros((h, w), dtype=np.uint8)
        taken: list[tuple[int, int, int]] = []
        k = 0 if rng.random() < spec.empty else int(rng.integers(spec.objects[0], spec.objects[1] + 1))
        for _ in range(k):
            side = int(rng.integers(spec.sides[0], spec.sides[1] + 1))
            at = _place(rng, side, w, h, taken)
            if at is None:
                continue
            try:
                j = next(pool)
            except StopIteration:
                raise DataError(f"{folder} has too few images for {canvases} {name} canvases") from None
            x, y = at
            obj = load_rgb(images.root / images.paths[j]).resize((side, side), Image.BICUBIC)
            img[y:y + side, x:x + side] = np.asarray(obj)
            classes[y:y + side, x:x + side] = index[categories[images.labels[j]]["id"]]
            taken.append((x, y, side))
            ann = {"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                   "category_id": categories[images.labels[j]]["id"], "bbox": [x, y, side, side],
                   "area": side * side, "iscrowd": 0}
            if spec.segmentations:
                ann["segmentation"] = [[x, y, x + side, y, x + side, y + side, x, y + side]]
            if spec.keypoints:
                c = side / 2
                ann["keypoints"] = [v for px, py in ((x, y), (x + side, y), (x + side, y + side), (x, y + side),
                                                     (x + c, y + c)) for v in (px, py, 2)]
                ann["num_keypoints"] = len(KEYPOINTS)
            coco["annotations"].append(ann)
        file = f"{name}/{i:06d}.jpg"
        Image.fromarray(img).save(out / file, quality=95)
        class_map = Image.fromarray(classes, mode="P")
        class_map.putpalette(PALETTE)
        class_map.save(out / f"{name}_maps" / f"{i:06d}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i:06d}.jpg", "width": w, "height": h})
    (out / f"{name}.json").write_text(json.dumps(coco))
    return coco


def make_pasted_set(folder: str | Path, out: str | Path, spec: PastedSpec = PastedSpec(),
                    category_ids: list[int] | None = None) -> dict[str, Any]:
    """Write ``out/train/*.jpg``, ``out/train.json``, ``out/train_maps/*.png`` and the same of ``val``, and
    ``out/classes.txt`` (the maps' class names, for ``moco segment --classes``), from the
    ImageFolder ``folder``; the categories are its classes, with ids ``category_ids`` (default 1..C). Returns
    the number of canvases and boxes of each split."""
    folder, out = Path(folder), Path(out)
    images = scan_images(folder)
    if images.labels is None or images.classes is None:
        raise DataError(f"{folder} has no class sub-folders: the pasted objects need classes")
    ids = category_ids or list(range(1, len(images.classes) + 1))
    if len(ids) != len(images.classes):
        raise DataError(f"{len(ids)} category ids for {len(images.classes)} classes")
    categories = [{"id": c, "name": n} for c, n in zip(ids, images.classes)]
    if spec.keypoints:
        categories = [{**c, "keypoints": KEYPOINTS, "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]],
                       "sigmas": [0.05] * len(KEYPOINTS)} for c in categories]
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(images)).tolist()
    cut = len(order) * spec.n_train // max(spec.n_train + spec.n_val, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("# label value, class, name: the class maps' (moco segment --classes)\n0 0 "
                                     "background\n" + "".join(f"{i} {i} {c['name']}\n"
                                                                for i, c in enumerate(categories, 1)))
    summary = {}
    for name, n, objs in (("train", spec.n_train, order[:cut]), ("val", spec.n_val, order[cut:])):
        coco = _split(rng, n, objs, spec, folder, images, out, name, categories)
        summary[name] = {"images": n, "boxes": len(coco["annotations"])}
    return summary
