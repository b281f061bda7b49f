"""Finding and reading images: ImageFolder or flat trees, any common format, to RGB.

``scan_images`` lists a folder (class sub-folders give labels, otherwise none);
``load_rgb`` opens one file and returns an RGB PIL image whatever its mode
(grayscale, palette, RGBA, CMYK, 16-bit) with EXIF orientation applied.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from moco.core.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


__all__ = ["IMAGE_EXTENSIONS", "DataError", "ImageList", "find_split", "load_rgb", "scan_images"]


@dataclass
class ImageList:
    """The images of a folder: paths relative to ``root``, and labels when it is an ImageFolder."""

    root: Path
    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: list[int]) -> ImageList:
        labels = [self.labels[i] for i in keep] if self.labels is not None else None
        return ImageList(self.root, [self.paths[i] for i in keep], labels, self.classes)


def _walk_images(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                found.append(os.path.join(dirpath, f))
    return sorted(found)


def scan_images(root: str | Path, max_images: int = 0, seed: int = 0) -> ImageList:
    """List the images under ``root``.

    If ``root`` holds only sub-folders, each sub-folder is a class (ImageFolder
    layout) and its images, at any depth, get that label. Otherwise every image at
    any depth is listed without labels. ``max_images`` keeps a deterministic random
    subset (same ``seed``, same subset).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    entries = [e for e in sorted(os.scandir(root), key=lambda e: e.name) if not e.name.startswith(".")]
    subdirs = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    paths: list[str] = []
    labels: list[int] | None = None
    classes: list[str] | None = None
    if subdirs and not loose:
        labels, classes = [], []
        for d in subdirs:
            files = _walk_images(Path(d.path))
            if not files:
                continue
            classes.append(d.name)
            paths += [os.path.relpath(f, root) for f in files]
            labels += [len(classes) - 1] * len(files)
    else:
        paths = [os.path.relpath(f, root) for f in _walk_images(root)]
    if not paths:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    images = ImageList(root, paths, labels, classes)
    if 0 < max_images < len(images):
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(images), generator=g)[:max_images].tolist())
        images = images.subset(keep)
    return images


def load_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open an image file as RGB, honouring EXIF orientation.

    16-bit and 32-bit integer images are scaled to 8 bits (not clipped); palette
    and RGBA images lose transparency; CMYK is converted. ``draft_size`` lets JPEG
    decode at a reduced scale when only a small image is needed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not lose the picture
        pass
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max()), 1e-12)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def find_split(data: Path) -> tuple[Path, Path | None]:
    """Given ``--data``, return (train folder, labelled test folder or None).

    A folder holding ``train/`` pretrains on it and monitors with ``test/`` (or
    ``val/``); a folder named ``train`` with a ``test``/``val`` sibling monitors with that.
    """
    data = Path(data).expanduser()
    if (data / "train").is_dir():
        for name in ("test", "val"):
            if (data / name).is_dir():
                return data / "train", data / name
        return data / "train", None
    if data.name == "train":
        for name in ("test", "val"):
            if (data.parent / name).is_dir():
                return data, data.parent / name
    return data, None
