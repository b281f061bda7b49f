"""WebDataset shards: which shards a ``--data`` string names, writing shards from a folder, reading them
(samples in order, counts from the tar headers) and decoding a labelled set of shards into the cache.

A shard is a plain tar in WebDataset's layout: one sample per key, its members ``KEY.jpg`` (the image's own
bytes) and, for an ImageFolder, ``KEY.cls`` (the class index as text). ``--data`` names shards as a brace
pattern (``shards/train-{000000..000999}.tar``), a directory of ``.tar`` files, a text file that lists
shards or URLs one per line (``pipe:curl -s https://...``, ``pipe:aws s3 cp s3://... -``), or one ``.tar``.
Writing uses the ``webdataset`` library's ``ShardWriter``; shards go to a hidden folder first and are moved
into place as each one is complete, so an interrupted write leaves no torn shard among the finished ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from moco.core.errors import ConfigError, DataError, shown
from moco.data.folder import ImageList, load_rgb

log = logging.getLogger("moco")
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
LIST_SUFFIXES = (".txt", ".list", ".shards")
REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://")  # shards streamed, not files here
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")


def parse_size(text: str) -> int:
    """Bytes in ``256MB``, ``1.5GB``, ``512MiB`` or ``1000000``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise ConfigError(f"cannot read {text!r} as a size: use e.g. 256MB, 1GB, 512MiB or a number of bytes")
    n = int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])
    if n < 1:
        raise ConfigError(f"a shard size must be positive, got {text!r}")
    return n


def is_shard_spec(data: str | Path) -> bool:
    """Whether ``data`` names shards rather than an image folder: a brace pattern, a URL or ``pipe:``
    command, a ``.tar`` file, a shard list, or a directory whose only data files are ``.tar`` shards."""
    s = str(data)
    if "{" in s and ".." in s or s.startswith(REMOTE):
        return True
    p = Path(s).expanduser()
    if p.is_file():
        return p.suffix == ".tar" or p.suffix in LIST_SUFFIXES
    if p.is_dir():
        names = [e.name for e in os.scandir(p) if not e.name.startswith(".")]
        return any(n.endswith(".tar") for n in names) and not any(Path(p, n).is_dir() for n in names)
    return False


def resolve_shards(data: str | Path) -> list[str]:
    """The shards ``data`` names, in order: a brace pattern expanded (each local one must exist), the
    ``.tar`` files of a directory sorted by name, the lines of a list file (``#`` comments and blank lines
    left out; relative paths are relative to the list), or the one ``.tar``. Raises :class:`DataError`
    naming what matched nothing or what is missing."""
    from braceexpand import braceexpand  # webdataset's own dependency: its brace syntax, exactly

    s = str(data)
    if "{" in s and ".." in s:
        shards = list(braceexpand(s))
    elif s.startswith(REMOTE):
        shards = [s]
    else:
        p = Path(s).expanduser()
        if p.is_dir():
            shards = sorted(str(q) for q in p.glob("*.tar"))
            if not shards:
                raise DataError(f"no .tar shards in {shown(p)}")
            return shards
        if p.is_file() and p.suffix in LIST_SUFFIXES:
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            shards = [ln if _remote(ln) or Path(ln).is_absolute() else str(p.parent / ln)
                      for ln in lines if ln and not ln.startswith("#")]
            if not shards:
                raise DataError(f"{shown(p)} lists no shards")
        elif p.is_file():
            shards = [str(p)]
        else:
            raise DataError(f"no such shard, shard list or directory: {shown(p)}")
    missing = [x for x in shards if not _remote(x) and not Path(x).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(shards)})" if len(missing) > 1 else ""
        raise DataError(f"shard not found: {shown(missing[0])}{more}")
    return shards


def shards_root(shards: list[str]) -> Path:
    """Where a set of shards lies, for messages and listings: the first one's folder (``.`` for a URL)."""
    return Path(shards[0]).parent if not _remote(shards[0]) else Path(".")


def check_shards(data: str | Path) -> list[str]:
    """:func:`resolve_shards`, and the first local shard must read as a tar file: a ``--data`` that names
    shards is refused in one line before any work, like a missing folder."""
    shards = resolve_shards(data)
    first = next((x for x in shards if not _remote(x)), None)
    if first is not None and not tarfile.is_tarfile(first):
        raise DataError(f"{shown(first)} is not a readable tar file: --data takes a folder of images or "
                        "WebDataset shards (.tar)")
    return shards


def _remote(shard: str) -> bool:
    return shard.startswith(REMOTE)


