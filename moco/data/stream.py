"""Streaming WebDataset shards into training batches: every sample once an epoch, equal steps on every process.

:class:`ShardSource` is the training loop's batch source for ``--data`` given as shards.

The shards are shared out twice, once among the processes (ranks) and once among each process's loader
workers (:func:`share`): in balanced bundles of whole shards (largest first, each to the lightest bundle),
so that each shard is read once, when the bundles come within :data:`TOLERANCE` of each other; otherwise,
and always when there are fewer shards than readers, every reader reads every shard and keeps its stride of
the samples (reader r of n: samples r, r + n, ...), at the cost of reading the shards n times.

Each epoch deals the bundles anew (seeded) and each worker reads its shards in a seeded order through a
seeded shuffle buffer. A worker gives every one of its samples: full batches (*chunks*) as it goes, and what
is left at its end (fewer than a batch) in a last chunk, which the process holds. A DataLoader serves its
workers' chunks in turn, dropping a worker once it has given all of its own (:func:`turns`); after the last
full chunk the held remainders, joined in worker order, make the epoch's last batches. So one process trains
on every sample of every shard each epoch, bar fewer than one batch at the end, whatever the number of
workers; processes all run the steps of the lightest one (:attr:`ShardSource.steps`), so across processes
an epoch leaves out at most their imbalance.

Resume: each chunk carries its worker's read position (samples out of the shuffle buffer, failures
included), and a checkpoint records where every worker stood after its last trained chunk
(:meth:`ShardSource.position`). A resumed epoch has each worker pass over that many samples without decoding
them and continue, its loader rotated so that the next worker in turn comes first: the same batches follow,
even after unreadable members. Without a record (another number of processes or workers) the positions are
computed as if nothing had failed, and the rest of that epoch is approximate.

Shards of unknown length (URLs): bundles hold equal numbers of shards, ``data.samples_per_epoch`` sets the
epoch, and a worker whose shards run out starts them again (so there a key may come twice in an epoch).
Unreadable members (a corrupt image, a sample without an image, a truncated tar) are skipped and reported
with the chunk; a worker that runs short because of them also starts its shards again.
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
from typing import TextIO

import torch

from moco.core.distributed import SINGLE_PROCESS, DistInfo
from moco.core.errors import DataError, shown
from moco.data.augment import per_image_transform, view_recipes
from moco.data.encoded import as_encoded, decode_on_device
from moco.data.pipelines import device_views, from_workers
from moco.data.shards import decode, image_field, is_remote, read_samples, shard_counts, shards_root
from moco.schema import DataConfig

log = logging.getLogger("moco")
TRACE_ENV = "MOCO_TRACE_KEYS"  # a folder: each process appends "EPOCH_SEED KEY" per sample it trains on
TOLERANCE = 0.05  # bundles of whole shards whose loads differ by more than this share of their mean are not used


@dataclass(frozen=True)
class Part:
    """Samples ``j, j + k, j + 2k, ...`` of shard ``shard`` (counting the samples that have an image, in the tar's
    order): the whole shard when ``k`` is 1."""

    shard: int
    j: int = 0
    k: int = 1

    def size(self, n: int) -> int:
        """How many of a shard's ``n`` samples the part holds."""
        return len(range(self.j, n, self.k))

    def stride(self, r: int, n: int) -> Part:
        """The part's ``r``-th of ``n`` strides."""
        return Part(self.shard, self.j + self.k * r, self.k * n)


def make_bundles(sizes: list[int], n: int) -> list[list[int]]:
    """Indices of ``sizes`` in ``n`` bundles balanced by size: the largest first, each to the lightest bundle so
    far (ties to the lower bundle). Deterministic."""
    heap = [(0, b) for b in range(n)]  # (load, bundle): the lightest on top
    bundles: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, b = heapq.heappop(heap)
        bundles[b].append(i)
        heapq.heappush(heap, (load + sizes[i], b))
    return bundles


