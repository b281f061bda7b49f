"""Streaming WebDataset shards into training batches: equal steps on every process, each key once an epoch.

:class:`ShardSource` is the training loop's batch source for ``--data`` given as shards.

Shards are grouped once into as many *bundles* as there are reading slots (processes x workers), balanced by
their sample counts (largest shard first, each to the lightest bundle). Each epoch deals the bundles to the
slots in a seeded order and shuffles the shards within each bundle; every slot reads its shards in that order
(``webdataset``'s tar iterators), mixes the samples in a seeded buffer, and yields exactly ``batches`` batches
(the lightest bundle's worth). So every process runs the same number of steps whatever the shards' sizes,
no key is read twice in an epoch, and the samples a bundle holds beyond the lightest one wait for another
epoch (the slack is at most about one shard per slot). A DataLoader hands out its workers' batches in turn,
so batch ``i`` of an epoch is worker ``i % W``'s; a resumed epoch has each worker pass over the samples of
the batches it already gave, without decoding them.

Shards of unknown length (URLs): bundles hold equal numbers of shards, ``data.samples_per_epoch`` sets the
epoch, and a slot whose shards run out starts them again (so there a key may come twice in an epoch).
Unreadable members (a corrupt image, a sample without an image, a truncated tar) are skipped and reported
with the batch; a slot that runs short because of them also starts its shards again.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import zlib
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from moco.core.distributed import SINGLE_PROCESS, DistInfo
from moco.core.errors import DataError, shown
from moco.data.augment import per_image_transform, view_recipes
from moco.data.encoded import as_encoded, decode_on_device
from moco.data.pipelines import device_views, from_workers
from moco.data.shards import REMOTE, decode, image_field, read_samples, shard_counts, shards_root
from moco.schema import DataConfig

log = logging.getLogger("moco")
TRACE_ENV = "MOCO_TRACE_KEYS"  # a folder: each process appends "EPOCH_SEED KEY" per sample it trains on


def make_bundles(counts: list[int], slots: int) -> list[list[int]]:
    """Shard indices in ``slots`` bundles balanced by sample count: the largest shard first, each to the
    lightest bundle so far (ties to the lower bundle). Deterministic."""
    if len(counts) < slots:
        raise DataError(f"{len(counts)} shard(s) for {slots} reading slots (processes x data.workers): every slot "
                        "needs a shard; write smaller shards (moco shards --shard-size) or lower data.workers")
    heap = [(0, s) for s in range(slots)]  # (load, bundle): the lightest on top
    bundles: list[list[int]] = [[] for _ in range(slots)]
    for i in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        load, j = heapq.heappop(heap)
        bundles[j].append(i)
        heapq.heappush(heap, (load + counts[i], j))
    return bundles


def deal(bundles: list[list[int]], seed: int) -> list[list[int]]:
    """One epoch's shards for each slot: the bundles in a seeded order, each bundle's shards shuffled."""
    g = random.Random(seed)
    order = list(range(len(bundles)))
    g.shuffle(order)
    dealt = [list(bundles[b]) for b in order]
    for shards in dealt:
        g.shuffle(shards)
    return dealt


def batches_per_slot(counts: list[int], bundles: list[list[int]], batch: int) -> int:
    """Batches every slot yields an epoch: the lightest bundle's samples in batches of ``batch``."""
    return min(sum(counts[i] for i in b) for b in bundles) // batch


