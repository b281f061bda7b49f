"""Scaling of distributed pretraining: images/s with 1 process vs N processes (torchrun, gloo on CPU).

    python benchmarks/scaling.py [--nproc 2] [--max-images 5120] [--epochs 2]

Same global batch and recipe (cifar10-cpu) in every case; N processes get model.bn_splits = 8/N so that
shuffle BN keeps 8 groups. Throughput is the mean of the logged images/s after the first epoch (the
first includes start-up). Prints a table and writes benchmarks/results/scaling.json.
On a 2-core CPU two processes share the same cores, so expect little or no gain here; on GPUs each
process has its own device.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import write_results

ROOT = Path(__file__).resolve().parent


def run(nproc: int, a: argparse.Namespace) -> tuple[float, float]:
    out = Path(a.work) / f"nproc{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "moco", "pretrain", "--preset", "cifar10-cpu", "--data", a.data, "--out", str(out),
           "--max-images", str(a.max_images), "--epochs", str(a.epochs), "--no-knn", "--no-progress",
           "--set", f"model.bn_splits={8 // nproc}", "--set", "train.log_every=5"]
    if nproc > 1:
        cmd[4:4] = ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["images_per_sec"] for r in recs if r["type"] == "step" and r["epoch"] > 1]
    return sum(steps) / len(steps), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10" / "train"))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--max-images", type=int, default=5120)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="runs/bench-scaling")
    ap.add_argument("--json", default=str(ROOT / "results" / "scaling.json"))
    a = ap.parse_args()
    rows = []
    for n in (1, a.nproc):
        ips, wall = run(n, a)
        rows.append({"nproc": n, "images_per_sec": ips, "wall_s": wall})
    base = rows[0]["images_per_sec"]
    for r in rows:
        r["speedup"] = r["images_per_sec"] / base
        r["efficiency"] = r["speedup"] / r["nproc"]
    print("\n| processes | images/s | speed-up | efficiency |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['nproc']} | {r['images_per_sec']:.0f} | {r['speedup']:.2f}x | {100 * r['efficiency']:.0f}% |")
    write_results("scaling", {"rows": rows}, a.json)


if __name__ == "__main__":
    main()