def share(parts: list[Part], sizes: list[int], n: int, tolerance: float | None = TOLERANCE) -> list[list[Part]]:
    """``parts`` (``sizes[i]`` samples in ``parts[i]``) among ``n`` readers: balanced bundles (:func:`make_bundles`)
    when there are at least ``n`` parts and the bundles' loads differ by at most ``tolerance`` of their mean
    (None: by any amount, for shards of unknown length); otherwise reader ``r`` takes the ``r``-th stride of every
    part, so every reader reads every shard."""
    if n == 1:
        return [list(parts)]
    if len(parts) >= n:
        bundles = make_bundles(sizes, n)
        loads = [sum(sizes[i] for i in b) for b in bundles]
        if tolerance is None or max(loads) - min(loads) <= tolerance * sum(loads) / n:
            return [[parts[i] for i in b] for b in bundles]
    return [[p.stride(r, n) for p in parts] for r in range(n)]


def turns(full: list[int], step: int) -> tuple[list[int], int]:
    """Where an epoch stands after ``step`` full chunks, when worker ``w`` gives ``full[w]`` full chunks and then
    one last chunk, and a DataLoader serves its workers in turn, dropping each once it has given all of its
    chunks: (full chunks each worker has given, the worker whose turn is next)."""
    given = [0] * len(full)
    if step <= 0:
        return given, 0
    done = 0
    for r in range(max(full) + 1):
        for w, n in enumerate(full):
            if r < n:
                given[w] += 1
                done += 1
                if done == step:
                    return given, (w + 1) % len(full)
    return given, 0  # past the full chunks: only the last ones (the held remainders) are left


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


def read_part(shard: str, j: int, k: int, on_error: Callable[[str, str], None]) -> Iterator[dict]:
    """The samples of part ``(j, k)`` of ``shard`` (:class:`Part`). A sample without an image is not counted,
    and is reported by the part that starts the shard (``j == 0``) alone."""
    n = -1
    for sample in read_samples([shard], on_error):
        if image_field(sample) is None:
            if j == 0:
                on_error(f"{shard}:{sample.get('__key__', '?')}", "ValueError: a sample without an image member")
            continue
        n += 1
        if n % k == j:
            yield sample


@dataclass(frozen=True)
class TwoViews:
    """``make`` for pretraining: the sample's image decoded, its two augmented views drawn from torch's
    generator seeded by (``seed``, the sample's key), its state restored after: the views are the same
    whichever process or worker makes them, and a resumed epoch makes the same ones; and its key. A class,
    not a closure, so that it pickles: DataLoader workers are spawned, not forked, in a spawned process
    (torch.multiprocessing) and by default from Python 3.14."""

    transforms: tuple[Callable, Callable]
    seed: int

    def __call__(self, sample: dict) -> tuple:
        img = decode(sample)
        gen = torch.default_generator  # torchvision's transforms draw from it; torch.manual_seed would also
        state = gen.get_state()        # queue accelerator seeding, at a stack trace per call
        gen.manual_seed(zlib.crc32(f"{self.seed}/{sample['__key__']}".encode()))
        try:
            return self.transforms[0](img), self.transforms[1](img), sample["__key__"]
        finally:
            gen.set_state(state)


def encoded(sample: dict) -> tuple[torch.Tensor, str]:
    """``make`` for the device path: the sample's image as :func:`~moco.data.encoded.as_encoded` gives it (an
    RGB JPEG's bytes for the device to decode, any other image decoded here), and its key."""
    f = image_field(sample)
    if f is None:
        raise ValueError("a sample without an image member")
    return as_encoded(sample[f]), sample["__key__"]


@dataclass
class ReaderPlan:
    """What one loader worker reads in an epoch: its parts in order (shard, j, k), its buffer's seed and size,
    the items it gives, in chunks of ``batch``, and where it starts: ``given`` full chunks already trained, then
    read position ``pos`` of pass ``passes`` (samples out of the buffer, failures included)."""

    parts: list[tuple[str, int, int]]
    seed: int
    buffer: int
    items: int
    batch: int
    given: int = 0
    passes: int = 0
    pos: int = 0
    worker: int = 0  # the worker's index in the process (a resumed epoch's loader serves them rotated)

    @property
    def full(self) -> int:
        """Full chunks the worker gives in the whole epoch."""
        return self.items // self.batch