def shard_split(data: str | Path) -> tuple[list[str], list[str] | None]:
    """The training shards ``data`` names, and test shards when it has them: a directory holding
    ``train-*.tar`` (as ``moco shards`` writes a folder with train/ and test/) trains on those and monitors
    with its ``test-*.tar`` (or ``val-*.tar``); any other spec is all training shards."""
    p = Path(str(data)).expanduser()
    if not str(data).startswith(REMOTE) and p.is_dir() and any(p.glob("train-*.tar")):
        train = sorted(str(q) for q in p.glob("train-*.tar"))
        for name in ("test", "val"):
            test = sorted(str(q) for q in p.glob(f"{name}-*.tar"))
            if test:
                return train, test
        return train, None
    return resolve_shards(data), None


def sample_key(rel: str) -> str:
    """The WebDataset key of the image at relative path ``rel``: the path without its extension. WebDataset
    splits a member's name at the first dot of its last part, so dots left in the name become ``_``
    (``a/img.v2.jpg`` -> ``a/img_v2``)."""
    parent, name = os.path.split(rel)
    stem = name.rsplit(".", 1)[0].replace(".", "_")
    return f"{parent}/{stem}" if parent else stem


@dataclass
class ShardsWritten:
    """What :func:`write_shards` made: the brace pattern to pass to ``--data``, and counts."""

    pattern: str
    shards: int
    samples: int
    skipped: list[tuple[str, str]]  # (relative path, why) of files that are not readable images


def _samples(images: ImageList, verify: bool, strict: bool, skipped: list[tuple[str, str]]) -> Iterator[dict]:
    """Each readable image of ``images`` as a WebDataset sample: its own bytes under its key (:func:`sample_key`)
    and ``cls`` when the list has labels. An unreadable file goes to ``skipped`` (``strict``: refused); two
    files with one key are refused."""
    keys: dict[str, str] = {}
    for i, rel in enumerate(images.paths):
        path = images.root / rel
        try:
            data = path.read_bytes()
            if verify:
                with Image.open(path) as im:
                    im.verify()
        except Exception as e:  # noqa: BLE001 - any failure to read means a bad file
            why = f"{type(e).__name__}: {e}"
            if strict:
                raise DataError(f"unreadable image: {shown(path)} ({why})") from None
            skipped.append((rel, why))
            continue
        key = sample_key(rel)
        if key in keys:
            raise DataError(f"{shown(path)} and {shown(images.root / keys[key])} would share the key {key!r} "
                            "(the same path up to the extension)")
        keys[key] = rel
        sample = {"__key__": key, rel.rsplit(".", 1)[-1].lower(): data}
        if images.labels is not None:
            sample["cls"] = str(images.labels[i]).encode()
        yield sample


def write_shards(images: ImageList, out: Path, shard_size: int, prefix: str = "shard", max_count: int = 100_000,
                 verify: bool = True, strict: bool = False, progress: bool = True) -> ShardsWritten:
    """Write ``images`` as WebDataset shards ``out/PREFIX-NNNNNN.tar`` of about ``shard_size`` bytes of image
    data (and at most ``max_count`` samples) each, in the list's order (:func:`_samples`), and
    ``out/classes.json`` (the class names by index). With ``verify``, a file PIL cannot identify is skipped and
    counted (refused when ``strict``). Shards are written in ``out/.partial`` and moved into ``out`` as each
    one is complete; one that an error cut short stays there. When no image could be read, nothing is left
    (not even ``out``, when this call made it)."""
    import webdataset as wds
    from tqdm import tqdm

    from moco.data.cache import report_skipped

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    if old:
        raise DataError(f"{shown(out)} already holds {len(old)} shard(s) named {prefix}-NNNNNN.tar; "
                        "choose another --out or remove them")
    partial = out / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    skipped: list[tuple[str, str]] = []
    finished: list[str] = []
    ok = [True]  # False once an error stops the writing: the last shard is then not complete

    def done(fname: str) -> None:
        if ok[0]:
            finished.append(str(out / Path(fname).name))
            os.replace(fname, finished[-1])

    # A whole-second mtime: with TarWriter's float time.time(), tarfile adds a pax header to every member, which
    # doubles the headers a reader parses (about 0.1 ms a sample, a tenth of a 32-px sample's views).
    sink = wds.ShardWriter(str(partial / f"{prefix}-%06d.tar"), maxcount=max_count, maxsize=shard_size, post=done,
                           verbose=0, mtime=int(time.time()))
    written = 0
    try:
        for sample in tqdm(_samples(images, verify, strict, skipped), total=len(images), unit="img", leave=False,
                           desc=f"writing shards to {out.name}", disable=None if progress else True):
            sink.write(sample)
            written += 1
    except BaseException:
        ok[0] = False
        raise
    finally:
        sink.close()
    shutil.rmtree(partial, ignore_errors=True)
    if written == 0:  # the writer closed an empty shard: leave nothing behind
        for f in finished:
            Path(f).unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise DataError(f"none of the {len(images)} image files in {shown(images.root)} could be read")
    if images.classes is not None:
        (out / "classes.json").write_text(json.dumps(images.classes))
    report_skipped(skipped, images.root)
    n = len(finished)
    pattern = str(out / f"{prefix}-{{000000..{n - 1:06d}}}.tar") if n > 1 else finished[0]
    return ShardsWritten(pattern, n, written, skipped)


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

    from moco.data.cache import report_skipped

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
    return ImageList(root, keys, labels, _class_names(shards, max(labels) + 1))


