"""The main job's recipe before and after InfoNCE left bf16 autocast (issue #16), back to back.

    python benchmarks/logits_fp32.py --before dc2fc35~1 --after dc2fc35 [--max-images 4096] [--epochs 2]

Checks out each commit into a temporary worktree and runs there, in turn, the same command:
``moco pretrain --preset cifar10-cpu`` in bf16 (the preset's precision) on a deterministic subset, then
``moco knn`` (fp32 evaluation, the full CIFAR-10 train/test sets). Reports kNN top-1, the last epoch's
loss and training images/s of both, and writes benchmarks/results/logits_fp32.json. With the full data
and 10 epochs it is the main job itself; the defaults are a subset that fits a CPU without native bf16
(emulated bf16 steps ~10x slower there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def run(checkout: Path, data: Path, out: Path, max_images: int, epochs: int, precision: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    common = [sys.executable, "-m", "moco"]
    t0 = time.perf_counter()
    subprocess.run([*common, "pretrain", "--preset", "cifar10-cpu", "--data", str(data), "--out", str(out),
                    "--max-images", str(max_images), "--epochs", str(epochs), "--no-knn", "--no-progress",
                    "--overwrite", "--set", f"train.precision={precision}"], cwd=checkout, env=env, check=True)
    train_s = time.perf_counter() - t0
    knn_json = out / "knn.json"
    subprocess.run([*common, "knn", "--checkpoint", str(out / "checkpoint_last.pt"), "--train", str(data / "train"),
                    "--test", str(data / "test"), "--precision", "fp32", "--json", str(knn_json), "--no-progress"],
                   cwd=checkout, env=env, check=True)
    epochs_rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in epochs_rec if r["type"] == "epoch"][-1]
    return {"knn_top1": json.loads(knn_json.read_text())["top1"], "loss": last["loss"],
            "images_per_sec": last["images_per_sec"], "train_wall_s": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="commit with bf16 logits")
    ap.add_argument("--after", required=True, help="commit with fp32 logits")
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--max-images", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--json", default=str(ROOT / "results" / "logits_fp32.json"))
    a = ap.parse_args()
    repo = ROOT.parent
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, commit in (("before", a.before), ("after", a.after)):
            tree = Path(tmp) / name
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), commit], check=True,
                           capture_output=True)
            try:
                results[name] = {"commit": commit, **run(tree, Path(a.data), Path(tmp) / f"run-{name}", a.max_images,
                                                         a.epochs, a.precision)}
            finally:
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
            print(name, results[name], flush=True)
    print("\n| logits | commit | kNN top-1 | last epoch's loss | train img/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {'bf16' if name == 'before' else 'fp32'} | {r['commit']} | {r['knn_top1']:.2f}% | {r['loss']:.4f} | "
              f"{r['images_per_sec']:.1f} |")
    Path(a.json).write_text(json.dumps({
        "command": " ".join(sys.argv), "max_images": a.max_images, "epochs": a.epochs, "precision": a.precision,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
