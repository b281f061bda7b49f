"""Decoding a set of shards into the decoded-image cache, as :func:`moco.data.cache.decode_images` decodes a
folder (the kNN monitor, the evaluations and fine-tuning read labelled shards so)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from moco.core.errors import DataError, shown
from moco.data.cache import (
    CACHE_VERSION,
    DecodedImages,
    decode_square,
    default_cache_dir,
    load_entry,
    map_jobs,
    report_skipped,
    save_entry,
)
from moco.data.folder import ImageList
from moco.data.shards.read import class_names, image_field, read_samples
from moco.data.shards.spec import is_remote, shards_root

_WANTED: frozenset[str] | None = None  # the keys a decoding job keeps (None: all), set once per pool process


def _want(keys: frozenset[str] | None) -> None:
    global _WANTED
    _WANTED = keys


def _decode_shard(args: tuple[str, int]) -> tuple[list[str], list[int | None], list, list[tuple[str, str]]]:
    """One shard's keys, classes (None without ``.cls``), decoded squares and failures (a process pool's job),
    of the samples whose keys :func:`_want` named (all by default)."""
    shard, size = args
    keys: list[str] = []
    labels: list[int | None] = []
    arrays: list = []
    failed: list[tuple[str, str]] = []
    for sample in read_samples([shard], lambda where, why: failed.append((where, why))):
        key = sample["__key__"]
        if _WANTED is not None and key not in _WANTED:
            continue
        try:
            f = image_field(sample)
            if f is None:
                raise ValueError("a sample without an image member")
            arrays.append(decode_square(io.BytesIO(sample[f]), size))
        except Exception as e:  # noqa: BLE001 - any failure to decode means a bad member
            failed.append((f"{shard}:{key}", f"{type(e).__name__}: {e}"))
            continue
        keys.append(key)
        labels.append(int(sample["cls"]) if "cls" in sample else None)
    return keys, labels, arrays, failed


def decode_shards(shards: list[str], size: int, cache_dir: str | Path | None = None, workers: int = 2,
                  strict: bool = False, progress: bool = True, keys: list[str] | None = None) -> DecodedImages:
    """Every sample of ``shards`` (or those whose key ``keys`` lists) decoded to a (size, size, 3) square, as
    :func:`moco.data.cache.decode_images` decodes a folder, in the shards' order, kept in the same cache (keyed
    by the shards' paths, sizes and times, or their URLs, and the keys). The images' "paths" are their keys;
    labels come from ``.cls`` when every sample has one, the class names from ``classes.json`` beside the
    shards (else the indices). Unreadable members are skipped with one warning (``strict``: refused)."""
    ident = [(s, *((os.stat(s).st_size, os.stat(s).st_mtime_ns) if not is_remote(s) else ())) for s in shards]
    chosen = hashlib.sha256("\n".join(keys).encode()).hexdigest() if keys is not None else None
    key = hashlib.sha256(json.dumps([f"v{CACHE_VERSION}-shards", size, ident, chosen]).encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    npy, meta = cache / f"{key}.npy", cache / f"{key}.json"
    root = shards_root(shards)
    entry = load_entry(npy, meta, size, "keys")
    if entry is not None:
        arr, info = entry
        skipped = [tuple(x) for x in info["skipped"]]
        _report(shards, skipped, root, strict)
        return DecodedImages(arr, ImageList(root, info["keys"], info["labels"], info["classes"]), skipped)
    parts = map_jobs(_decode_shard, [(s, size) for s in shards], workers, "decoding shards" if progress else None,
                     len(shards), "shard", initializer=_want,
                     initargs=(frozenset(keys) if keys is not None else None,))
    keys = [k for p in parts for k in p[0]]
    found = [lab for p in parts for lab in p[1]]
    skipped = [f for p in parts for f in p[3]]
    _report(shards, skipped, root, strict, any(p[2] for p in parts))
    labels = [int(lab) for lab in found] if all(lab is not None for lab in found) else None  # type: ignore[arg-type]
    classes = class_names(shards, max(labels) + 1) if labels is not None else None
    arr = save_entry(npy, meta, np.stack([a for p in parts for a in p[2]]),
                     {"shards": shards, "size": size, "keys": keys, "labels": labels, "classes": classes,
                      "skipped": skipped})
    return DecodedImages(arr, ImageList(root, keys, labels, classes), skipped)


def _report(shards: list[str], skipped: list, root: Path, strict: bool, any_read: bool = True) -> None:
    """The unreadable members of a decoding: refused when ``strict``, else one warning; none read at all is an
    error."""
    if strict and skipped:
        raise DataError(f"unreadable shard data: {shown(skipped[0][0])} ({skipped[0][1]})")
    if not any_read:
        raise DataError(f"no readable sample in {shown(shards[0])}"
                        + (f" and {len(shards) - 1} other shard(s)" if len(shards) > 1 else ""))
    report_skipped(skipped, root)
