"""WebDataset shards, one module per job: which shards a ``--data`` string names (:mod:`.spec`), writing them
from a folder (:mod:`.write`), reading them (:mod:`.read`: samples in order, counts from the tar headers, a
labelled listing) and decoding a labelled set into the cache (:mod:`.decode`). Streaming them to training is
:mod:`moco.data.stream`."""

from moco.data.shards.decode import decode_shards
from moco.data.shards.read import (
    IMAGE_FIELDS,
    class_names,
    count_samples,
    decode,
    image_field,
    list_shards,
    read_samples,
    shard_counts,
)
from moco.data.shards.spec import (
    REMOTE,
    check_shards,
    is_remote,
    is_shard_spec,
    parse_size,
    resolve_shards,
    shard_split,
    shards_root,
)
from moco.data.shards.write import ShardsWritten, sample_key, write_folder, write_shards

__all__ = [
    "IMAGE_FIELDS", "REMOTE", "ShardsWritten", "check_shards", "class_names", "count_samples", "decode",
    "decode_shards", "image_field", "is_remote", "is_shard_spec", "list_shards", "parse_size", "read_samples",
    "resolve_shards", "sample_key", "shard_counts", "shard_split", "shards_root", "write_folder", "write_shards",
]
