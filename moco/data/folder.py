"""Finding and reading images: ImageFolder or flat trees, any common format, to RGB.

``scan_images`` lists a folder (class sub-folders give labels, otherwise none), following directory
links but reading every real directory and file once, and leaving out (with a reason) what is not a
regular file;
``load_rgb`` opens one file and returns an RGB PIL image whatever its mode
(grayscale, palette, RGBA, CMYK, 16-bit) with EXIF orientation applied.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

from moco.core.errors import DataError, shown

log = logging.getLogger("moco")
T = TypeVar("T")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


__all__ = ["IMAGE_EXTENSIONS", "DataError", "ImageList", "ScanReport", "check_data_root", "find_split",
           "first_readable", "load_rgb", "scan_images"]


@dataclass
class ImageList:
    """The images of a folder: paths relative to ``root``, and labels when it is an ImageFolder."""

    root: Path
    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] | None = None
    report: ScanReport | None = None  # what the scan left out

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: list[int]) -> ImageList:
        labels = [self.labels[i] for i in keep] if self.labels is not None else None
        return ImageList(self.root, [self.paths[i] for i in keep], labels, self.classes, self.report)


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".7z", ".rar", ".gz")


@dataclass
class ScanReport:
    """What a folder scan left out, by kind (paths relative to the scanned root).

    ``not_files``: entries named like images that are not regular files (a directory, a dangling or looping
    link, a socket, a device, a FIFO) or cannot be stat'ed, with the reason. ``loops``: directory links back
    to a folder the walk is inside. ``repeat_dirs`` / ``repeat_files``: a second path (a link) to a folder or
    file already listed, so nothing is read twice.
    """

    not_files: list[tuple[str, str]] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    repeat_dirs: list[str] = field(default_factory=list)
    repeat_files: list[str] = field(default_factory=list)

    def warn(self, root: Path) -> None:
        """One warning line per kind of entry left out."""
        if self.not_files:
            log.warning("skipped %d entr%s that cannot be read as image files in %s: %s",
                        len(self.not_files), "y" if len(self.not_files) == 1 else "ies", root,
                        _first(f"{shown(p)} ({why})" for p, why in self.not_files))
        if self.loops:
            log.warning("skipped %d symlink loop(s) in %s (links back to a folder they are in): %s",
                        len(self.loops), root, _first(map(shown, self.loops)))
        if self.repeat_dirs:
            log.warning("skipped %d link(s) to folders already scanned in %s: %s", len(self.repeat_dirs), root,
                        _first(map(shown, self.repeat_dirs)))
        if self.repeat_files:
            log.warning("skipped %d second path(s) to image files already listed in %s: %s",
                        len(self.repeat_files), root, _first(map(shown, self.repeat_files)))


def _first(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


Key = tuple[int, int]  # (device, inode): what a path is, whichever link reached it


class _Walk:
    """A walk that follows directory links but enters every real directory once (by device and inode) and
    lists every real file once, opening nothing. Plain files cost no system call beyond the listing;
    links and odd entries are stat'ed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.report = ScanReport()
        self.seen_dirs: set[Key] = set()
        self.seen_files: set[Key] = set()

    def entries(self, folder: str, rel: str, dev: int) -> list[tuple[str, str, int, Key]]:
        """The visible entries of ``folder`` (``rel`` from the root; on device ``dev``), real ones before
        links, each by name: (name, path from the root, st_mode after links, key). Entries that cannot be
        stat'ed are recorded when they are links or named like images, and left out."""
        try:
            listing = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))
        except OSError as e:
            self.report.not_files.append((rel.rstrip(os.sep) or ".", f"cannot list: {e.strerror or e}"))
            return []
        out = []
        for e in listing:
            if e.name.startswith("."):
                continue
            path = rel + e.name
            if e.is_file(follow_symlinks=False):  # the common case: the listing says it all
                out.append((e.name, path, stat.S_IFREG, (dev, e.inode())))
                continue
            try:
                st = os.stat(e.path)
            except OSError as err:
                if e.is_symlink() or _is_image_name(e.name):
                    why = {errno.ENOENT: "dangling link", errno.ELOOP: "link loop"}.get(err.errno) \
                        if e.is_symlink() else None
                    self.report.not_files.append((path, why or f"cannot stat: {err.strerror or err}"))
                continue
            out.append((e.name, path, st.st_mode, (st.st_dev, st.st_ino)))
        return out

    def enter(self, path: str, key: Key, ancestors: frozenset[Key]) -> bool:
        """Whether to walk the directory ``path``: not if it is one the walk is inside (a loop) or has seen."""
        if key in ancestors:
            self.report.loops.append(path)
            return False
        if key in self.seen_dirs:
            self.report.repeat_dirs.append(path)
            return False
        self.seen_dirs.add(key)
        return True

    def images(self, rel: str, key: Key, ancestors: frozenset[Key]) -> list[str]:
        """Image files under the entered folder ``rel`` (from the root, "" for the root itself; ``key``
        is its own, ``ancestors`` holds it and those above it), as paths from the root, in walk order."""
        found: list[str] = []
        for name, path, mode, k in self.entries(os.path.join(self.root, rel), rel, key[0]):
            if stat.S_ISDIR(mode):
                if _is_image_name(name):
                    self.report.not_files.append((path, "a directory; its contents are scanned"))
                if self.enter(path, k, ancestors):
                    found += self.images(path + os.sep, k, ancestors | {k})
            elif _is_image_name(name):
                if not stat.S_ISREG(mode):
                    self.report.not_files.append((path, _kind(mode)))
                elif k in self.seen_files:
                    self.report.repeat_files.append(path)
                else:
                    self.seen_files.add(k)
                    found.append(path)
        return found


