"""Time to accuracy: CIFAR-10 kNN top-1 after a fixed wall-clock budget, ours against the plain reference loop.

Ours is the main job (`moco pretrain --preset cifar10-cpu` then `moco knn`, run by
benchmarks/cifar10_cpu.py, whose preset is sized to finish inside 15 minutes); its result is read
from benchmarks/results/cifar10_cpu.json, or re-run with --run-ours. The reference loop
(benchmarks/reference_loop.py: per-image PIL augmentation in 2 DataLoader workers, fp32, NCHW, the
same network and recipe) trains for the same budget minus the time its kNN takes, with a cosine
schedule planned from its measured speed, and is judged by the same kNN code. Peak memory is the
maximum resident set size of each training process (its DataLoader workers included for the reference).

    python benchmarks/time_to_accuracy.py [--budget 900] [--run-ours]

Prints a table and writes benchmarks/results/time_to_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import write_results
from reference_loop import reference_train

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--budget", type=float, default=900.0, help="wall-clock seconds, training + final kNN")
    ap.add_argument("--run-ours", action="store_true", help="re-run benchmarks/cifar10_cpu.py first")
    ap.add_argument("--ours-json", default=str(ROOT / "results" / "cifar10_cpu.json"))
    ap.add_argument("--out", default=str(ROOT / "results" / "time_to_accuracy.json"))
    a = ap.parse_args()
    data = Path(a.data)
    if a.run_ours:
        subprocess.run([sys.executable, str(ROOT / "cifar10_cpu.py"), "--data", str(data), "--json", a.ours_json],
                       check=True)
    ours = json.loads(Path(a.ours_json).read_text())

    from moco.config import resolve
    from moco.data.cache import decode_images
    from moco.data.folder import scan_images
    from moco.evaluation.knn import evaluate_knn

    knn_reserve = 40.0  # decode + kNN over 60k images, measured ~25 s; the reference must leave room for it
    t0 = time.perf_counter()
    encoder, stats = reference_train("cifar10-cpu", [], str(data), a.budget - knn_reserve)
    peak_ref_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                   + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    cfg = resolve("cifar10-cpu")
    train = decode_images(scan_images(data / "train"), cfg.data.image_size, progress=False)
    test = decode_images(scan_images(data / "test"), cfg.data.image_size, progress=False)
    ref_knn = evaluate_knn(encoder, train, test, cfg.data.image_size, torch.device("cpu"), precision="fp32",
                           channels_last=False)["top1"]
    ref_total = time.perf_counter() - t0
    rows = [
        {"loop": "ours (moco pretrain + moco knn)", "knn_top1": ours["knn_top1"], "wall_s": ours["total_wall_s"],
         "images_per_sec": ours["mean_images_per_sec"], "epochs": len(ours["epochs"]),
         "peak_rss_mb": ours.get("peak_rss_mb")},
        {"loop": "reference loop", "knn_top1": ref_knn, "wall_s": ref_total, "images_per_sec": stats["images_per_sec"],
         "epochs": round(stats["epochs_run"], 2), "peak_rss_mb": peak_ref_mb},
    ]
    print("\n| loop | kNN top-1 (%) | wall time (s) | epochs | images/s | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
        print(f"| {r['loop']} | {r['knn_top1']:.2f} | {r['wall_s']:.0f} | {r['epochs']} | "
              f"{r['images_per_sec']:.0f} | {mem} |")
    write_results("time_to_accuracy", {"budget_s": a.budget, "rows": rows, "reference": stats,
                                       "ours_source": os.path.relpath(a.ours_json, ROOT.parent)}, a.out)


if __name__ == "__main__":
    main()
