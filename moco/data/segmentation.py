"""Semantic segmentation data: images paired with label maps (a value per pixel, the class), read, checked and
served as the training crops and whole validation images that ``moco segment`` uses.

Two sources make a :class:`SegSet`:

* :func:`pair_folders`: a folder of images and a folder of label maps, paired by sub-folder and file stem (VOC's
  ``JPEGImages`` + ``SegmentationClass``). A map is a palette or grayscale PNG (8 or 16 bit) whose value is the
  class; ``ignore_index`` (VOC's 255) is neither trained on nor scored. A mapping file (:func:`read_class_map`)
  turns other values into classes 0..N-1 (Cityscapes' label ids into its 19 train ids), everything unmapped
  ignored.
* :func:`paint_coco`: COCO annotations, each image's instance masks painted into a class map (background 0,
  category i in id order i + 1; crowd regions ignored), by pycocotools.

Bad input is refused in one line naming the file: an image without a map, a map whose size is not its image's,
a value that is not a class, an RGB map, a file that cannot be read.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from moco.core.distributed import SINGLE_PROCESS, DistInfo
from moco.core.errors import DataError
from moco.data.coco import CocoSet, _items, polygons_to_mask
from moco.data.folder import _is_image_name, load_rgb
from moco.data.pipelines import _slices, from_workers

log = logging.getLogger("moco")
MAP_MODES = ("P", "L", "I;16", "I")  # palette, 8-bit and 16-bit grayscale, 32-bit integer


def read_label_map(path: Path) -> np.ndarray:
    """A label map's values as an (H, W) integer array: a palette PNG's indices or a grayscale image's levels.
    RGB maps and unreadable files are refused in one line."""
    try:
        with Image.open(path) as im:
            if im.mode not in MAP_MODES:
                raise DataError(f"{path}: a {im.mode} image; a label map is a palette or grayscale PNG whose value is "
                                "the class (convert colour-coded maps to class indices first)")
            return np.asarray(im, dtype=np.uint8 if im.mode in ("P", "L") else np.int32)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot be read as a label map ({e})") from None


@dataclass(frozen=True)
class ClassMap:
    """Label values -> class indices 0..N-1 (with names), from a mapping file; values it does not name are
    ignored."""

    values: dict[int, int]
    names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def read_class_map(path: str | Path, ignore_index: int = 255) -> ClassMap:
    """A mapping file: one ``VALUE CLASS [NAME]`` per line (``#`` starts a comment); CLASS is 0..N-1, or
    ``ignore_index`` to ignore the value explicitly. Cityscapes' ``7 0 road``, ``8 1 sidewalk``, ..."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: class mapping file not found")
    values: dict[int, int] = {}
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 2 or not all(re.fullmatch(r"\d+", p) for p in parts[:2]):
            raise DataError(f"{path}:{n}: expected 'VALUE CLASS [NAME]' (two integers), got {line!r}")
        v, c = int(parts[0]), int(parts[1])
        if v in values:
            raise DataError(f"{path}:{n}: value {v} is mapped twice")
        values[v] = c
        if c != ignore_index:
            names.setdefault(c, parts[2].strip() if len(parts) > 2 else str(c))
    classes = sorted(names)
    if classes != list(range(len(classes))):
        raise DataError(f"{path}: the classes must be 0..N-1 (each used), got {classes[:10]}")
    if not classes:
        raise DataError(f"{path}: maps no value to a class")
    return ClassMap(values, [names[c] for c in classes])


@dataclass
class SegSet:
    """Images and their class maps: where they are, their sizes, the classes, and how a map's values become
    classes (``lut``: value -> class, ``ignore`` for values that are not one)."""

    root: Path  # the images folder
    paths: list[str]  # image files under root
    sizes: list[tuple[int, int]]  # (height, width)
    num_classes: int
    classes: list[str]
    ignore: int
    masks: list[Path] | None = None  # the label-map files (folders), or None: painted from ``instances``
    lut: np.ndarray | None = None  # value -> class (None: values are classes)
    instances: list[list[dict[str, Any]]] | None = None  # per image, its COCO annotations (class in "class")
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # maps decoded while checking, kept when they fit

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, k: int) -> str:
        return str(self.masks[k]) if self.masks is not None else f"the annotations of {self.root / self.paths[k]}"

    def median_short_side(self) -> int:
        return int(statistics.median(min(s) for s in self.sizes))

    def decoded_mb(self) -> float:
        """Images (RGB) and maps (one byte a pixel) decoded, in MB."""
        return sum(4 * h * w for h, w in self.sizes) / 2**20

    def label_map(self, k: int) -> np.ndarray:
        """Image ``k``'s class map, (H, W) uint8 with ``ignore`` where no class is; the map's values checked."""
        if k in self.kept:
            return self.kept[k]
        if self.masks is None:
            assert self.instances is not None
            return _painted(self.instances[k], self.sizes[k], self.ignore)
        raw = read_label_map(self.masks[k])
        h, w = self.sizes[k]
        if raw.shape != (h, w):
            raise DataError(f"{self.masks[k]}: {raw.shape[1]}x{raw.shape[0]}, but its image "
                            f"{self.root / self.paths[k]} is {w}x{h}")
        return self.classes_of(raw, k)

    def classes_of(self, raw: np.ndarray, k: int) -> np.ndarray:
        """A raw map's values as classes (through the mapping), refused in one line when a value is not one."""
        if self.lut is not None:
            if raw.min() < 0 or raw.max() >= len(self.lut):
                raw = np.where((raw >= 0) & (raw < len(self.lut)), raw, len(self.lut) - 1)
            return self.lut[raw]
        bad = (raw >= self.num_classes) & (raw != self.ignore)
        if bad.any():
            v = int(raw[bad].max())
            raise DataError(f"{self.source(k)}: label value {v} is not a class (classes 0-{self.num_classes - 1}, "
                            f"{self.ignore} ignored); map the values with --classes FILE, or set "
                            "segment.num_classes")
        return raw.astype(np.uint8)


