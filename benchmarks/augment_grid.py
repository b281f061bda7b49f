"""Save a picture of batched augmentations beside the per-image torchvision pipeline, for a visual check.

    python benchmarks/augment_grid.py [--data ../shared/datasets/cifar10] [--kind cifar] [--out FILE.png]

Row pairs: the original image, 8 batched views (moco.data.augment.batch_augment),
8 per-image views (per_image_transform, the authors' pipeline).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from moco.data.augment import MEAN, STD, batch_augment, per_image_transform
from moco.data.cache import decode_images
from moco.data.folder import find_split, load_rgb, scan_images

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--kind", default="cifar", choices=["v1", "v2", "cifar"])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "results" / "augment_grid.png"))
    a = ap.parse_args()
    train_dir, _ = find_split(Path(a.data))
    imgs = scan_images(train_dir, max_images=a.images, seed=3)
    dec = decode_images(imgs, a.size, progress=False)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    tf = per_image_transform(a.kind, a.size)
    tiles = []
    for i in range(len(dec.array)):
        x = torch.from_numpy(dec.array[i : i + 1].copy()).permute(0, 3, 1, 2)
        ours = batch_augment(x.expand(8, -1, -1, -1).contiguous(), a.size, a.kind, generator=g)
        pil = load_rgb(dec.images.root / dec.images.paths[i])
        ref = torch.stack([tf(pil) for _ in range(8)])
        orig = x.float() / 255
        tiles += [orig[0]] + list(ours * std + mean)
        tiles += [orig[0]] + list(ref * std + mean)
    save_image(torch.stack(tiles).clamp(0, 1), a.out, nrow=9, padding=2, pad_value=1.0)
    print(f"wrote {a.out}: rows alternate batched (ours) / per-image (torchvision); first column is the original")


if __name__ == "__main__":
    main()
