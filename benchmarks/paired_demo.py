"""The paired fidelity check of issue #16: ``cifar10-demo`` (ours) against the plain demo-style loop
(``benchmarks/reference_loop.py``) at the same settings, for the first epochs of the demo's 200-epoch
schedule, with the kNN monitor on the projection head's output (what the authors' demo scores) and on
the backbone. Two seeds each, so the seed noise is visible beside the difference.

The width is lowered (default 16) so an epoch fits a CPU; fp32 by default (the demo's precision; bf16 is
emulated on CPUs without native bf16). The authors' own curve (width 64, one V100) is printed for
context: at a quarter of the width, the levels differ; the pairing is ours against the reference loop.

    python benchmarks/paired_demo.py [--width 16] [--epochs 3] [--seeds 0 1] [--only ours|reference]

Writes benchmarks/results/paired_demo.json (updated after every run, so a partial result is kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine
from reference_loop import reference_epochs

from moco.config import resolve
from moco.data.cache import decode_images
from moco.data.folder import find_split, scan_images
from moco.data.pipelines import decode_side
from moco.evaluation.knn import evaluate_knn
from moco.tasks.pretrain import pretrain
from moco.training.logging import read_metrics

ROOT = Path(__file__).resolve().parent

CURVE = ROOT.parent.parent / "shared" / "docs" / "reference" / "moco-cifar10-demo-curve.json"


def demo_config(width: int, seed: int, precision: str, workers: int):
    return resolve("cifar10-demo", overrides=[f"model.width={width}", f"train.seed={seed}",
                                              f"train.precision={precision}", f"data.workers={workers}",
                                              "train.checkpoint_every=0"])


def run_ours(cfg, data: Path, epochs: int) -> list[dict]:
    n = len(scan_images(find_split(data)[0]))
    with tempfile.TemporaryDirectory() as out:
        pretrain(cfg, data, out, max_steps=epochs * (n // cfg.optim.batch_size), progress=False)
        recs = [r for r in read_metrics(Path(out) / "metrics.jsonl") if r["type"] == "epoch"]
    return [{"epoch": r["epoch"], "lr": r["lr"], "loss": r["loss"], "epoch_time": r["epoch_time"],
             "knn_head_top1": r["knn_head_top1"], "knn_backbone_top1": r["knn_top1"]} for r in recs]


def run_reference(cfg, data: Path, epochs: int, workers: int) -> list[dict]:
    train_dir, test_dir = find_split(data)
    side = decode_side(cfg.data)
    memory = decode_images(scan_images(train_dir), side, workers=workers, progress=False)
    test = decode_images(scan_images(test_dir), side, workers=workers, progress=False)

    def evaluate(encoder) -> dict:
        res = evaluate_knn(encoder, memory, test, cfg.data.image_size, torch.device("cpu"), cfg.train.precision,
                           cfg.train.knn_k, cfg.train.knn_t, norm=cfg.data.normalize, features=("head", "backbone"))
        return {"knn_head_top1": res["top1"], "knn_backbone_top1": res["backbone_top1"]}

    return reference_epochs(cfg, str(data), epochs, evaluate, workers)


def table(results: dict, epochs: int) -> str:
    curve = {r[0]: r for r in json.loads(CURVE.read_text())["rows"]} if CURVE.is_file() else {}
    lines = ["| epoch | loop | seed | head kNN % | backbone kNN % | loss | epoch s |", "|---|---|---|---|---|---|---|"]
    for e in range(1, epochs + 1):
        for loop in ("ours", "reference"):
            for seed, recs in sorted(results.get(loop, {}).items()):
                r = next((r for r in recs if r["epoch"] == e), None)
                if r:
                    lines.append(f"| {e} | {loop} | {seed} | {r['knn_head_top1']:.2f} | {r['knn_backbone_top1']:.2f} | "
                                 f"{r['loss']:.3f} | {r['epoch_time']:.0f} |")
        if e in curve:
            lines.append(f"| {e} | authors' demo (width 64, V100) | - | {curve[e][1]:.2f} | - | - | - |")
    for loop in ("ours", "reference"):
        last = [recs[-1]["knn_head_top1"] for recs in results.get(loop, {}).values() if recs]
        if last:
            spread = f" ± {statistics.stdev(last):.2f}" if len(last) > 1 else ""
            lines.append(f"\n{loop}: head kNN at the last epoch {statistics.mean(last):.2f}{spread} "
                         f"over {len(last)} seed(s)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["ours", "reference"])
    ap.add_argument("--out", default=str(ROOT / "results" / "paired_demo.json"))
    a = ap.parse_args()
    out = Path(a.out)
    results = json.loads(out.read_text())["runs"] if out.is_file() else {}
    for seed in a.seeds:
        for loop in ("ours", "reference"):
            if a.only and loop != a.only:
                continue
            cfg = demo_config(a.width, seed, a.precision, a.workers)
            t0 = time.perf_counter()
            recs = run_ours(cfg, Path(a.data), a.epochs) if loop == "ours" else \
                run_reference(cfg, Path(a.data), a.epochs, a.workers)
            print(f"{loop} seed {seed}: {time.perf_counter() - t0:.0f}s {recs[-1]}", flush=True)
            results.setdefault(loop, {})[str(seed)] = recs
            out.write_text(json.dumps({
                "preset": "cifar10-demo", "width": a.width, "epochs": a.epochs, "precision": a.precision,
                "command": " ".join(["python", *sys.argv]), "machine": machine(),
                "runs": results}, indent=1) + "\n")
    print(table(results, a.epochs))


if __name__ == "__main__":
    main()
