"""The three ways batches reach the training step, as batch sources chosen once by ``data.pipeline``.

* ``cached``: images decoded once into a uint8 cache; the batch is augmented as a whole.
* ``per_image``: the authors' way, PIL augmentation image by image in DataLoader workers.
* ``device``: workers read the files; the training device decodes and augments the batch.

Every source yields (view 1, view 2, dataset indices) for each step of an epoch. :class:`LabelledSource`,
the fine-tuning one, is the cached pipeline with one view and the labels: (images, labels, indices).
Under torch.distributed each process gets its slice of every global batch. The batched pipelines draw the
augmentation of the whole global batch on every process and apply their slice, so N processes see exactly
the views one process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

import torch

from moco.core.distributed import SINGLE_PROCESS, DistInfo, barrier, rank_slice
from moco.core.errors import DataError, shown
from moco.data.augment import (
    apply_params,
    crop_flip,
    crop_flip_params,
    per_image_transform,
    sample_params,
    view_recipes,
)
from moco.data.cache import DecodedImages, decode_images
from moco.data.encoded import EncodedFiles, collate, decode_on_device
from moco.data.folder import ImageList, first_readable, load_rgb
from moco.data.sides import cache_side
from moco.schema import DataConfig

log = logging.getLogger("moco")
T = TypeVar("T")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def decode_side(d: DataConfig) -> int:
    """Side of the decoded (cached) squares: ``data.cache_size``, else the evaluation side rule's."""
    return d.cache_size or cache_side(d.image_size)


class TwoViews(torch.utils.data.Dataset):
    """Per-image pipeline: item ``i`` is (view 1, view 2, the index read, [(index, why) of files that failed
    on the way]): two independently augmented PIL views of image ``i``, or, if it cannot be read, of the next
    readable one. The indices in ``lost`` (kept by the main process) are passed over without a try."""

    def __init__(self, images: ImageList, d: DataConfig, strict: bool) -> None:
        self.images, self.strict, self.data_cfg = images, strict, d
        self.lost: dict[int, str] = {}
        self.set_size(d.view_size)

    def set_size(self, size: int) -> None:
        """Make views of side ``size`` from now on (progressive resizing; workers are made per epoch)."""
        d = self.data_cfg
        self.transforms = [per_image_transform(k, size, d.crop_min_scale, d.normalize)
                           for k in view_recipes(d.augmentation)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, list[tuple[int, str]]]:
        img, k, failed = first_readable(self.images, i, load_rgb, self.lost, self.strict)
        return self.transforms[0](img), self.transforms[1](img), k, failed