def done_before(step: int, worker: int, workers: int) -> int:
    """Batches worker ``worker`` of ``workers`` gave in an epoch's first ``step`` steps (they take turns)."""
    return max(0, (step - worker + workers - 1) // workers)


def shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """``samples`` mixed in a buffer of ``size`` (filled first, then each new sample replaces a random one,
    which is yielded), drawing from ``rng``: the same seed, the same order."""
    buf: list[dict] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        k = rng.randrange(size)
        buf[k], s = s, buf[k]
        yield s
    rng.shuffle(buf)
    yield from buf


def two_views(transforms: tuple[Callable, Callable], seed: int) -> Callable[[dict], tuple]:
    """``make`` for pretraining: the sample's image decoded, its two augmented views drawn from torch's
    generator seeded by (``seed``, the sample's key), its state restored after: the views are the same
    whichever process or worker makes them, and a resumed epoch makes the same ones; and its key."""
    def make(sample: dict) -> tuple:
        img = decode(sample)
        gen = torch.default_generator  # torchvision's transforms draw from it; torch.manual_seed would also
        state = gen.get_state()        # queue accelerator seeding, at a stack trace per call
        gen.manual_seed(zlib.crc32(f"{seed}/{sample['__key__']}".encode()))
        try:
            return transforms[0](img), transforms[1](img), sample["__key__"]
        finally:
            gen.set_state(state)
    return make


def encoded(sample: dict) -> tuple[torch.Tensor, str]:
    """``make`` for the device path: the sample's image as :func:`~moco.data.encoded.as_encoded` gives it (an
    RGB JPEG's bytes for the device to decode, any other image decoded here), and its key."""
    f = image_field(sample)
    if f is None:
        raise ValueError("a sample without an image member")
    return as_encoded(sample[f]), sample["__key__"]


@dataclass
class SlotPlan:
    """What one reading slot does in an epoch: its shards in order, the buffer's seed and size, how many
    batches to give and how many to pass over first (a resumed epoch)."""

    shards: list[str]
    seed: int
    buffer: int
    batches: int
    skip: int
    batch: int


def slot_batches(plan: SlotPlan, make: Callable[[dict], object], strict: bool,
                 ) -> Iterator[tuple[list, list[tuple[str, str]]]]:
    """The epoch's ``plan.batches`` batches of ``plan.batch`` items ``make(sample)`` less the first ``plan.skip``
    (their samples passed over undecoded), each with the [(where, why)] of what failed since the
    last one; ``make`` decodes the sample and raises on a bad one. A stream that runs short starts its shards
    again (a new buffer seed); ``strict`` raises :class:`DataError` at the first failure."""
    failed: list[tuple[str, str]] = []

    def note(where: str, why: str) -> None:
        if strict:
            raise DataError(f"unreadable shard data: {shown(where)} ({why})")
        failed.append((where, why))

    passes, skip, given, items = 0, plan.skip * plan.batch, plan.skip, []  # the batches passed over count
    while given < plan.batches:
        rng = random.Random(plan.seed * 1_000_003 + passes)
        read = good = 0
        for sample in shuffled(read_samples(plan.shards, note), plan.buffer, rng):
            read += 1
            if skip:
                skip -= 1
                continue
            try:
                items.append(make(sample))
                good += 1
            except Exception as e:  # noqa: BLE001 - any failure to decode means a bad member
                note(f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}", f"{type(e).__name__}: {e}")
                continue
            if len(items) == plan.batch:
                yield items, failed
                items, failed, given = [], [], given + 1
                if given == plan.batches:
                    return
        passes += 1
        if read == 0 or (good == 0 and not skip):  # nothing in these shards, or nothing that decodes
            raise DataError(f"no readable sample in {shown(plan.shards[0])}"
                            + (f" and {len(plan.shards) - 1} other shard(s)" if len(plan.shards) > 1 else ""))


def epoch_plans(shards: list[str], bundles: list[list[int]], batches: int, rank: int, workers: int, seed: int,
                epoch_step: int, batch: int, buffer: int) -> list[SlotPlan]:
    """The slot plans of process ``rank``'s ``workers`` for the epoch of ``seed``, from step ``epoch_step``
    (``batches`` batches of ``batch`` each a slot; slot ``rank * workers + w`` is worker ``w``'s). A resumed
    epoch's list starts with the worker whose turn is next: a DataLoader starts its turns at its worker 0."""
    dealt = deal(bundles, seed)
    plans = [SlotPlan([shards[i] for i in dealt[rank * workers + w]], seed * 7919 + rank * workers + w, buffer,
                      batches, done_before(epoch_step, w, workers), batch) for w in range(workers)]
    turn = epoch_step % workers
    return plans[turn:] + plans[:turn]


class ShardStream(torch.utils.data.IterableDataset):
    """One process's share of an epoch: each DataLoader worker runs the :class:`SlotPlan` of its slot
    (``plans[worker]``) and yields collated batches of ``make``'s items with their failures (use
    ``batch_size=None``: the batches are made here)."""

    def __init__(self, plans: list[SlotPlan], make: Callable[[dict], object],
                 collate: Callable[[list], tuple], strict: bool) -> None:
        super().__init__()
        self.plans, self.make, self.collate, self.strict = plans, make, collate, strict

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        w = 0 if info is None else info.id
        n = 1 if info is None else info.num_workers
        if n != len(self.plans):
            raise RuntimeError(f"{len(self.plans)} slot plans for {n} workers")
        for items, failed in slot_batches(self.plans[w], self.make, self.strict):
            yield (*self.collate(items), failed)


class EpochLength:
    """What the training loop counts of a stream: ``len()`` is the samples an epoch trains on (its steps times
    the global batch), so that ``steps_per_epoch`` comes out as the stream's."""

    def __init__(self, samples: int, root: Path) -> None:
        self.samples, self.root = samples, root
        self.labels = self.classes = None

    def __len__(self) -> int:
        return self.samples


def _pairs(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items]), [it[2] for it in items]


