"""The three ways batches reach the training step, all yielding (view 1, view 2, dataset indices).

* ``cached_batches``: images decoded once into a uint8 cache; the batch is augmented as a whole.
* ``per_image_batches``: the authors' way, PIL augmentation image by image in DataLoader workers.
* ``device_batches``: workers read the files; the training device decodes and augments the batch.

Under torch.distributed each process gets its slice of every global batch. The batched pipelines
draw the augmentation of the whole global batch on every process and apply their slice, so N
processes see exactly the views one process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from moco.config import Config
from moco.data.augment import apply_params, per_image_transform, sample_params, view_recipes
from moco.data.cache import DecodedImages
from moco.data.encoded import EncodedFiles, collate, decode_on_device
from moco.data.folder import DataError, ImageList, load_rgb
from moco.training.distributed import SINGLE_PROCESS, DistInfo

log = logging.getLogger("moco")


class TwoViews(torch.utils.data.Dataset):
    """Per-image pipeline: two independently augmented PIL views of each image."""

    def __init__(self, images: ImageList, cfg: Config, strict: bool) -> None:
        self.images, self.strict, self.data_cfg = images, strict, cfg.data
        self.set_size(cfg.data.view_size)

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


def cached_batches(
    data: DecodedImages, perm: torch.Tensor, start: int, cfg: Config, gen: torch.Generator, device: torch.device,
    dinfo: DistInfo = SINGLE_PROCESS, size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two augmented views (of side ``size``, default ``data.view_size``) of each of this process's batches,
    from step ``start`` of the epoch order ``perm``, with the images' dataset indices (the memory bank
    needs them).

    The augmentation parameters are drawn for the whole global batch on every process (cheap, and the
    same stream everywhere), and each process applies its slice: so N processes see exactly the images
    and views that one process with the same global batch would.
    """
    gb = cfg.optim.batch_size
    b = gb // dinfo.world_size
    lo, hi = dinfo.rank * b, (dinfo.rank + 1) * b
    d = cfg.data
    side = size or d.view_size
    kinds = view_recipes(d.augmentation)
    for i in range(start, len(perm) // gb):
        idx = perm[i * gb + lo : i * gb + hi]
        x = data.batch(idx).to(device, non_blocking=True)
        h, w = x.shape[-2:]
        views = [sample_params(gb, h, w, k, d.crop_min_scale, gen)[lo:hi] for k in kinds]
        yield apply_params(x, views[0], side, kinds[0]), apply_params(x, views[1], side, kinds[1]), idx


def per_image_batches(
    ds: TwoViews, perm: torch.Tensor, start: int, cfg: Config, epoch_seed: int, device: torch.device,
    dinfo: DistInfo = SINGLE_PROCESS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-image pipeline: this process's slice of each global batch, loaded and augmented in workers,
    with the images' dataset indices."""
    gb = cfg.optim.batch_size
    b = gb // dinfo.world_size
    lo = dinfo.rank * b
    batches = [perm[i * gb + lo : i * gb + lo + b].tolist() for i in range(start, len(perm) // gb)]
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(epoch_seed + 7919 * dinfo.rank), persistent_workers=False,
    )
    for (im_q, im_k), idx in zip(loader, batches):
        yield im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True), torch.tensor(idx)


def device_batches(
    ds: EncodedFiles, perm: torch.Tensor, start: int, cfg: Config, gen: torch.Generator, device: torch.device,
    dinfo: DistInfo = SINGLE_PROCESS, size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode-on-device pipeline: workers read this process's files, the device decodes and augments
    (views of side ``size``, default ``data.view_size``).

    As in ``cached_batches``, the augmentation draws are made for the whole global batch (they do not
    depend on the image sizes, which only this process knows for its slice).
    """
    gb = cfg.optim.batch_size
    b = gb // dinfo.world_size
    lo, hi = dinfo.rank * b, (dinfo.rank + 1) * b
    d = cfg.data
    side = size or d.view_size
    kinds = view_recipes(d.augmentation)
    batches = [perm[i * gb + lo : i * gb + hi].tolist() for i in range(start, len(perm) // gb)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=d.workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    for items, idx in loader:
        imgs = decode_on_device(items, device, [str(ds.images.paths[i]) for i in idx.tolist()])
        heights, widths = torch.ones(gb), torch.ones(gb)
        heights[lo:hi] = torch.tensor([float(im.shape[1]) for im in imgs])
        widths[lo:hi] = torch.tensor([float(im.shape[2]) for im in imgs])
        views = [sample_params(gb, heights, widths, k, d.crop_min_scale, gen)[lo:hi] for k in kinds]
        q, k = (apply_params(imgs, v, side, kind) for v, kind in zip(views, kinds))
        yield q, k, idx