def scan_images(
    root: str | Path, max_images: int = 0, seed: int = 0, strict: bool = False, warn: bool = True,
) -> ImageList:
    """List the images under ``root``, each real file once.

    If ``root`` holds only sub-folders, each sub-folder is a class (ImageFolder
    layout) and its images, at any depth, get that label. Otherwise every image at
    any depth is listed without labels. ``max_images`` keeps a deterministic random
    subset (same ``seed``, same subset).

    Directory links are followed, but every real directory is entered once and every
    real file listed once; entries named like images that are not regular files are
    left out. What was left out is in ``ImageList.report`` and logged, one line per
    kind (``warn=False``: only in the report, for the processes of a distributed run other than rank 0);
    ``strict`` makes a left-out entry that is not a regular file an error. Nothing is opened here:
    unreadable contents are found when the images are decoded.
    """
    root = Path(root).expanduser()
    check_data_root(root)
    walk = _Walk(root)
    top = os.stat(root)
    key = (top.st_dev, top.st_ino)
    walk.seen_dirs.add(key)
    entries = walk.entries(str(root), "", top.st_dev)
    subdirs = [(name, k) for name, _, mode, k in entries if stat.S_ISDIR(mode)]
    loose = [name for name, _, mode, _ in entries if stat.S_ISREG(mode) and _is_image_name(name)]
    paths: list[str] = []
    labels: list[int] | None = None
    classes: list[str] | None = None
    if subdirs and not loose:
        labels, classes = [], []
        for name, k in sorted(subdirs):  # class order: by name, links or not
            if not walk.enter(name, k, frozenset({key})):
                continue
            files = sorted(walk.images(name + os.sep, k, frozenset({key, k})))
            if not files:
                continue
            classes.append(name)
            paths += files
            labels += [len(classes) - 1] * len(files)
    else:
        walk.report = ScanReport()  # the root's entries are listed again below
        paths = sorted(walk.images("", key, frozenset({key})))
    report = walk.report
    if strict and report.not_files:
        p, why = report.not_files[0]
        raise DataError(f"not a readable image file: {shown(root / p)} ({why}); without --strict-data it is "
                        "skipped")
    if warn:
        report.warn(root)
    if not paths:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    images = ImageList(root, paths, labels, classes, report)
    if 0 < max_images < len(images):
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(images), generator=g)[:max_images].tolist())
        images = images.subset(keep)
    return images


def check_data_root(root: Path) -> None:
    """One line for a ``--data`` that is missing or not a folder (an image, an archive)."""
    accepts = "--data takes a folder of images (class sub-folders for labels, or a train/ and test/ pair)"
    if not root.exists():
        why = "a link to a missing target" if root.is_symlink() else "not found"
        raise DataError(f"data folder {why}: {root}")
    if root.is_dir():
        return
    name = root.name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"{root} is an archive, not a folder: unpack it first; {accepts}")
    if _is_image_name(name):
        raise DataError(f"{root} is a single image, not a folder; {accepts}")
    raise DataError(f"{root} is not a folder; {accepts}")


def load_rgb(path: str | Path | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Open an image file (or an open binary stream: a shard member's bytes) as RGB, honouring EXIF orientation.

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
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the picture
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


def first_readable(
    images: ImageList, i: int, read: Callable[..., T], lost: Mapping[int, str], strict: bool = False,
    indexed: bool = False,
) -> tuple[T, int, list[tuple[int, str]]]:
    """``read`` image ``i``; if it cannot be read (deleted, truncated or made unreadable since the scan),
    the next readable one after it, passing over those in ``lost`` (index -> why) without trying them.
    ``read`` takes the path, and with ``indexed`` also the image's index.

    Returns (what ``read`` returned, the index it read, [(index, why) of the files that failed now]).
    ``strict`` raises :class:`DataError` naming the first file that fails instead.
    """
    failed: list[tuple[int, str]] = []
    for j in range(len(images)):
        k = (i + j) % len(images)
        if k in lost:
            continue
        path = images.root / images.paths[k]
        try:
            return (read(path, k) if indexed else read(path)), k, failed
        except Exception as e:  # noqa: BLE001 - whatever the reason, this file cannot be used
            why = f"{type(e).__name__}: {e}"
            if strict:
                raise DataError(f"unreadable image: {shown(path)} ({why})") from None
            failed.append((k, why))
    raise DataError(f"no readable image left in {images.root}")


SPLITS = ("train", "test", "val")
"""A labelled data set's splits by name: training on ``train``, held out in ``test`` or else ``val``."""


def test_split(find: Callable[[str], T | None]) -> T | None:
    """The held-out split: ``find(name)`` for ``test``, then ``val``; the first it finds, else None. Folders
    (:func:`find_split`) and shards (``train-*.tar`` beside ``test-*.tar``) follow this one rule."""
    for name in SPLITS[1:]:
        found = find(name)
        if found is not None:
            return found
    return None


def find_split(data: Path) -> tuple[Path, Path | None]:
    """Given ``--data``, return (train folder, labelled test folder or None).

    A folder holding ``train/`` pretrains on it and monitors with ``test/`` (or
    ``val/``); a folder named ``train`` with a ``test``/``val`` sibling monitors with that.
    """
    data = Path(data).expanduser()

    def sibling(parent: Path) -> Callable[[str], Path | None]:
        return lambda name: parent / name if (parent / name).is_dir() else None

    if (data / "train").is_dir():
        return data / "train", test_split(sibling(data))
    if data.name == "train":
        return data, test_split(sibling(data.parent))
    return data, None