def image_field(sample: dict) -> str | None:
    """The sample's image member (the first image extension it has), or None."""
    return next((f for f in IMAGE_FIELDS if f in sample), None)


def decode(sample: dict):  # noqa: ANN201 - a PIL image
    """The sample's image as RGB (EXIF orientation applied); raises on a sample without one or bad bytes."""
    f = image_field(sample)
    if f is None:
        raise ValueError("a sample without an image member")
    return load_rgb(io.BytesIO(sample[f]))


_WANTED: frozenset[str] | None = None  # the keys a decoding job keeps (None: all), set once per pool process


def _want(keys: frozenset[str] | None) -> None:
    global _WANTED
    _WANTED = keys


def _decode_shard(args: tuple[str, int]) -> tuple[list[str], list[int | None], list, list[tuple[str, str]]]:
    """One shard's keys, classes (None without ``.cls``), decoded squares and failures (a process pool's job),
    of the samples whose keys :func:`_want` named (all by default)."""
    from moco.data.cache import decode_square

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
                  strict: bool = False, progress: bool = True, keys: list[str] | None = None,
                  ):  # noqa: ANN201 - DecodedImages (cache imports us)
    """Every sample of ``shards`` (or those whose key ``keys`` lists) decoded to a (size, size, 3) square, as
    :func:`moco.data.cache.decode_images` decodes a folder, in the shards' order, kept in the same cache (keyed
    by the shards' paths, sizes and times, or their URLs, and the keys). The images' "paths" are their keys;
    labels come from ``.cls`` when every sample has one, the class names from ``classes.json`` beside the
    shards (else the indices). Unreadable members are skipped with one warning (``strict``: refused)."""
    import numpy as np

    from moco.data.cache import CACHE_VERSION, DecodedImages, default_cache_dir, load_entry, map_jobs, save_entry

    ident = [(s, *((os.stat(s).st_size, os.stat(s).st_mtime_ns) if not _remote(s) else ())) for s in shards]
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
    classes = _class_names(shards, max(labels) + 1) if labels is not None else None
    arr = save_entry(npy, meta, np.stack([a for p in parts for a in p[2]]),
                     {"shards": shards, "size": size, "keys": keys, "labels": labels, "classes": classes,
                      "skipped": skipped})
    return DecodedImages(arr, ImageList(root, keys, labels, classes), skipped)


def _report(shards: list[str], skipped: list, root: Path, strict: bool, any_read: bool = True) -> None:
    """The unreadable members of a decoding: refused when ``strict``, else one warning; none read at all is an
    error."""
    from moco.data.cache import report_skipped

    if strict and skipped:
        raise DataError(f"unreadable shard data: {shown(skipped[0][0])} ({skipped[0][1]})")
    if not any_read:
        raise DataError(f"no readable sample in {shown(shards[0])}"
                        + (f" and {len(shards) - 1} other shard(s)" if len(shards) > 1 else ""))
    report_skipped(skipped, root)


def _class_names(shards: list[str], n: int) -> list[str]:
    """The class names from ``classes.json`` beside the first shard (as ``moco shards`` writes it), when it
    names at least ``n`` classes; else the indices as text."""
    if not _remote(shards[0]):
        path = Path(shards[0]).parent / "classes.json"
        try:
            names = json.loads(path.read_text())
            if isinstance(names, list) and len(names) >= n:
                return [str(x) for x in names]
        except (OSError, ValueError):
            pass
    return [str(i) for i in range(n)]


def decode_data(data: str | Path | list[str], size: int, cache_dir: str | Path | None = None, workers: int = 2,
                strict: bool = False, progress: bool = True):  # noqa: ANN201 - DecodedImages
    """A folder of images or WebDataset shards (:func:`is_shard_spec`, or a list of shards), decoded into the
    cache."""
    from moco.data.cache import decode_images
    from moco.data.folder import check_data_root, scan_images

    if isinstance(data, list):
        return decode_shards(data, size, cache_dir, workers, strict, progress)
    if is_shard_spec(data):
        return decode_shards(resolve_shards(data), size, cache_dir, workers, strict, progress)
    check_data_root(Path(data).expanduser())
    return decode_images(scan_images(Path(data).expanduser(), strict=strict), size, cache_dir, workers, strict,
                         progress)