def _files(items: list[tuple]) -> tuple[list[torch.Tensor], list[str]]:
    return [it[0] for it in items], [it[1] for it in items]


class ShardSource:
    """Pretraining's batches streamed from WebDataset shards (``--data`` names shards), from the slots' streams
    (:func:`epoch_plans`): two PIL views of each image made in the DataLoader workers, as the ``per_image``
    pipeline makes them; or, with ``data.pipeline=device``, the workers pass the JPEG bytes on and the
    training device decodes and augments whole batches, as the ``device`` pipeline does (the draws then come
    from the run's generator, which a checkpoint keeps). Local shards are counted once (kept in the cache) to
    balance the bundles and size the epoch; shards of unknown length (URLs) need ``data.samples_per_epoch``."""

    decoded = None
    streams = True  # the loop draws no permutation of the data: the stream orders itself

    def __init__(self, shards: list[str], d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo = SINGLE_PROCESS, progress: bool = False) -> None:
        self.shards, self.d, self.batch_size, self.device, self.dinfo = shards, d, batch_size, device, dinfo
        self.gen = gen
        self.workers = max(1, d.workers)  # workers=0 reads in this process: one slot
        slots = dinfo.world_size * self.workers
        per_rank = batch_size // dinfo.world_size
        remote = [s for s in shards if s.startswith(REMOTE)]
        if d.samples_per_epoch:
            self.counts = [1] * len(shards)  # bundles of equal numbers of shards
            self.bundles = make_bundles(self.counts, slots)
            self.batches = d.samples_per_epoch // (batch_size * self.workers)
            self.known = False
        elif remote:
            raise DataError(f"{shown(remote[0])} is streamed: its length is unknown, so set "
                            "data.samples_per_epoch (--samples-per-epoch) to say how many samples make an epoch")
        else:
            self.counts = shard_counts(shards, Path(d.cache_dir) if d.cache_dir else None)
            self.bundles = make_bundles(self.counts, slots)
            self.batches = batches_per_slot(self.counts, self.bundles, per_rank)
            self.known = True
        if self.batches < 1:
            raise DataError(f"the shards hold too few samples for one batch of {per_rank} in each of {slots} reading "
                            "slots (processes x data.workers): lower --batch-size or data.workers")
        self.steps = self.batches * self.workers
        if self.known and dinfo.is_main and self.batches * per_rank * slots < 0.9 * sum(self.counts):
            log.warning("%d shard(s) for %d reading slot(s) (processes x data.workers): an epoch trains on %d of their "
                        "%d samples (every slot gives the lightest slot's batches); more, smaller shards even this "
                        "out (moco shards --shard-size)", len(shards), slots, self.batches * per_rank * slots,
                        sum(self.counts))
        self.images = EpochLength(self.steps * batch_size, shards_root(shards))
        self.lost: dict[str, str] = {}  # (shard or shard:key) -> why, as reported by the workers

    @property
    def total_samples(self) -> int | None:
        """Samples in all the shards, when counted."""
        return sum(self.counts) if self.known else None

    def epoch(self, perm: torch.Tensor | None, start: int, side: int, seed: int) -> Iterator[tuple]:
        d, dinfo = self.d, self.dinfo
        plans = epoch_plans(self.shards, self.bundles, self.batches, dinfo.rank, self.workers, seed, start,
                            self.batch_size // dinfo.world_size, d.shuffle_buffer)
        on_device = d.pipeline == "device"
        if on_device:
            ds = ShardStream(plans, encoded, _files, d.strict)
        else:
            transforms = tuple(per_image_transform(k, side, d.crop_min_scale, d.normalize)
                               for k in view_recipes(d.augmentation))
            ds = ShardStream(plans, two_views(transforms, seed), _pairs, d.strict)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=d.workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=False)
        trace = os.environ.get(TRACE_ENV)
        with open(Path(trace) / f"keys-rank{dinfo.rank}.txt", "a") if trace else nullcontext() as keys_file:
            for batch in from_workers(loader):
                if on_device:
                    files, keys, failed = batch
                    q, k = device_views(decode_on_device(files, self.device, keys), d, self.batch_size, self.gen,
                                        dinfo, side)
                else:
                    q, k, keys, failed = batch
                for where, why in failed:
                    if where not in self.lost:
                        self.lost[where] = why
                        log.warning("%s could not be read (%s); skipped", shown(where), why)
                if keys_file is not None:
                    keys_file.write("".join(f"{seed} {key}\n" for key in keys))
                yield q.to(self.device, non_blocking=True), k.to(self.device, non_blocking=True), None
