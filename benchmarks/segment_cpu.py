"""Segmentation transfer on a CPU: DeepLabV3 (`moco segment`) on the pasted CIFAR-10 set's class maps, from a MoCo
backbone, a supervised one and random init, at an equal time budget, 2 seeds each; mIoU and pixel accuracy.

    python benchmarks/segment_cpu.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt \\
        [--supervised runs/sup/checkpoint_last.pt] [--budget 4m] [--seeds 0 1] [--set KEY=VALUE ...]

The set is made first when missing (benchmarks/make_detection_set.py: 2,000 training and 400 validation canvases
of 128 x 96 px, 1-3 CIFAR-10 test images of 24-48 px each, 10 classes and the background). Every run is
`moco segment` as a subprocess into benchmarks/runs/segment/NAME, skipped when its results.json exists and resumed
when interrupted. Prints a table; writes benchmarks/results/segment_cpu.json with the CPU's flags.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT, run_once, write_results


def segment_run(out: Path, ckpt: str, data: Path, init: str, seed: int, budget: str, extra: list[str]) -> dict:
    """One `moco segment` run (skipped when its results.json exists), with its wall time from outside."""
    return run_once(out, ["segment", "--checkpoint", ckpt, "--train-images", str(data / "train"), "--train-masks",
                          str(data / "train_maps"), "--val-images", str(data / "val"), "--val-masks",
                          str(data / "val_maps"), "--classes", str(data / "classes.txt"), "--init", init, "--seed",
                          str(seed), "--time-budget", budget, *[x for s in extra for x in ("--set", s)]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="the MoCo checkpoint (random init takes its architecture)")
    ap.add_argument("--supervised", help="a network of the same architecture trained with labels (a moco finetune "
                                         "run's checkpoint)")
    ap.add_argument("--data", default=str(ROOT / "runs" / "pasted"), help="the pasted set (made when missing)")
    ap.add_argument("--budget", default="4m", help="each run's --time-budget")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every run")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "segment"))
    ap.add_argument("--json", default=str(ROOT / "results" / "segment_cpu.json"))
    a = ap.parse_args()
    data = Path(a.data)
    if not (data / "classes.txt").is_file():
        subprocess.run([sys.executable, str(ROOT / "make_detection_set.py"), "--out", str(data)], check=True)
    inits = {"moco": "checkpoint", **({"supervised": f"supervised:{a.supervised}"} if a.supervised else {}),
             "random": "random"}
    out = {"checkpoint": a.checkpoint, "supervised": a.supervised, "budget": a.budget, "settings": a.set, "runs": {}}
    for name, init in inits.items():
        for seed in a.seeds:
            r = segment_run(Path(a.runs) / f"{name}-s{seed}", a.checkpoint, data, init, seed, a.budget, a.set)
            out["runs"][f"{name}-s{seed}"] = {k: r.get(k) for k in (
                "mIoU", "pixel_acc", "iou", "init", "epochs", "steps", "images_per_sec", "train_seconds",
                "wall_outside_s", "precision")} | {"seed": seed}
            print(f"{name}-s{seed}: mIoU {r['mIoU']:.2f}, pixel acc {r['pixel_acc']:.2f} ({r['steps']} steps, "
                  f"{r['images_per_sec']} img/s, {r['wall_outside_s']} s)", flush=True)
    print("\n| init | mIoU (by seed) | pixel accuracy (by seed) | images/s |")
    print("|---|---|---|---|")
    for name in inits:
        rs = [out["runs"][f"{name}-s{s}"] for s in a.seeds]
        cell = {k: " / ".join(f"{r[k]:.2f}" for r in rs) + f" (mean {statistics.mean(r[k] for r in rs):.2f})"
                for k in ("mIoU", "pixel_acc")}
        print(f"| {name} | {cell['mIoU']} | {cell['pixel_acc']} | "
              f"{statistics.mean(r['images_per_sec'] for r in rs):.2f} |")
    write_results("segment_cpu", out, a.json)


if __name__ == "__main__":
    main()