def _lut(cmap: ClassMap, ignore: int, largest: int) -> np.ndarray:
    lut = np.full(max(largest, *cmap.values) + 2, ignore, dtype=np.uint8)  # the last entry: out of range
    for v, c in cmap.values.items():
        lut[v] = c
    return lut


def _stem_key(rel: Path, suffix: str) -> str:
    stem = rel.stem[: -len(suffix)] if suffix and rel.stem.endswith(suffix) else rel.stem
    return str(rel.parent / stem)


def _files(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{what} folder not found: {root}")
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and _is_image_name(p.name))


def _listed(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    names = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise DataError(f"{path}: lists no image")
    return names


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot be read as an image ({e})") from None


def _pairs(root: Path, mroot: Path, listing: str | Path | None, image_suffix: str, mask_suffix: str,
           ) -> tuple[list[str], list[Path]]:
    """(image files under ``root``, their label maps) paired by sub-folder and stem, those ``listing`` names."""
    found = {_stem_key(p, image_suffix): p for p in _files(root, "images")}
    maps = {_stem_key(p, mask_suffix): p for p in _files(mroot, "label maps")}
    keys = sorted(found)
    if listing is not None:
        want = _listed(Path(listing).expanduser())
        by_stem = {Path(k).name: k for k in keys} | {k: k for k in keys}
        lacking = [n for n in want if n not in by_stem]
        if lacking:
            raise DataError(f"{listing} names {len(lacking)} image(s) that {root} lacks (first: {lacking[0]})")
        keys = [by_stem[n] for n in want]
    if not keys:
        raise DataError(f"{root}: no images")
    unpaired = [k for k in keys if k not in maps]
    if unpaired:
        raise DataError(f"{len(unpaired)} of {len(keys)} image(s) of {root} have no label map in {mroot} (first: "
                        f"{found[unpaired[0]]}); maps pair with images by sub-folder and stem, or give a list "
                        "file of the images to use")
    return [str(found[k]) for k in keys], [mroot / maps[k] for k in keys]


def pair_folders(images: str | Path, masks: str | Path, ignore: int = 255, num_classes: int = 0,
                 class_map: ClassMap | None = None, listing: str | Path | None = None, image_suffix: str = "",
                 mask_suffix: str = "", keep_mb: float = 0, classes: list[str] | None = None) -> SegSet:
    """The images of ``images`` (only those ``listing`` names, by stem, when given: VOC's ImageSets files) with
    the label maps of ``masks`` of the same sub-folder and stem (``*_suffix`` removed first). Every map is read
    once here and checked (its size, its values); the classes are ``class_map``'s, ``num_classes``, or the
    largest value found + 1. Maps are kept decoded when the set fits ``keep_mb``."""
    root, mroot = Path(images).expanduser(), Path(masks).expanduser()
    paths, mask_paths = _pairs(root, mroot, listing, image_suffix, mask_suffix)
    sizes = [_image_size(root / p) for p in paths]
    if class_map is not None:
        n, names = class_map.num_classes, class_map.names
    else:
        n, names = num_classes, classes or []
    data = SegSet(root, paths, sizes, max(n, 1), names, ignore, mask_paths)
    keep = 0 < data.decoded_mb() <= keep_mb
    raws: dict[int, np.ndarray] = {}
    largest = 0
    for k in range(len(paths)):
        raw = read_label_map(mask_paths[k])
        h, w = sizes[k]
        if raw.shape != (h, w):
            raise DataError(f"{mask_paths[k]}: {raw.shape[1]}x{raw.shape[0]}, but its image {root / paths[k]} is "
                            f"{w}x{h}")
        valid = raw[raw != ignore]
        largest = max(largest, int(valid.max()) if valid.size else 0)
        if keep:
            raws[k] = raw
        elif class_map is None and n:
            data.classes_of(raw, k)  # checked now, read again when trained on
    if class_map is not None:
        data.lut = _lut(class_map, ignore, largest)
    elif not n:
        data.num_classes = largest + 1
    if not data.classes:
        data.classes = [str(c) for c in range(data.num_classes)]
    if data.num_classes >= 256 or (class_map is None and ignore < data.num_classes):
        raise DataError(f"{mroot}: label values up to {data.num_classes - 1} include the ignore value {ignore} "
                        "or exceed 255 classes; map them with --classes FILE")
    for k, raw in raws.items():
        m = data.classes_of(raw, k)
        if keep:
            data.kept[k] = m
    return data


def _painted(instances: list[dict[str, Any]], size: tuple[int, int], ignore: int) -> np.ndarray:
    """An image's class map from its COCO instances (each with its ``class``): larger objects first, so smaller
    ones stay on top; crowd regions ``ignore``."""
    h, w = size
    out = np.zeros((h, w), dtype=np.uint8)
    for a in sorted(instances, key=lambda a: (bool(a.get("iscrowd")), -float(a.get("area") or 0))):
        out[polygons_to_mask(a["segmentation"], h, w).astype(bool)] = ignore if a.get("iscrowd") else a["class"]
    return out


def paint_coco(coco: CocoSet, ignore: int = 255, keep_mb: float = 0) -> SegSet:
    """A COCO set as class maps: background 0, category i (in id order) i + 1, crowd ``ignore``. Every kept
    annotation needs a segmentation (polygons or RLE)."""
    lacking = [a for a in coco.gt["annotations"] if not a.get("segmentation")]
    if lacking:
        raise DataError(f"{coco.ann_file}: {len(lacking)} annotation(s) have no segmentation (first: id "
                        f"{lacking[0]['id']}); a class map is painted from instance masks")
    index = {c["id"]: i + 1 for i, c in enumerate(coco.categories)}
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in coco.ids}
    for a in coco.gt["annotations"]:
        by_image[a["image_id"]].append({**a, "class": index[a["category_id"]]})
    data = SegSet(coco.images.root, list(coco.images.paths), list(coco.sizes), coco.num_classes + 1,
                  ["background", *(c["name"] for c in coco.categories)], ignore,
                  instances=[by_image[i] for i in coco.ids])
    if 0 < data.decoded_mb() <= keep_mb:
        data.kept = {k: data.label_map(k) for k in range(len(data))}
    return data


