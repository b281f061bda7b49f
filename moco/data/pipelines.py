"""The three ways batches reach the training step, as batch sources chosen once by ``data.pipeline``.

* ``cached``: images decoded once into a uint8 cache; the batch is augmented as a whole.
* ``per_image``: the authors' way, PIL augmentation image by image in DataLoader workers.
* ``device``: workers read the files; the training device decodes and augments the batch.

Every source yields (view 1, view 2, dataset indices) for each step of an epoch. Under torch.distributed
each process gets its slice of every global batch. The batched pipelines draw the augmentation of the
whole global batch on every process and apply their slice, so N processes see exactly the views one
process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import torch

from moco.core.distributed import SINGLE_PROCESS, DistInfo, barrier
from moco.data.augment import apply_params, per_image_transform, sample_params, view_recipes
from moco.data.cache import DecodedImages, decode_images
from moco.data.encoded import EncodedFiles, collate, decode_on_device
from moco.data.folder import DataError, ImageList, load_rgb
from moco.data.sides import cache_side
from moco.schema import DataConfig

log = logging.getLogger("moco")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def decode_side(d: DataConfig) -> int:
    """Side of the decoded (cached) squares: ``data.cache_size``, else the evaluation side rule's."""
    return d.cache_size or cache_side(d.image_size)


class TwoViews(torch.utils.data.Dataset):
    """Per-image pipeline: two independently augmented PIL views of each image."""

    def __init__(self, images: ImageList, d: DataConfig, strict: bool) -> None:
        self.images, self.strict, self.data_cfg = images, strict, d
        self.set_size(d.view_size)

    def set_size(self, size: int) -> None:
        """Make views of side ``size`` from now on (progressive resizing; workers are made per epoch)."""
        d = self.data_cfg
        self.transforms = [per_image_transform(k, size, d.crop_min_scale) for k in view_recipes(d.augmentation)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        for j in range(len(self.images)):  # skip unreadable files (or fail in strict mode)
            path = self.images.root / self.images.paths[(i + j) % len(self.images)]
            try:
                img = load_rgb(path)
                break
            except Exception as e:  # noqa: BLE001
                if self.strict:
                    raise DataError(f"unreadable image: {path} ({type(e).__name__}: {e})") from None
                log.warning("skipping unreadable image %s (%s)", path, e)
        return self.transforms[0](img), self.transforms[1](img)


def _slices(perm: torch.Tensor, start: int, batch_size: int, dinfo: DistInfo) -> list[torch.Tensor]:
    """This process's slice of each global batch of the epoch order ``perm``, from step ``start``."""
    b = batch_size // dinfo.world_size
    lo = dinfo.rank * b
    return [perm[i * batch_size + lo : i * batch_size + lo + b] for i in range(start, len(perm) // batch_size)]


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
    lo, hi = dinfo.rank * (batch_size // dinfo.world_size), (dinfo.rank + 1) * (batch_size // dinfo.world_size)
    side = size or d.view_size
    kinds = view_recipes(d.augmentation)
    for idx in _slices(perm, start, batch_size, dinfo):
        x = data.batch(idx).to(device, non_blocking=True)
        h, w = x.shape[-2:]
        views = [sample_params(batch_size, h, w, k, d.crop_min_scale, gen)[lo:hi] for k in kinds]
        yield apply_params(x, views[0], side, kinds[0]), apply_params(x, views[1], side, kinds[1]), idx


def per_image_batches(
    ds: TwoViews, perm: torch.Tensor, start: int, workers: int, batch_size: int, epoch_seed: int,
    device: torch.device, dinfo: DistInfo = SINGLE_PROCESS,
) -> Iterator[Batch]:
    """Per-image pipeline: this process's slice of each global batch, loaded and augmented in ``workers``
    processes, with the images' dataset indices."""
    batches = [s.tolist() for s in _slices(perm, start, batch_size, dinfo)]
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(epoch_seed + 7919 * dinfo.rank), persistent_workers=False,
    )
    for (im_q, im_k), idx in zip(loader, batches):
        yield im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True), torch.tensor(idx)


def device_batches(
    ds: EncodedFiles, perm: torch.Tensor, start: int, d: DataConfig, batch_size: int, gen: torch.Generator,
    device: torch.device, dinfo: DistInfo = SINGLE_PROCESS, size: int | None = None,
) -> Iterator[Batch]:
    """Decode-on-device pipeline: workers read this process's files, the device decodes and augments
    (views of side ``size``, default ``data.view_size``).

    As in ``cached_batches``, the augmentation draws are made for the whole global batch (they do not
    depend on the image sizes, which only this process knows for its slice).
    """
    lo, hi = dinfo.rank * (batch_size // dinfo.world_size), (dinfo.rank + 1) * (batch_size // dinfo.world_size)
    side = size or d.view_size
    kinds = view_recipes(d.augmentation)
    batches = [s.tolist() for s in _slices(perm, start, batch_size, dinfo)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=d.workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    for items, idx in loader:
        imgs = decode_on_device(items, device, [str(ds.images.paths[i]) for i in idx.tolist()])
        heights, widths = torch.ones(batch_size), torch.ones(batch_size)
        heights[lo:hi] = torch.tensor([float(im.shape[1]) for im in imgs])
        widths[lo:hi] = torch.tensor([float(im.shape[2]) for im in imgs])
        views = [sample_params(batch_size, heights, widths, k, d.crop_min_scale, gen)[lo:hi] for k in kinds]
        q, k = (apply_params(imgs, v, side, kind) for v, kind in zip(views, kinds))
        yield q, k, idx


class BatchSource(Protocol):
    """What the training loop needs of a pipeline: the usable images and each epoch's batches."""

    images: ImageList  # the images training draws from (a cache drops unreadable files)
    decoded: DecodedImages | None  # the decoded cache, when the pipeline keeps one (the kNN monitor reuses it)

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        """The batches of one epoch in the order ``perm``, from step ``start``, with views of ``side`` px;
        ``seed`` is the epoch's seed (worker processes draw from it)."""
        ...


class _Source:
    """Fields the three sources share: data settings, global batch, augmentation draws, device, process."""

    decoded: DecodedImages | None = None

    def __init__(self, images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator,
                 device: torch.device, dinfo: DistInfo, progress: bool) -> None:
        self.images, self.d, self.batch_size = images, d, batch_size
        self.gen, self.device, self.dinfo = gen, device, dinfo


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

    def epoch(self, perm: torch.Tensor, start: int, side: int, seed: int) -> Iterator[Batch]:
        return device_batches(self.files, perm, start, self.d, self.batch_size, self.gen, self.device, self.dinfo,
                              side)


PIPELINES: dict[str, type[_Source]] = {"cached": CachedSource, "per_image": PerImageSource, "device": DeviceSource}
"""``data.pipeline`` -> its batch source."""


def open_source(images: ImageList, d: DataConfig, batch_size: int, gen: torch.Generator, device: torch.device,
                dinfo: DistInfo = SINGLE_PROCESS, progress: bool = False) -> BatchSource:
    """The batch source ``data.pipeline`` names, ready for its first epoch (the cached one has decoded)."""
    return PIPELINES[d.pipeline](images, d, batch_size, gen, device, dinfo, progress)
