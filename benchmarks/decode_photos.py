"""Decoding camera-sized JPEGs: full decode then resize, against the reduced decode the pretraining cache uses
(PIL's draft mode: the JPEG decoder's DCT scaling, 1/2, 1/4 or 1/8 of the side, then the resize).

    python benchmarks/decode_photos.py [--photos benchmarks/runs/clothing/train] [--side 4000] [--n 12]
        [--size 160]

Writes ``--n`` JPEGs of ``--side`` x 3/4 ``--side`` px (clothing photos enlarged, with noise), then times both
paths to a ``--size``-px square, one image at a time in this process, best of 3 passes. Writes
benchmarks/results/decode_photos.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_results
from PIL import Image

from moco.data.cache import decode_square
from moco.data.folder import load_rgb


def full(path: Path, size: int) -> np.ndarray:
    """The whole JPEG decoded, then resized (shorter side to ``size``) and centre-cropped, as a PIL pipeline
    without draft mode does."""
    img = load_rgb(path)
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC, reducing_gap=3.0)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def timed(fn, paths: list[Path], size: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for p in paths:
            fn(p, size)
        best = min(best, (time.perf_counter() - t) / len(paths))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(ROOT / "runs" / "clothing" / "train"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "large-jpegs"))
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--size", type=int, default=160)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = a.side, a.side * 3 // 4
    paths = []
    for i, src in enumerate(sorted(Path(a.photos).rglob("*.jpg"))[: a.n]):
        p = out / f"{i:03d}.jpg"
        if not p.is_file():
            arr = np.asarray(Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.int16)
            arr = arr + np.random.default_rng(i).integers(-12, 12, (h, w, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    t_full = timed(full, paths, a.size)
    t_draft = timed(decode_square, paths, a.size)
    res = {"photos": f"{len(paths)} JPEGs of {w} x {h} px (quality 90)", "to": f"{a.size} px squares",
           "full_ms": round(t_full * 1000, 1), "reduced_ms": round(t_draft * 1000, 1),
           "speedup": round(t_full / t_draft, 2)}
    print(f"{res['photos']} -> {res['to']}: full decode {res['full_ms']} ms an image, reduced decode "
          f"{res['reduced_ms']} ms ({res['speedup']}x)")
    write_results("decode_photos", res)


if __name__ == "__main__":
    main()