Chunk = tuple[list, int, int, bool, list[tuple[str, str]]]  # (items, pass, position after, last, failures)


def reader_chunks(plan: ReaderPlan, make: Callable[[dict], object], strict: bool) -> Iterator[Chunk]:
    """The chunks of one worker's epoch from its start point: full chunks of ``plan.batch`` items
    ``make(sample)``, then a last chunk with the rest (fewer than a batch, maybe none), each with the read
    position after it and the [(where, why)] of what failed since the chunk before; ``make`` decodes the sample
    and raises on a bad one. A stream that runs out before ``plan.items`` starts its parts again (a new
    buffer seed); ``strict`` raises :class:`DataError` at the first failure."""
    failed: list[tuple[str, str]] = []

    def note(where: str, why: str) -> None:
        if strict:
            raise DataError(f"unreadable shard data: {shown(where)} ({why})")
        failed.append((where, why))

    def stream() -> Iterator[dict]:
        for shard, j, k in plan.parts:
            yield from read_part(shard, j, k, note)

    done, passes, skip, items = plan.given * plan.batch, plan.passes, plan.pos, []
    pos = 0
    while done + len(items) < plan.items:
        rng = random.Random(f"buffer/{plan.seed}/{passes}")  # a string seed is hashed: near seeds, unrelated draws
        pos = good = 0
        for sample in shuffled(stream(), plan.buffer, rng):
            pos += 1
            if pos <= skip:
                continue
            try:
                items.append(make(sample))
                good += 1
            except Exception as e:  # noqa: BLE001 - any failure to decode means a bad member
                note(f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}", f"{type(e).__name__}: {e}")
                continue
            if len(items) == plan.batch:
                yield items, passes, pos, False, failed
                done, items, failed = done + plan.batch, [], []
            if done + len(items) == plan.items:
                break
        else:
            if good == 0 and (pos == 0 or skip == 0):  # nothing in these parts, or nothing that decodes
                raise DataError(f"no readable sample in {shown(plan.parts[0][0])}" + (
                    f" and {len(plan.parts) - 1} other part(s)" if len(plan.parts) > 1 else ""))
            passes, skip = passes + 1, 0
    yield items, passes, pos, True, failed


class ShardStream(torch.utils.data.IterableDataset):
    """One process's share of an epoch: loader worker ``i`` runs ``plans[i]`` and yields (its worker index, its
    pass and read position after the chunk, whether the chunk is its last, the chunk collated or None, the
    failures) for each chunk (use ``batch_size=None``: the chunks are made here)."""

    def __init__(self, plans: list[ReaderPlan], make: Callable[[dict], object],
                 collate: Callable[[list], tuple], strict: bool) -> None:
        super().__init__()
        self.plans, self.make, self.collate, self.strict = plans, make, collate, strict

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        i = 0 if info is None else info.id
        n = 1 if info is None else info.num_workers
        if n != len(self.plans):
            raise RuntimeError(f"{len(self.plans)} reader plans for {n} workers")
        plan = self.plans[i]
        for items, passes, pos, last, failed in reader_chunks(plan, self.make, self.strict):
            yield plan.worker, passes, pos, last, self.collate(items) if items else None, failed


def _pairs(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items]), [it[2] for it in items]


def _files(items: list[tuple]) -> tuple[list[torch.Tensor], list[str]]:
    return [it[0] for it in items], [it[1] for it in items]


def _join(chunks: list[tuple]) -> tuple:
    """Collated chunks as one: tensors concatenated, lists joined, field by field."""
    return tuple(torch.cat(f) if isinstance(f[0], torch.Tensor) else [x for part in f for x in part]
                 for f in zip(*chunks))


def _size(chunk: tuple) -> int:
    return len(chunk[-1])  # the keys


