"""`moco detect` on camera-sized photos: the size it chooses, its first epoch's peak memory and time.

    python benchmarks/detect_photos.py --checkpoint CK [--photos benchmarks/runs/clothing/train] [--side 4000]
        [--train 20] [--val 4] [--epochs 1]

Makes a set of ``--side`` x 3/4 ``--side`` JPEGs (photos of the clothing set enlarged to camera size, with a
little noise so that they do not compress like flat colour) with 1 to 3 CIFAR-10 test images pasted on each at
400 to 900 px as the boxes to find, as COCO annotation files; then runs `moco detect` on it for ``--epochs``
(a subprocess) and records the size line it printed, its peak resident memory and its wall time. Writes
benchmarks/results/detect_photos.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import DATA, ROOT, write_results
from PIL import Image


def make_set(photos: Path, out: Path, side: int, n_train: int, n_val: int, seed: int) -> None:
    rng = random.Random(seed)
    backgrounds = sorted(photos.rglob("*.jpg"))
    objects = sorted((DATA / "test").rglob("*.jpg"))
    classes = sorted({p.parent.name for p in objects})
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    w, h = side, side * 3 // 4
    for split, n in (("train", n_train), ("val", n_val)):
        (out / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            bg = Image.open(rng.choice(backgrounds)).convert("RGB").resize((w, h), Image.BICUBIC)
            arr = np.asarray(bg, dtype=np.int16) + np.random.default_rng(seed * 1000 + i).integers(-12, 12, (h, w, 3))
            canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            for _ in range(rng.randint(1, 3)):
                obj = rng.choice(objects)
                s = rng.randint(400, 900)
                x, y = rng.randint(0, w - s), rng.randint(0, h - s)
                canvas.paste(Image.open(obj).convert("RGB").resize((s, s), Image.BICUBIC), (x, y))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": classes.index(obj.parent.name) + 1,
                             "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
            name = f"{i:04d}.jpg"
            canvas.save(out / split / name, quality=90)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        (out / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--photos", default=str(ROOT / "runs" / "clothing" / "train"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "detect-photos"))
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--train", type=int, default=20)
    ap.add_argument("--val", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=0, help="images a step (default: what moco detect chooses)")
    ap.add_argument("--name", default="detect_photos", help="results/NAME.json")
    a = ap.parse_args()
    out = Path(a.out)
    if not (out / "val.json").is_file():
        make_set(Path(a.photos), out, a.side, a.train, a.val, a.seed)
    cmd = [sys.executable, "-m", "moco", "detect", "--checkpoint", a.checkpoint, "--train-ann", str(out / "train.json"),
           "--train-images", str(out / "train"), "--val-ann", str(out / "val.json"), "--val-images", str(out / "val"),
           "--epochs", str(a.epochs), "--out", str(out / "run"), "--overwrite", "--no-progress",
           *(["--batch-size", str(a.batch_size)] if a.batch_size else [])]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    said = [ln for ln in p.stderr.splitlines() if re.search(r"px|GB", ln)]
    import yaml

    cfg_file = out / "run" / "config.yaml"
    d = yaml.safe_load(cfg_file.read_text())["detect"] if cfg_file.is_file() else {}
    res = {"returncode": p.returncode, "wall_s": round(wall, 1), "peak_rss_gb": round(peak_gb, 2),
           "min_size": d.get("min_size"), "max_size": d.get("max_size"),
           "size_lines": said[:6], "photos": f"{a.train} + {a.val} of {a.side} x {a.side * 3 // 4} px",
           "summary": json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else
           p.stderr[-1500:]}
    print(json.dumps(res, indent=2))
    write_results(a.name, res)


if __name__ == "__main__":
    main()
