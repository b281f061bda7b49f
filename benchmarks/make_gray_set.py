"""A labelled set of other images for `moco evaluate`: a folder's images in grayscale at another size, split
into train/ and test/ per class.

    python benchmarks/make_gray_set.py --src ../shared/datasets/cifar10/test --out benchmarks/runs/gray40 \
        [--size 40] [--test-share 0.2] [--seed 0]

From CIFAR-10's test split (images the main job never trains on) it makes 8,000 training and 2,000 test
images of 40 x 40 px in grayscale: a set that pretraining did not see, in colours and at a size it did not see.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="an ImageFolder (one sub-folder per class)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--test-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, out = Path(a.src), Path(a.out)
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"{src} has no class sub-folders")
    counts = {"train": 0, "test": 0}
    for c in classes:
        files = sorted(p for p in (src / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        random.Random(f"{a.seed}/{c}").shuffle(files)
        n_test = round(len(files) * a.test_share)
        for i, f in enumerate(files):
            split = "test" if i < n_test else "train"
            dest = out / split / c / f"{f.stem}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(f) as img:
                img.convert("L").resize((a.size, a.size), Image.BICUBIC).save(dest)
            counts[split] += 1
    print(f"{out}: {counts['train']} training and {counts['test']} test images of {len(classes)} classes, "
          f"{a.size} px, grayscale")


if __name__ == "__main__":
    main()