class ShardSource:
    """Pretraining's batches streamed from WebDataset shards (``--data`` names shards): two PIL views of each
    image made in the DataLoader workers, as the ``per_image`` pipeline makes them; or, with
    ``data.pipeline=device``, the workers pass the JPEG bytes on and the training device decodes and augments
    whole batches, as the ``device`` pipeline does (the draws then come from the run's generator, which a
    checkpoint keeps). Local shards are counted once (kept in the cache) to share them out and size the epoch;
    shards of unknown length (URLs) need ``data.samples_per_epoch``."""

    decoded = None
    streams = True  # the loop draws no permutation of the data: the stream orders itself

    def __init__(self, shards: list[str], d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo = SINGLE_PROCESS, progress: bool = False) -> None:
        self.shards, self.d, self.batch_size, self.device, self.dinfo = shards, d, batch_size, device, dinfo
        self.gen = gen
        self.workers = max(1, d.workers)  # workers=0 reads in this process: one reader
        world, per_rank = dinfo.world_size, batch_size // dinfo.world_size
        remote = [s for s in shards if is_remote(s)]
        if d.samples_per_epoch:
            self.counts, self.known = [1] * len(shards), False  # bundles of equal numbers of shards
        elif remote:
            raise DataError(f"{shown(remote[0])} is streamed: its length is unknown, so set "
                            "data.samples_per_epoch (--samples-per-epoch) to say how many samples make an epoch")
        else:
            self.counts, self.known = shard_counts(shards, Path(d.cache_dir) if d.cache_dir else None), True
        tol = TOLERANCE if self.known else None
        ranks = share([Part(i) for i in range(len(shards))], self.counts, world, tol)
        self.readers = [share(parts, [p.size(self.counts[p.shard]) for p in parts], self.workers, tol)
                        for parts in ranks]
        self.rank_items = ([sum(p.size(self.counts[p.shard]) for p in parts) for parts in ranks] if self.known
                           else [d.samples_per_epoch // world] * world)
        self.steps = min(self.rank_items) // per_rank
        total = sum(self.counts) if self.known else d.samples_per_epoch
        if self.steps < 1:
            raise DataError(f"the shards hold {total} sample(s), fewer than one batch of {per_rank} in each of "
                            f"{world} process(es): lower --batch-size")
        self.samples = self.steps * batch_size  # what an epoch trains on
        self.root = shards_root(shards)
        self.lost: dict[str, str] = {}  # (shard or shard:key) -> why, as reported by the workers
        self.trained = [(0, 0, 0)] * self.workers  # per worker: full chunks trained, pass, read position
        self.record: list[int] | None = None  # this process's worker positions from a checkpoint, for the resume
        if dinfo.is_main:
            self._describe(total)

    def _describe(self, total: int) -> None:
        """A line when readers share shards by strides (each reads them all) or the processes' shares leave a
        tenth of the epoch out."""
        k = max(p.k for r in self.readers for w in r for p in w)
        if k > 1:
            log.info("%d shard(s) for %d process(es) x %d worker(s): shards are read by up to %d readers, each "
                     "keeping its stride of the samples (up to %dx the reading); more shards than readers read "
                     "each shard once (moco shards --shard-size)", len(self.shards), self.dinfo.world_size,
                     self.workers, k, k)
        trained = self.steps * self.batch_size
        if self.known and trained < 0.9 * total:
            log.warning("an epoch trains on %d of the shards' %d samples: the processes' shares are uneven "
                        "(every process runs the lightest one's steps); more, smaller shards even this out "
                        "(moco shards --shard-size)", trained, total)

    @property
    def total_samples(self) -> int | None:
        """Samples in all the shards, when counted."""
        return sum(self.counts) if self.known else None

    def steps_per_epoch(self, passes: int = 1) -> int:
        """Global steps in an epoch (the lightest process's share, whole batches); ``passes`` repeats it."""
        return self.steps * passes

    def position(self) -> list[int]:
        """Where this process's workers stand after the last batch given: (full chunks, pass, read position)
        each, flat, for a checkpoint."""
        return [x for t in self.trained for x in t]

    def resume_at(self, record: list[int] | None) -> None:
        """Start the next epoch (a resumed one) at the worker positions a checkpoint recorded (:meth:`position`);
        None: compute them from the step, as if no sample had failed."""
        self.record = record if record is not None and len(record) == 3 * self.workers else None

    def plans(self, seed: int, start: int) -> list[ReaderPlan]:
        """This process's reader plans for the epoch of ``seed`` from step ``start``, in the order its loader
        serves them (rotated, on a resume, so that the next worker in turn comes first)."""
        d, rank, w_n = self.d, self.dinfo.rank, self.workers
        g = random.Random(f"deal/{seed}")
        order = list(range(len(self.readers)))
        g.shuffle(order)  # which process reads which share: another each epoch
        mine = [list(p) for p in self.readers[order[rank]]]
        g.shuffle(mine)
        for p in mine:
            g.shuffle(p)
        b = self.batch_size // self.dinfo.world_size
        if self.known:
            items = [sum(p.size(self.counts[p.shard]) for p in parts) for parts in mine]
        else:
            t = self.rank_items[rank]
            items = [t // w_n + (w < t % w_n) for w in range(w_n)]
        plans = [ReaderPlan([(self.shards[p.shard], p.j, p.k) for p in parts], seed * 7919 + rank * w_n + w,
                            d.shuffle_buffer, items[w], b, worker=w) for w, parts in enumerate(mine)]
        given, first = turns([p.full for p in plans], start)
        record, self.record = self.record, None
        for w, p in enumerate(plans):
            if record is not None and start > 0 and record[3 * w] == given[w]:
                p.given, p.passes, p.pos = record[3 * w: 3 * w + 3]
            else:
                p.given, p.pos = given[w], given[w] * b  # as if nothing failed: exact without failures
        self.trained = [(p.given, p.passes, p.pos) for p in plans]
        return plans[first:] + plans[:first]

    def epoch(self, perm: torch.Tensor | None, start: int, side: int, seed: int) -> Iterator[tuple]:
        d = self.d
        plans = self.plans(seed, start)
        on_device = d.pipeline == "device"
        if on_device:
            ds = ShardStream(plans, encoded, _files, d.strict)
        else:
            transforms = tuple(per_image_transform(k, side, d.crop_min_scale, d.normalize)
                               for k in view_recipes(d.augmentation))
            ds = ShardStream(plans, TwoViews(transforms, seed), _pairs, d.strict)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=d.workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=False)
        trace = os.environ.get(TRACE_ENV)
        with open(Path(trace) / f"keys-rank{self.dinfo.rank}.txt", "a") if trace else nullcontext() as keys_file:
            yield from self._batches(loader, start, side, seed, sum(p.full for p in plans), keys_file)

    def _batches(self, loader: torch.utils.data.DataLoader, start: int, side: int, seed: int, full: int,
                 keys_file: TextIO | None) -> Iterator[tuple]:
        """The epoch's batches from step ``start``: the workers' full chunks as they come, then the held last
        chunks joined in worker order; ``full`` is the epoch's number of full chunks."""
        given, held = start, {}
        for w, passes, pos, last, chunk, failed in from_workers(loader):
            for where, why in failed:
                if where not in self.lost:
                    self.lost[where] = why
                    log.warning("%s could not be read (%s); skipped", shown(where), why)
            if last:
                if chunk is not None:
                    held[w] = chunk
                continue
            self.trained[w] = (self.trained[w][0] + 1, passes, pos)
            yield self._to_device(chunk, side, seed, keys_file)
            given += 1
            if given == self.steps:
                return
        if not held:
            return
        b = self.batch_size // self.dinfo.world_size
        tail = _join([held[w] for w in sorted(held)])
        n_tail = _size(tail) // b
        for i in range(max(0, start - full), n_tail):
            yield self._to_device(tuple(f[i * b:(i + 1) * b] for f in tail), side, seed, keys_file)
            given += 1
            if given == self.steps:
                return

    def _to_device(self, chunk: tuple, side: int, seed: int, keys_file: TextIO | None) -> tuple:
        if self.d.pipeline == "device":
            files, keys = chunk
            q, k = device_views(decode_on_device(files, self.device, keys), self.d, self.batch_size, self.gen,
                                self.dinfo, side)
        else:
            q, k, keys = chunk
        if keys_file is not None:
            keys_file.write("".join(f"{seed} {key}\n" for key in keys))
        return q.to(self.device, non_blocking=True), k.to(self.device, non_blocking=True), None
