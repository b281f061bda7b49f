"""A data set as the commands name it: a folder of images, or WebDataset shards. This is the one place that
tells them apart; everything else takes a :data:`Data` and asks these functions.

- :func:`resolve` checks and resolves ``--data`` (one line when it is missing or unreadable);
- :func:`split` finds its training and held-out sets (the rule of :func:`moco.data.folder.test_split`);
- :func:`listing` lists its images without decoding, :func:`decode` decodes them into the cache;
- :func:`training_source` opens the batches pretraining draws from, and :func:`decode_source` decodes what
  such a source draws from (the kNN monitor's memory).
"""

from __future__ import annotations

from pathlib import Path

import torch

from moco.core.distributed import SINGLE_PROCESS, DistInfo
from moco.core.errors import ConfigError, DataError
from moco.data.cache import DecodedImages, decode_images
from moco.data.folder import ImageList, check_data_root, find_split, scan_images
from moco.data.pipelines import BatchSource, open_source
from moco.data.shards import check_shards, decode_shards, is_shard_spec, list_shards, shard_split, shards_root
from moco.data.stream import ShardSource
from moco.schema import DataConfig

Data = Path | list[str]
"""A resolved set: an image folder's path, or the list of its shards."""


def resolve(spec: str | Path | list[str]) -> Data:
    """``spec`` checked and resolved: a folder (refused in one line if missing or not a folder), or the shards it
    names (the first local one must read as a tar). A list is taken as shards already resolved."""
    if isinstance(spec, list):
        return spec
    if is_shard_spec(spec):
        return check_shards(spec)
    path = Path(spec).expanduser()
    check_data_root(path)
    return path


def split(spec: str | Path) -> tuple[Data, Data | None]:
    """``--data``'s training set and its held-out test set (None without one): a folder's ``train/`` and
    ``test/`` (or ``val/``), or a shard folder's ``train-*.tar`` and ``test-*.tar`` (or ``val-*.tar``); any
    other spec is all training data."""
    if is_shard_spec(spec):
        train, test = shard_split(spec)
        check_shards(train[0])
        return train, test
    check_data_root(Path(spec).expanduser())
    return find_split(Path(spec).expanduser())


def is_stream(data: Data) -> bool:
    """Whether ``data`` is streamed (shards) rather than listed up front (a folder)."""
    return isinstance(data, list)


def root(data: Data) -> Path:
    """Where a set lies, for messages: the folder, or the first shard's folder (``.`` for a URL)."""
    return shards_root(data) if isinstance(data, list) else data


def record(data: Data | None) -> str | list[str] | None:
    """How a checkpoint records a set, for a resumed run to find it again: the folder's absolute path, or the
    shards."""
    return None if data is None else data if isinstance(data, list) else str(data.resolve())


def listing(data: Data, strict: bool = False, warn: bool = True, progress: bool = True) -> ImageList:
    """The set's images without decoding any: a folder's files (with their class sub-folders, when it has
    them), or the shards' keys with their ``.cls`` labels (every sample must have one)."""
    if isinstance(data, list):
        return list_shards(data, strict, progress)
    return scan_images(data, strict=strict, warn=warn)


def decode(data: Data | str | Path, size: int, cache_dir: str | Path | None = None, workers: int = 2,
           strict: bool = False, progress: bool = True, chosen: ImageList | None = None,
           whole: bool = True) -> DecodedImages:
    """The set (a spec is resolved first) decoded into the cache at ``size``: all of it, or the ``chosen``
    images of its :func:`listing`. Shards are read whole either way and the chosen keys decoded; ``whole``
    (chosen is every image) keeps them in the whole set's cache entry, which the evaluations share."""
    data = resolve(data)
    if isinstance(data, list):
        keys = None if chosen is None or whole else chosen.paths
        return decode_shards(data, size, cache_dir, workers, strict, progress, keys)
    images = chosen if chosen is not None else scan_images(data, strict=strict)
    return decode_images(images, size, cache_dir, workers, strict, progress)


def training_source(data: Data, d: DataConfig, batch_size: int, gen: torch.Generator, device: torch.device,
                    dinfo: DistInfo = SINGLE_PROCESS, progress: bool = False, seed: int = 0,
                    indexed: bool = False) -> BatchSource:
    """The batches pretraining draws from ``data``: a folder's images (``data.max_images`` of them, drawn with
    ``seed``) through the ``data.pipeline`` it names, or its shards streamed. ``indexed``: the model keeps a
    feature per image by its index (a memory bank), which a stream cannot give."""
    if isinstance(data, list):
        if indexed:
            raise ConfigError("method.dictionary=memory_bank keeps a feature per image by index; a stream of "
                              "shards has no indices: use the moco or end_to_end dictionary")
        return ShardSource(data, d, batch_size, gen, device, dinfo, progress)
    images = scan_images(data, d.max_images, seed, d.strict, warn=dinfo.is_main)
    return open_source(images, d, batch_size, gen, device, dinfo, progress)


def decode_source(source: BatchSource, size: int, cache_dir: str | Path | None = None, workers: int = 2,
                  strict: bool = False, progress: bool = True, limit: int | None = None) -> DecodedImages:
    """What ``source`` draws from, decoded at ``size``: its own decoded cache when it keeps one, else its images
    or its shards (all their samples; refused when they were not counted or hold more than ``limit``)."""
    if source.decoded is not None:
        return source.decoded
    if isinstance(source, ShardSource):
        n = source.total_samples
        if limit is not None and (n is None or n > limit):
            raise DataError(f"the training shards hold {'an unknown number of' if n is None else n} samples, more "
                            f"than the {limit} that are decoded whole")
        return decode_shards(source.shards, size, cache_dir, workers, strict, progress)
    return decode_images(source.images, size, cache_dir, workers, strict, progress)
