"""Which labelled images a fine-tuning run learns from: a class-balanced, seeded subset of an ImageFolder,
and the ``labels.txt`` that records it so that another run can use the very same images.

``--labels 10%`` takes round(10% of each class) images of every class (at least one); ``--labels 50`` takes
50 of each (all of a smaller class, with a warning). The draw depends only on the folder's file list and
the seed, so the same command picks the same images on any machine. ``labels.txt`` lists the chosen files
as paths under the training folder, one per line, after ``#`` comment lines; ``--labels-file`` reads it
back (the semi-supervised protocol of SimCLR and MoCo v2 uses fixed 1% and 10% lists).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from moco.config import parse_labels
from moco.core.errors import DataError
from moco.data.folder import ImageList
from moco.data.shards import sample_key

log = logging.getLogger("moco")
HEADER = "# momentum-contrast labels"


def class_counts(images: ImageList) -> list[int]:
    """Images per class of an ImageFolder listing."""
    assert images.labels is not None and images.classes is not None
    counts = [0] * len(images.classes)
    for y in images.labels:
        counts[y] += 1
    return counts


def balanced_subset(images: ImageList, spec: str, seed: int = 0) -> ImageList:
    """A class-balanced subset of ``images`` (an ImageFolder): ``spec`` is a fraction of each class (``10%``) or
    a number per class (``50``). Each class draws its own images with ``seed``; the subset keeps the folder's
    order, so it is the same list whatever order the classes were drawn in."""
    if images.labels is None or images.classes is None:
        raise DataError(f"{images.root} has no class sub-folders: fine-tuning needs labelled images "
                        "(an ImageFolder, one sub-folder per class)")
    kind, amount = parse_labels(spec)
    by_class: list[list[int]] = [[] for _ in images.classes]
    for i, y in enumerate(images.labels):
        by_class[y].append(i)
    keep: list[int] = []
    short = []
    for c, members in enumerate(by_class):
        want = max(1, round(amount * len(members))) if kind == "fraction" else int(amount)
        if want > len(members):
            short.append(f"{images.classes[c]} ({len(members)})")
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        keep += [members[i] for i in torch.randperm(len(members), generator=g)[:want].tolist()]
    if short:
        log.warning("--labels %s: %d class(es) have fewer images, all of them are used: %s", spec, len(short),
                    ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else ""))
    return images.subset(sorted(keep))


def write_labels(images: ImageList, path: Path, about: str) -> None:
    """Write ``labels.txt``: comment lines (``about``: how the subset was chosen), then one path per image."""
    counts = class_counts(images)
    lines = [f"{HEADER}: {about}", f"# {len(images)} images from {images.root.resolve()}; per class: "
             + ", ".join(f"{c} {n}" for c, n in zip(images.classes or [], counts))]
    for p in images.paths:
        if "\n" in p or "\r" in p:
            raise DataError(f"{images.root / p!r}: a file name with a line break cannot go into labels.txt; "
                            "rename it")
        lines.append(p)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_labels(images: ImageList, path: str | Path) -> ImageList:
    """The images of ``images`` (the training folder's listing, or its shards' keys) that ``path`` (a labels.txt)
    names, in the listing's order; a folder's file names the shard sample of its key (:func:`sample_key`), so a
    folder run's labels.txt serves its shards. A named file that the listing lacks is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--labels-file {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    wanted = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not wanted:
        raise DataError(f"--labels-file {path} lists no images (one path under the training folder per line)")
    index = {p: i for i, p in enumerate(images.paths)}
    found = {p: p if p in index else sample_key(p) for p in wanted}  # a folder's paths name its shards' keys too
    missing = [p for p in wanted if found[p] not in index]
    if missing:
        raise DataError(f"--labels-file {path}: {len(missing)} of its {len(wanted)} images are not in "
                        f"{images.root}, e.g. {missing[0]!r}")
    return images.subset(sorted({index[found[p]] for p in wanted}))


def describe_labels(images: ImageList, full: ImageList) -> dict:
    """What a results file says of the labels: how many images, per class, and the share of the folder."""
    counts = class_counts(images)
    return {"images": len(images), "per_class": dict(zip(images.classes or [], counts)),
            "fraction": round(len(images) / max(len(full), 1), 6)}


def passes_per_epoch(n_images: int, batch_size: int, min_steps: int) -> int:
    """How often an epoch passes over ``n_images`` so that it makes at least ``min_steps`` steps of
    ``batch_size`` (one pass when the data alone makes that many)."""
    return max(1, math.ceil(min_steps * batch_size / max(n_images, 1)))
