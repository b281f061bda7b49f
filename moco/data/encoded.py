"""Decode-on-device pipeline, for data too large to cache: workers only read files (or shard members); the
training device decodes the JPEGs of a whole batch at once (``torchvision.io.decode_jpeg``, nvJPEG on CUDA)
and the batched augmentation crops and colours them there.

Files that are not JPEG (PNG, WebP, ...) or not RGB are decoded by the worker with PIL instead, so any
folder works. A file that cannot be read is skipped for the rest of the run with a warning (the next
image takes its place), or stops the run with ``data.strict``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from moco.core.errors import shown
from moco.data.folder import ImageList, first_readable, load_rgb

log = logging.getLogger("moco")

JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedFiles(torch.utils.data.Dataset):
    """Item ``i``: (encoded JPEG bytes as a 1-D uint8 tensor, or a decoded (3, H, W) uint8 image, the index
    read, [(index, why) of files that failed on the way]). A file that cannot be read is replaced by the next
    readable one; the indices in ``lost`` (kept by the main process) are passed over without a try."""

    def __init__(self, images: ImageList, strict: bool = False) -> None:
        self.images, self.strict = images, strict
        self.lost: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def read(path: Path) -> torch.Tensor:
        return as_encoded(path.read_bytes(), path)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, list[tuple[int, str]]]:
        return first_readable(self.images, i, self.read, self.lost, self.strict)


def as_encoded(data: bytes, path: Path | None = None) -> torch.Tensor:
    """An image file's bytes for :func:`decode_on_device`: an RGB JPEG's own bytes as a 1-D uint8 tensor (the
    device decodes it), any other image decoded here with PIL (from ``path`` when they came from a file, so
    that PIL's errors name it) to a (3, H, W) uint8 tensor; raises on bytes that are no image."""
    if data[:3] == JPEG_MAGIC and _is_rgb_jpeg(data):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    img = load_rgb(path if path is not None else io.BytesIO(data))  # PIL: every other format and mode, as RGB
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def _is_rgb_jpeg(data: bytes) -> bool:
    """True for a 3-component baseline/progressive JPEG (grayscale and CMYK go through PIL instead)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: ..., number of components at offset 9
            return data[i + 9] == 3
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def collate(
    items: list[tuple[torch.Tensor, int, list[tuple[int, str]]]],
) -> tuple[list[torch.Tensor], torch.Tensor, list[tuple[int, str]]]:
    """(images, indices read, files that failed) of a batch of :class:`EncodedFiles` items."""
    return [t for t, _, _ in items], torch.tensor([i for _, i, _ in items]), [f for _, _, lost in items for f in lost]


def decode_on_device(
    items: list[torch.Tensor], device: torch.device, names: list[str] | None = None
) -> list[torch.Tensor]:
    """(3, H, W) uint8 images on ``device``: the JPEG byte tensors decoded there in one batched call,
    worker-decoded images moved there. A JPEG that cannot be decoded (named by ``names``) is replaced
    by a gray image, with a warning."""
    jpeg = [i for i, t in enumerate(items) if t.dim() == 1]
    out: list[torch.Tensor | None] = [None if t.dim() == 1 else t.to(device, non_blocking=True) for t in items]
    if jpeg:
        try:
            decoded = decode_jpeg([items[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            decoded = []
            for i in jpeg:
                try:
                    decoded.append(decode_jpeg(items[i], mode=ImageReadMode.RGB, device=device))
                except RuntimeError as e:
                    name = names[i] if names else f"item {i} of the batch"
                    log.warning("could not decode %s (%s); a gray image takes its place", shown(name), e)
                    decoded.append(torch.full((3, 8, 8), 128, dtype=torch.uint8, device=device))
        for i, img in zip(jpeg, decoded):
            out[i] = img
    return [t for t in out if t is not None]