def crop_params(n: int, seed: int) -> torch.Tensor:
    """(n, 4) uniform draws, one row per place in an epoch's order: scale, crop row, crop column, flip. Drawn
    from the epoch's seed, so a run resumed mid-epoch draws the same."""
    return torch.rand(n, 4, generator=torch.Generator().manual_seed(seed))


def train_view(img: torch.Tensor, mask: torch.Tensor, p: torch.Tensor, base: int, scale: tuple[float, float],
               crop: int, flip: float, ignore: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's segmentation reference's training view of an image (3, H, W uint8) and its map (H, W):
    resized so its shorter side is ``base`` x a scale in ``scale`` (bilinear; the map nearest), padded to
    ``crop`` (the map with ``ignore``), a ``crop`` square cut, flipped with probability ``flip``; ``p`` is the
    row of :func:`crop_params`."""
    s, u, v, f = p.tolist()
    h, w = img.shape[-2:]
    r = base * (scale[0] + s * (scale[1] - scale[0])) / min(h, w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    x = F.interpolate(img[None].float(), (nh, nw), mode="bilinear", align_corners=False, antialias=r < 1)[0]
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    y = F.interpolate(mask[None, None].float(), (nh, nw), mode="nearest-exact")[0, 0].to(torch.uint8)
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0)
        y = F.pad(y, (0, pw, 0, ph), value=ignore)
    top, left = round(u * (x.shape[-2] - crop)), round(v * (x.shape[-1] - crop))
    x, y = x[:, top:top + crop, left:left + crop], y[top:top + crop, left:left + crop]
    if f < flip:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


class SegImages(torch.utils.data.Dataset):
    """Item ``k``: (image ``k`` as (3, H, W) uint8, its class map as (H, W) uint8). With ``cache_mb`` of room for
    the whole set, each image is decoded once and kept (read in this process: no loader workers).

    ``draft``: a JPEG whose shorter side is at least twice this is decoded at a reduced scale (PIL's draft mode)
    that keeps the shorter side at ``draft`` or more: for training views, which :func:`train_view` resizes from
    the image's own size (the map, kept whole, is resized to the same view)."""

    def __init__(self, data: SegSet, cache_mb: float = 0, draft: int = 0) -> None:
        self.data, self.draft = data, draft
        self.cache: dict[int, torch.Tensor] | None = {} if 0 < data.decoded_mb() <= cache_mb else None

    def workers(self, workers: int) -> int:
        return 0 if self.cache is not None else workers

    def __len__(self) -> int:
        return len(self.data)

    def image(self, k: int) -> torch.Tensor:
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        path = self.data.root / self.data.paths[k]
        try:
            img = load_rgb(path, draft_size=self.draft or None)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: cannot be read as an image ({e})") from None
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.cache is not None:
            self.cache[k] = x
        return x

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(k), torch.from_numpy(self.data.label_map(k))


class _Views(torch.utils.data.Dataset):
    """Item (k, params): image ``k``'s training view (:func:`train_view`)."""

    def __init__(self, images: SegImages, base: int, scale: tuple[float, float], crop: int, flip: float) -> None:
        self.images, self.args = images, (base, scale, crop, flip, images.data.ignore)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        k, p = item
        img, mask = self.images[k]
        return (*train_view(img, mask, p, *self.args), k)


def _stack(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]),
            torch.tensor([i[2] for i in items]))


