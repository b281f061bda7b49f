"""Which shards a ``--data`` string names: a brace pattern (``shards/train-{000000..000999}.tar``), a directory
of ``.tar`` files, a text file that lists shards or URLs one per line (``pipe:curl -s https://...``,
``pipe:aws s3 cp s3://... -``), or one ``.tar``; and sizes as ``--shard-size`` takes them."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

from moco.core.errors import ConfigError, DataError, shown
from moco.data.folder import test_split

SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
LIST_SUFFIXES = (".txt", ".list", ".shards")
REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://")  # shards streamed, not files here


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
            shards = [ln if is_remote(ln) or Path(ln).is_absolute() else str(p.parent / ln)
                      for ln in lines if ln and not ln.startswith("#")]
            if not shards:
                raise DataError(f"{shown(p)} lists no shards")
        elif p.is_file():
            shards = [str(p)]
        else:
            raise DataError(f"no such shard, shard list or directory: {shown(p)}")
    missing = [x for x in shards if not is_remote(x) and not Path(x).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(shards)})" if len(missing) > 1 else ""
        raise DataError(f"shard not found: {shown(missing[0])}{more}")
    return shards


def shards_root(shards: list[str]) -> Path:
    """Where a set of shards lies, for messages and listings: the first one's folder (``.`` for a URL)."""
    return Path(shards[0]).parent if not is_remote(shards[0]) else Path(".")


def check_shards(data: str | Path) -> list[str]:
    """:func:`resolve_shards`, and the first local shard must read as a tar file: a ``--data`` that names
    shards is refused in one line before any work, like a missing folder."""
    shards = resolve_shards(data)
    first = next((x for x in shards if not is_remote(x)), None)
    if first is not None and not tarfile.is_tarfile(first):
        raise DataError(f"{shown(first)} is not a readable tar file: --data takes a folder of images or "
                        "WebDataset shards (.tar)")
    return shards


def is_remote(shard: str) -> bool:
    """A shard streamed from elsewhere (a URL or a ``pipe:`` command), not a file here."""
    return shard.startswith(REMOTE)


def shard_split(data: str | Path) -> tuple[list[str], list[str] | None]:
    """The training shards ``data`` names, and test shards when it has them: a directory holding
    ``train-*.tar`` (as ``moco shards`` writes a folder with train/ and test/) trains on those and monitors
    with its ``test-*.tar`` (or ``val-*.tar``); any other spec is all training shards."""
    p = Path(str(data)).expanduser()
    if not str(data).startswith(REMOTE) and p.is_dir() and any(p.glob("train-*.tar")):
        return sorted(str(q) for q in p.glob("train-*.tar")), test_split(
            lambda name: sorted(str(q) for q in p.glob(f"{name}-*.tar")) or None)
    return resolve_shards(data), None


