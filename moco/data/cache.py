"""Decode a data set once into a uint8 array on disk, memory-mapped and reused across runs.

Each image is resized (shorter side to ``size``) and center-cropped to
``size x size`` RGB. The cache is keyed by the file list, sizes, mtimes and
``size``, so a changed folder is decoded again. Unreadable files are skipped
with a warning (or raise :class:`DataError` in strict mode) and remembered in
the cache's metadata, so they are reported again on reuse without re-reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import torch
from PIL import Image

from moco.core.errors import shown
from moco.data.folder import DataError, ImageList, load_rgb

log = logging.getLogger("moco")
T = TypeVar("T")
R = TypeVar("R")
CACHE_VERSION = 1


@dataclass
class DecodedImages:
    """Decoded images (N, S, S, 3) uint8, with the list they came from (bad files dropped)."""

    array: np.ndarray
    images: ImageList
    skipped: list[tuple[str, str]]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` as a (B, 3, S, S) uint8 tensor."""
        return torch.from_numpy(self.array[idx.numpy()]).permute(0, 3, 1, 2)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOCO_CACHE") or Path.home() / ".cache" / "momentum-contrast")


def decode_square(path: str | BinaryIO, size: int) -> np.ndarray:
    """Read ``path`` (or a binary stream) and return a (size, size, 3) uint8 center crop after a shorter-side
    resize."""
    img = load_rgb(path, draft_size=size)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _decode_chunk(args: tuple[list[str], int]) -> list[np.ndarray | str]:
    paths, size = args
    out: list[np.ndarray | str] = []
    for p in paths:
        try:
            out.append(decode_square(p, size))
        except Exception as e:  # noqa: BLE001 - any failure to read means a bad file
            out.append(f"{type(e).__name__}: {e}")
    return out


def _key(images: ImageList, size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{images.root.resolve()}".encode())
    for rel in images.paths:
        try:
            st = os.stat(images.root / rel)
            h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError as e:  # gone or unreadable since the scan: decoding reports it as a bad file
            h.update(f"|{rel}|{e.errno}".encode())
    return h.hexdigest()[:24]


def report_skipped(skipped: list[tuple[str, str]], root: Path) -> None:
    if skipped:
        first = "; ".join(f"{shown(p)} ({why})" for p, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("skipped %d unreadable image(s) in %s: %s%s", len(skipped), root, first, more)


def load_entry(npy: Path, meta: Path, size: int, rows: str) -> tuple[np.ndarray, dict] | None:
    """A cache entry: its array of (size, size, 3) squares, memory-mapped, and its record, whose list ``rows``
    has one item per square; None when missing or damaged (then it is decoded again)."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        arr = np.load(npy, mmap_mode="r")
        return (arr, info) if arr.shape == (len(info[rows]), size, size, 3) else None
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def save_entry(npy: Path, meta: Path, arr: np.ndarray, info: dict) -> np.ndarray:
    """Write a cache entry, array then record, each written then renamed, so that a killed run never leaves a
    torn one; the array memory-mapped from the file (or, when the cache cannot be written, as it is, with a
    warning)."""
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, arr)
        os.replace(tmp, npy)
        tmp_meta = meta.with_suffix(f".tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(info))
        os.replace(tmp_meta, meta)
        return np.load(npy, mmap_mode="r")
    except OSError as e:
        log.warning("could not write the decoded-image cache to %s (%s); continuing in memory", npy.parent, e)
        return arr


def map_jobs(fn: Callable[[T], R], jobs: list[T], workers: int, progress: str | None, total: int, unit: str,
             advance: Callable[[R], int] = lambda _: 1, initializer: Callable[..., None] | None = None,
             initargs: tuple = ()) -> list[R]:
    """``fn`` of each job, in order, in ``workers`` processes (in this one when 0, or for one job), each process
    set up by ``initializer(*initargs)``; a progress bar named ``progress`` (None: none) of ``total`` ``unit``,
    moved on by ``advance(result)``."""
    bar = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=progress, unit=unit, leave=False, disable=None)
    results: list[R] = []
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=initializer, initargs=initargs) as pool:
            parts = pool.map(fn, jobs)
            for part in parts:
                results.append(part)
                if bar:
                    bar.update(advance(part))
    else:
        if initializer is not None:
            initializer(*initargs)
        for job in jobs:
            results.append(fn(job))
            if bar:
                bar.update(advance(results[-1]))
    if bar:
        bar.close()
    return results


def decode_images(
    images: ImageList,
    size: int,
    cache_dir: str | Path | None = None,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
) -> DecodedImages:
    """Decode ``images`` to a uint8 array, using (or filling) the on-disk cache."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _key(images, size)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    entry = load_entry(npy, meta, size, "keep")
    if entry is not None:
        arr, info = entry
        skipped = [tuple(s) for s in info["skipped"]]
        if strict and skipped:
            raise DataError(f"unreadable image: {shown(images.root / skipped[0][0])} ({skipped[0][1]})")
        report_skipped(skipped, images.root)
        return DecodedImages(arr, images.subset(info["keep"]), skipped)
    full = [str(images.root / p) for p in images.paths]
    chunk = 256
    jobs = [(full[i : i + chunk], size) for i in range(0, len(full), chunk)]
    results = [r for part in map_jobs(_decode_chunk, jobs, workers, f"decoding {images.root.name}" if progress
                                      else None, len(full), "img", len) for r in part]
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    skipped = [(images.paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    if strict and skipped:
        raise DataError(f"unreadable image: {shown(images.root / skipped[0][0])} ({skipped[0][1]})")
    if not keep:
        raise DataError(f"none of the {len(full)} image files in {images.root} could be read "
                        f"(first: {skipped[0][0]}: {skipped[0][1]})")
    report_skipped(skipped, images.root)
    arr = save_entry(npy, meta, np.stack([results[i] for i in keep]),
                     {"root": str(images.root), "size": size, "keep": keep, "skipped": skipped})
    return DecodedImages(arr, images.subset(keep), skipped)
