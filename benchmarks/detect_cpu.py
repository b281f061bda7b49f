"""Detection transfer on a CPU: Faster R-CNN (`moco detect`) on the pasted CIFAR-10 set, from a MoCo backbone and
from random init, at an equal time budget, 2 seeds each; COCO AP and AP50 by pycocotools, and training images/s.

    python benchmarks/detect_cpu.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt [--budget 8m]
        [--seeds 0 1] [--inits checkpoint random] [--set KEY=VALUE ...]

The set is made first when missing (benchmarks/make_detection_set.py's defaults: 2,000 training and 400
validation canvases of 128 x 96 px, 1-3 CIFAR-10 test images of 24-48 px each). Every run is `moco detect` as a
subprocess into benchmarks/runs/detect/NAME, skipped when its results.json exists and resumed when interrupted.
Prints a table; writes benchmarks/results/detect_cpu.json with the CPU's flags.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT, run_once, write_results


def detect_run(out: Path, ckpt: str, data: Path, init: str, seed: int, budget: str, extra: list[str]) -> dict:
    """One `moco detect` run (skipped when its results.json exists), with its wall time from outside."""
    return run_once(out, ["detect", "--checkpoint", ckpt, "--train-ann", str(data / "train.json"), "--train-images",
                          str(data / "train"), "--val-ann", str(data / "val.json"), "--val-images", str(data / "val"),
                          "--init", init, "--seed", str(seed), "--time-budget", budget,
                          *[x for s in extra for x in ("--set", s)]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(ROOT / "runs" / "pasted"), help="the pasted set (made when missing)")
    ap.add_argument("--budget", default="8m", help="each run's --time-budget")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--inits", nargs="+", default=["checkpoint", "random"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every run")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "detect"))
    ap.add_argument("--json", default=str(ROOT / "results" / "detect_cpu.json"))
    a = ap.parse_args()
    data = Path(a.data)
    if not (data / "val.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "make_detection_set.py"), "--out", str(data)], check=True)
    extra = list(a.set)  # moco detect's own recipe, and these
    out = {"checkpoint": a.checkpoint, "budget": a.budget, "settings": extra, "runs": {}}
    for init in a.inits:
        for seed in a.seeds:
            name = f"{init}-s{seed}"
            r = detect_run(Path(a.runs) / name, a.checkpoint, data, init, seed, a.budget, extra)
            out["runs"][name] = {k: r.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "init", "epochs",
                                                       "steps", "images_per_sec", "train_seconds", "wall_outside_s",
                                                       "precision")} | {"seed": seed} | {
                k: v for k, v in r.items() if k.startswith(("kp_", "mask_"))}
            kp = f", keypoint AP {r['kp_AP']:.2f}" if r.get("kp_AP") is not None else ""
            print(f"{name}: AP {r['AP']:.2f}, AP50 {r['AP50']:.2f}{kp} ({r['steps']} steps, {r['images_per_sec']} "
                  f"img/s, {r['wall_outside_s']} s)", flush=True)
    keys = ("AP", "AP50", "kp_AP", "kp_AP50") if all(r.get("kp_AP") is not None for r in out["runs"].values()) else (
        "AP", "AP50")
    print("\n| init | " + " | ".join(f"{k} (by seed)" for k in keys) + " | images/s |")
    print("|---|" + "---|" * (len(keys) + 1))
    for init in a.inits:
        rs = [out["runs"][f"{init}-s{s}"] for s in a.seeds]
        cell = {k: " / ".join(f"{r[k]:.2f}" for r in rs) + f" (mean {statistics.mean(r[k] for r in rs):.2f})"
                for k in keys}
        print(f"| {init} | " + " | ".join(cell[k] for k in keys)
              + f" | {statistics.mean(r['images_per_sec'] for r in rs):.2f} |")
    write_results("detect_cpu", out, a.json)


if __name__ == "__main__":
    main()
