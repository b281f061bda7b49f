"""Reading WebDataset shards: samples in order (as WebDataset groups a tar's members), counts from the tar
headers alone, a labelled listing without decoding, and the class names beside the shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from moco.core.errors import DataError, shown
from moco.data.cache import report_skipped
from moco.data.folder import ImageList, load_rgb
from moco.data.shards.spec import is_remote, shards_root

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")


def count_samples(shard: str | Path) -> int:
    """Samples in a local shard (keys with an image member, as WebDataset groups a tar's members), from the
    tar headers alone: the members' data is passed over with seeks."""
    from webdataset.tariterators import base_plus_ext

    n, last = 0, None
    try:
        with tarfile.open(shard, "r:") as tf:
            for ti in tf:
                if not ti.isreg():
                    continue
                key, field = base_plus_ext(ti.name)
                if key is not None and field.lower() in IMAGE_FIELDS and key != last:
                    n, last = n + 1, key
                tf.members = []  # headers only; a shard of a million members stays small
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{shown(shard)} is not a readable tar file ({type(e).__name__}: {e})") from None
    return n


def shard_counts(shards: list[str], cache_dir: Path | None) -> list[int]:
    """:func:`count_samples` of every shard, kept in ``cache_dir`` by the shards' paths, sizes and times."""
    stats = [(s, os.stat(s).st_size, os.stat(s).st_mtime_ns) for s in shards]
    key = hashlib.sha256(json.dumps([(str(Path(s).resolve()), z, t) for s, z, t in stats]).encode()).hexdigest()
    path = cache_dir / f"shards-{key[:24]}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            counts = json.loads(path.read_text())
            if isinstance(counts, list) and len(counts) == len(shards):
                return [int(c) for c in counts]
        except (OSError, ValueError):
            pass  # a damaged entry is counted again
    counts = [count_samples(s) for s in shards]
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, path)
        except OSError:
            pass  # counting again next time costs seconds, not the run
    return counts


def read_samples(shards: list[str], on_error: Callable[[str, str], None]) -> Iterator[dict]:
    """The samples of ``shards`` in order, as WebDataset groups them (``__key__``, ``__url__`` and one bytes
    entry per member); a shard that cannot be opened or ends early is reported to ``on_error(shard, why)``
    and the stream goes on with the next."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    for shard in shards:
        def handler(exn: Exception, shard: str = shard) -> bool:
            first = str(exn.args[0]).split(" @ ")[0] if exn.args else ""
            on_error(shard, f"{type(exn).__name__}: {first or exn}")
            return True

        yield from group_by_keys(tar_file_expander(url_opener([{"url": shard}], handler=handler),
                                                   handler=handler), handler=handler)


def list_shards(shards: list[str], strict: bool = False, progress: bool = True) -> ImageList:
    """The labelled samples of ``shards`` as a listing, no image decoded: the keys (as the "paths"), their
    ``.cls`` classes and the class names (:func:`_class_names`); rooted at the first shard's folder. Samples
    without an image are passed over; a shard that ends early or cannot be opened is reported (``strict``:
    refused); a sample without ``.cls`` is an error: choosing labelled images needs every label."""
    from tqdm import tqdm

    keys: list[str] = []
    labels: list[int] = []
    failed: list[tuple[str, str]] = []

    def note(where: str, why: str) -> None:
        if strict:
            raise DataError(f"unreadable shard data: {shown(where)} ({why})")
        failed.append((where, why))

    for shard in tqdm(shards, desc="listing shards", unit="shard", leave=False,
                      disable=None if progress and len(shards) > 1 else True):
        for sample in read_samples([shard], note):
            if image_field(sample) is None:
                continue
            if "cls" not in sample:
                raise DataError(f"{shown(shard)}: sample {sample['__key__']!r} has no .cls label; labelled shards "
                                "hold KEY.cls (the class index) beside each image, as moco shards writes an "
                                "ImageFolder")
            try:
                labels.append(int(sample["cls"]))
            except ValueError:
                raise DataError(f"{shown(shard)}: sample {sample['__key__']!r} has .cls "
                                f"{bytes(sample['cls'][:20])!r}, not a class index") from None
            keys.append(sample["__key__"])
    root = shards_root(shards)
    report_skipped(failed, root)
    if not keys:
        raise DataError(f"no labelled sample in {shown(shards[0])}"
                        + (f" and {len(shards) - 1} other shard(s)" if len(shards) > 1 else ""))
    return ImageList(root, keys, labels, class_names(shards, max(labels) + 1))


def image_field(sample: dict) -> str | None:
    """The sample's image member (the first image extension it has), or None."""
    return next((f for f in IMAGE_FIELDS if f in sample), None)


def decode(sample: dict) -> Image.Image:
    """The sample's image as RGB (EXIF orientation applied); raises on a sample without one or bad bytes."""
    f = image_field(sample)
    if f is None:
        raise ValueError("a sample without an image member")
    return load_rgb(io.BytesIO(sample[f]))


def class_names(shards: list[str], n: int) -> list[str]:
    """The class names from ``classes.json`` beside the first shard (as ``moco shards`` writes it), when it
    names at least ``n`` classes; else the indices as text."""
    if not is_remote(shards[0]):
        path = Path(shards[0]).parent / "classes.json"
        try:
            names = json.loads(path.read_text())
            if isinstance(names, list) and len(names) >= n:
                return [str(x) for x in names]
        except (OSError, ValueError):
            pass
    return [str(i) for i in range(n)]