class SegmentationSource:
    """``moco segment``'s batches: this process's slice of each global batch of training views (random scale,
    crop, flip; drawn from the epoch's seed by place in the epoch, so a resumed run sees the same), as (images
    float (B, 3, crop, crop) in [0, 1], maps int64 (B, crop, crop), indices)."""

    decoded = None
    streams = False

    def __init__(self, data: SegSet, base: int, scale: tuple[float, float], crop: int, flip: float, workers: int,
                 batch_size: int, device: torch.device, dinfo: DistInfo = SINGLE_PROCESS, cache_mb: float = 0) -> None:
        self.data, self.batch_size, self.device, self.dinfo = data, batch_size, device, dinfo
        self.images = SegImages(data, cache_mb, math.ceil(base * scale[1]))  # the largest view's shorter side
        self.views = _Views(self.images, base, scale, crop, flip)
        self.workers = self.images.workers(workers)
        self.lost: dict[int, str] = {}

    @property
    def samples(self) -> int:
        return len(self.data)

    def steps_per_epoch(self, passes: int = 1) -> int:
        return self.samples * passes // self.batch_size

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int,
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        params = crop_params(len(perm), seed)
        places = torch.arange(len(perm))
        batches = [[(int(perm[i]), params[i]) for i in s.tolist()]
                   for s in _slices(places, start, self.batch_size, self.dinfo)]
        loader = torch.utils.data.DataLoader(  # its own generator: the global one draws the heads' dropout
            self.views, batch_sampler=batches, num_workers=self.workers, collate_fn=_stack,
            generator=torch.Generator().manual_seed(seed), pin_memory=self.device.type == "cuda")
        for x, y, idx in from_workers(loader):
            yield (x.to(self.device, non_blocking=True).float().div_(255),
                   y.to(self.device, non_blocking=True).long(), idx)


def whole_images(images: SegImages, batch_size: int, workers: int, device: torch.device,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The set's whole images (not cropped), in batches of images of one size (read in order, a batch ends where
    the size changes), as (float (B, 3, H, W) in [0, 1], maps int64 (B, H, W))."""
    loader = torch.utils.data.DataLoader(images, batch_size=1, num_workers=images.workers(workers), collate_fn=_items,
                                         generator=torch.Generator())  # leaves the global generator alone
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (item,) in from_workers(loader):
        if held and (len(held) == batch_size or held[0][0].shape != item[0].shape):
            yield _to(held, device)
            held = []
        held.append(item)
    if held:
        yield _to(held, device)


def _to(held: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([x for x, _ in held]).to(device).float().div_(255),
            torch.stack([y for _, y in held]).to(device).long())
