"""Write the small detection set that `moco detect` is measured on: CIFAR-10 test images pasted at random
sides (24-48 px) and places onto 128 x 96 canvases, 1-3 objects each, as COCO annotation files, with a class map
per canvas (train_maps/, val_maps/: `moco segment`'s label maps) and, with --keypoints, each object's corners and
centre.

    python benchmarks/make_detection_set.py [--source ../shared/datasets/cifar10/test] [--out benchmarks/runs/pasted]
        [--train 2000] [--val 400] [--seed 0] [--segmentations] [--keypoints]

Seeded: the same command writes the same set. Prints the brace of files to pass to `moco detect`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moco.data.pasted import PastedSpec, make_pasted_set

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10" / "test"),
                    help="a labelled ImageFolder whose images are pasted")
    ap.add_argument("--out", default=str(ROOT / "runs" / "pasted"))
    ap.add_argument("--train", type=int, default=2000, help="training canvases")
    ap.add_argument("--val", type=int, default=400, help="validation canvases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segmentations", action="store_true", help="add polygons, for Mask R-CNN")
    ap.add_argument("--keypoints", action="store_true", help="add each object's corners and centre, for Keypoint "
                                                             "R-CNN")
    a = ap.parse_args()
    out = Path(a.out)
    summary = make_pasted_set(a.source, out, PastedSpec(a.train, a.val, seed=a.seed, segmentations=a.segmentations,
                                                       keypoints=a.keypoints))
    print(json.dumps(summary))
    print(f"--train-ann {out}/train.json --train-images {out}/train --val-ann {out}/val.json --val-images {out}/val")


if __name__ == "__main__":
    main()
