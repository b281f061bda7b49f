"""Writing WebDataset shards from a folder. A shard is a plain tar in WebDataset's layout: one sample per key,
its members ``KEY.jpg`` (the image's own bytes) and, for an ImageFolder, ``KEY.cls`` (the class index as
text). Writing uses the ``webdataset`` library's ``ShardWriter``; shards go to a hidden folder first and are
moved into place as each one is complete, so an interrupted write leaves no torn shard among the finished
ones."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from moco.core.errors import ConfigError, DataError, shown
from moco.data.cache import report_skipped
from moco.data.folder import SPLITS, ImageList, check_data_root, scan_images


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




def write_folder(data: Path, out: Path, shard_size: int, max_count: int = 100_000, strict: bool = False,
                 progress: bool = True) -> list[tuple[str, ShardsWritten]]:
    """``moco shards``: a folder's splits (``train/``, ``test/``, ``val/``) as ``out/SPLIT-NNNNNN.tar``, or a
    folder without them as ``out/shard-NNNNNN.tar``; returns (the prefix, what was written) of each."""
    check_data_root(data)
    if max_count < 1:
        raise ConfigError(f"--max-count must be >= 1, got {max_count}")
    splits = [(n, data / n) for n in SPLITS if (data / n).is_dir()] or [("shard", data)]
    written = []
    for prefix, folder in splits:
        images = scan_images(folder, strict=strict)
        if not len(images):
            raise DataError(f"no images found in {folder}")
        written.append((prefix, write_shards(images, out, shard_size, prefix, max_count, strict=strict,
                                             progress=progress)))
    return written