def collate_views(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(views 1, views 2, indices read, files that failed) of a batch of :class:`TwoViews` items."""
    return (torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items]),
            torch.tensor([it[2] for it in items]), [f for it in items for f in it[3]])


def from_workers(loader: Iterable[T]) -> Iterator[T]:
    """The batches of ``loader``; a :class:`DataError` that a worker raised (``--strict-data``) comes out with
    its own one-line message: torch raises it again in this process with the worker's traceback as the
    message."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except DataError as e:
            raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
        yield batch


def note_lost(lost: dict[int, str], failed: list[tuple[int, str]], images: ImageList) -> None:
    """Add the files that failed in a batch to ``lost`` (skipped from now on), with a warning for each new one."""
    for k, why in failed:
        if k not in lost:
            lost[k] = why
            log.warning("%s could not be read (%s); skipping it for the rest of the run",
                        shown(images.root / images.paths[k]), why)


def _slices(perm: torch.Tensor, start: int, batch_size: int, dinfo: DistInfo) -> list[torch.Tensor]:
    """This process's slice of each global batch of the epoch order ``perm``, from step ``start``."""
    part = rank_slice(batch_size, dinfo)
    return [perm[i * batch_size : (i + 1) * batch_size][part] for i in range(start, len(perm) // batch_size)]


def cached_batches(
    data: DecodedImages, perm: torch.Tensor, start: int, d: DataConfig, batch_size: int, gen: torch.Generator,
    device: torch.device, dinfo: DistInfo = SINGLE_PROCESS, size: int | None = None,
) -> Iterator[Batch]:
    """Two augmented views (of side ``size``, default ``data.view_size``) of each of this process's batches,
    from step ``start`` of the epoch order ``perm``, with the images' dataset indices (the memory bank
    needs them).

    The augmentation parameters are drawn for the whole global batch on every process (cheap, and the
    same stream everywhere), and each process applies its slice: so N processes see exactly the images
    and views that one process with the same global batch would.
    """
    part = rank_slice(batch_size, dinfo)
    side = size or d.view_size
    kinds = view_recipes(d.augmentation)
    for idx in _slices(perm, start, batch_size, dinfo):
        x = data.batch(idx).to(device, non_blocking=True)
        h, w = x.shape[-2:]
        views = [sample_params(batch_size, h, w, k, d.crop_min_scale, gen)[part] for k in kinds]
        yield (apply_params(x, views[0], side, kinds[0], d.normalize),
               apply_params(x, views[1], side, kinds[1], d.normalize), idx)


def per_image_batches(
    ds: TwoViews, perm: torch.Tensor, start: int, workers: int, batch_size: int, epoch_seed: int,
    device: torch.device, dinfo: DistInfo = SINGLE_PROCESS,
) -> Iterator[Batch]:
    """Per-image pipeline: this process's slice of each global batch, loaded and augmented in ``workers``
    processes, with the dataset indices of the images read. Files that fail are added to ``ds.lost``."""
    batches = [s.tolist() for s in _slices(perm, start, batch_size, dinfo)]
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda", collate_fn=collate_views,
        generator=torch.Generator().manual_seed(epoch_seed + 7919 * dinfo.rank), persistent_workers=False,
    )
    for im_q, im_k, idx, failed in from_workers(loader):
        note_lost(ds.lost, failed, ds.images)
        yield im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True), idx


def device_batches(
    ds: EncodedFiles, perm: torch.Tensor, start: int, d: DataConfig, batch_size: int, gen: torch.Generator,
    device: torch.device, dinfo: DistInfo = SINGLE_PROCESS, size: int | None = None,
) -> Iterator[Batch]:
    """Decode-on-device pipeline: workers read this process's files, the device decodes and augments
    (views of side ``size``, default ``data.view_size``). Files that fail are added to ``ds.lost``.

    As in ``cached_batches``, the augmentation draws are made for the whole global batch (they do not
    depend on the image sizes, which only this process knows for its slice).
    """
    batches = [s.tolist() for s in _slices(perm, start, batch_size, dinfo)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=d.workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    for items, idx, failed in from_workers(loader):
        note_lost(ds.lost, failed, ds.images)
        imgs = decode_on_device(items, device, [str(ds.images.paths[i]) for i in idx.tolist()])
        yield (*device_views(imgs, d, batch_size, gen, dinfo, size or d.view_size), idx)


def device_views(imgs: list[torch.Tensor], d: DataConfig, batch_size: int, gen: torch.Generator, dinfo: DistInfo,
                 side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of side ``side`` of this process's decoded images (its slice of a global batch of
    ``batch_size``), made on their device; the draws are made for the whole global batch on every process."""
    part = rank_slice(batch_size, dinfo)
    kinds = view_recipes(d.augmentation)
    heights, widths = torch.ones(batch_size), torch.ones(batch_size)
    heights[part] = torch.tensor([float(im.shape[1]) for im in imgs])
    widths[part] = torch.tensor([float(im.shape[2]) for im in imgs])
    views = [sample_params(batch_size, heights, widths, k, d.crop_min_scale, gen)[part] for k in kinds]
    q, k = (apply_params(imgs, v, side, kind, d.normalize) for v, kind in zip(views, kinds))
    return q, k


class BatchSource(Protocol):
    """What the trainer needs of a pipeline: how much an epoch holds, and each epoch's batches."""

    samples: int  # the samples an epoch draws from (a stream: those its steps train on)
    streams: bool  # the source orders its samples itself (a stream): the trainer draws no permutation
    decoded: DecodedImages | None  # the decoded cache, when the pipeline keeps one (the kNN monitor reuses it)
    lost: dict  # files or samples found unreadable while training (-> why), skipped from then on

    def steps_per_epoch(self, passes: int = 1) -> int:
        """Global steps in an epoch of ``passes`` passes over the samples (whole batches)."""
        ...

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        """The batches of one epoch in the order ``perm``, from step ``start``, with views of ``side`` px;
        ``seed`` is the epoch's seed (worker processes draw from it)."""
        ...


class _Source:
    """What the sources of a listed set share: its images, data settings, global batch, augmentation draws,
    device, process; an epoch is a permutation of the images, ``passes`` times over."""

    decoded: DecodedImages | None = None
    streams = False

    def __init__(self, images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo, progress: bool) -> None:
        self.images, self.d, self.batch_size = images, d, batch_size
        self.gen, self.device, self.dinfo = gen, device, dinfo
        self.lost: dict[int, str] = {}  # the cache holds every image it kept: nothing is read after it

    @property
    def samples(self) -> int:
        return len(self.images)

    def steps_per_epoch(self, passes: int = 1) -> int:
        return self.samples * passes // self.batch_size


class CachedSource(_Source):
    """``data.pipeline=cached``: decode every image once (rank 0 first, the others then read its cache)."""

    def __init__(self, images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo, progress: bool) -> None:
        decoded = None
        for turn in (True, False):
            if dinfo.is_main == turn:
                decoded = decode_images(images, decode_side(d), d.cache_dir or None, d.workers, d.strict, progress)
            barrier()
        assert decoded is not None
        super().__init__(decoded.images, d, batch_size, gen, device, dinfo, progress)
        self.decoded = decoded

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        assert self.decoded is not None
        return cached_batches(self.decoded, perm, start, self.d, self.batch_size, self.gen, self.device, self.dinfo,
                              side)


class PerImageSource(_Source):
    """``data.pipeline=per_image``: PIL views made in DataLoader workers, image by image."""

    def __init__(self, images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo, progress: bool) -> None:
        super().__init__(images, d, batch_size, gen, device, dinfo, progress)
        self.views = TwoViews(images, d, d.strict)
        self.lost = self.views.lost

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        self.views.set_size(side)
        return per_image_batches(self.views, perm, start, self.d.workers, self.batch_size, seed, self.device,
                                 self.dinfo)


class DeviceSource(_Source):
    """``data.pipeline=device``: workers read the files, the training device decodes and augments."""

    def __init__(self, images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo, progress: bool) -> None:
        super().__init__(images, d, batch_size, gen, device, dinfo, progress)
        self.files = EncodedFiles(images, d.strict)
        self.lost = self.files.lost

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        return device_batches(self.files, perm, start, self.d, self.batch_size, self.gen, self.device, self.dinfo,
                              side)


class LabelledSource(_Source):
    """Fine-tuning's batches from decoded labelled images: one :func:`~moco.data.augment.crop_flip` view of
    each image and its label. As in the cached pipeline, every process draws the augmentation of the whole
    global batch and applies its slice."""

    def __init__(self, decoded: DecodedImages, d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo = SINGLE_PROCESS) -> None:
        if decoded.images.labels is None:
            raise ValueError("a labelled source needs an ImageFolder (class sub-folders)")
        super().__init__(decoded.images, d, batch_size, gen, device, dinfo, False)
        self.decoded = decoded
        self.labels = torch.tensor(decoded.images.labels)

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        assert self.decoded is not None
        b, dinfo = self.batch_size, self.dinfo
        part = rank_slice(b, dinfo)
        for idx in _slices(perm, start, b, dinfo):
            x = self.decoded.batch(idx).to(self.device, non_blocking=True)
            boxes, flip, pad = crop_flip_params(b, x.shape[-2], x.shape[-1], side, self.gen)
            yield (crop_flip(x, side, norm=self.d.normalize, params=(boxes[part], flip[part], pad)),
                   self.labels[idx].to(self.device, non_blocking=True), idx)


PIPELINES: dict[str, type[_Source]] = {"cached": CachedSource, "per_image": PerImageSource, "device": DeviceSource}
"""``data.pipeline`` -> its batch source."""


def open_source(images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator, device: torch.device,
                dinfo: DistInfo = SINGLE_PROCESS, progress: bool = False) -> BatchSource:
    """The batch source ``data.pipeline`` names, ready for its first epoch (the cached one has decoded)."""
    return PIPELINES[d.pipeline](images, d, batch_size, gen, device, dinfo, progress)
