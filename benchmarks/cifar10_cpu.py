"""The main job, timed: `moco pretrain --preset cifar10-cpu` then `moco knn`, against a random network.

    python benchmarks/cifar10_cpu.py [--preset cifar10-cpu] [--data ../shared/datasets/cifar10]
                                     [--out runs/bench-PRESET] [--json benchmarks/results/PRESET.json]
                                     [--set key=value ...]

Runs the real commands as subprocesses (wall time includes start-up, decoding and the final kNN),
evaluates a randomly initialised network of the same architecture with the same kNN, prints a table
and writes benchmarks/results/cifar10_cpu.json (epoch-by-epoch numbers from metrics.jsonl included).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import write_results

ROOT = Path(__file__).resolve().parent


def random_init_knn(data: Path, preset: str, overrides: list[str]) -> float:
    from moco.config import resolve
    from moco.data.cache import decode_images
    from moco.data.folder import scan_images
    from moco.evaluation.knn import evaluate_knn
    from moco.methods import build_moco

    cfg = resolve(preset, overrides=overrides)
    torch.manual_seed(cfg.train.seed)
    net = build_moco(cfg).encoder_q.to(memory_format=torch.channels_last)
    side = cfg.data.image_size
    train = decode_images(scan_images(data / "train"), side, progress=False)
    test = decode_images(scan_images(data / "test"), side, progress=False)
    return evaluate_knn(net, train, test, side, torch.device("cpu"))["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--preset", default="cifar10-cpu")
    ap.add_argument("--out", help="run directory (default: runs/bench-PRESET)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="result file (default: benchmarks/results/PRESET with _ for -.json)")
    a = ap.parse_args()
    data, out = Path(a.data), Path(a.out or f"runs/bench-{a.preset}")
    a.json = a.json or str(ROOT / "results" / f"{a.preset.replace('-', '_')}.json")
    shutil.rmtree(out, ignore_errors=True)
    moco = [sys.executable, "-m", "moco"]
    sets = [x for s in a.set for x in ("--set", s)]
    t0 = time.perf_counter()
    subprocess.run(moco + ["pretrain", "--preset", a.preset, "--data", str(data / "train"), "--out", str(out),
                           "--no-progress", "--no-knn", *sets], check=True)
    t_pretrain = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run(moco + ["knn", "--checkpoint", str(out / "checkpoint_last.pt"), "--train", str(data / "train"),
                           "--test", str(data / "test"), "--json", str(out / "knn.json"), "--no-progress"], check=True)
    t_knn = time.perf_counter() - t1
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child: pretrain
    knn = json.loads((out / "knn.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r.get("type") == "epoch"]
    rand = random_init_knn(data, a.preset, a.set)
    ips = sum(r["images_per_sec"] for r in epochs) / len(epochs)
    result = {
        "command": f"moco pretrain --preset {a.preset} --data {data / 'train'} --no-knn {' '.join(sets)}".strip()
        + " && moco knn --checkpoint .../checkpoint_last.pt --train .../train --test .../test",
        "knn_top1": knn["top1"], "knn_top5": knn["top5"], "random_init_knn_top1": rand,
        "pretrain_wall_s": t_pretrain, "knn_wall_s": t_knn, "total_wall_s": t_pretrain + t_knn,
        "mean_images_per_sec": ips, "peak_rss_mb": peak_rss_mb,
        "epochs": [{k: r[k] for k in ("epoch", "loss", "pretext_acc1", "images_per_sec", "epoch_time") if k in r}
                   | ({"knn_top1": r["knn_top1"]} if "knn_top1" in r else {}) for r in epochs],
    }
    write_results("cifar10_cpu", result, a.json)
    print("\n| what | value |\n|---|---|")
    print(f"| kNN top-1 (k=200), pretrained | {knn['top1']:.2f}% |")
    print(f"| kNN top-1, random init | {rand:.2f}% |")
    print(f"| wall time: pretrain + knn | {t_pretrain:.0f} s + {t_knn:.0f} s = {t_pretrain + t_knn:.0f} s |")
    print(f"| training images/s (mean over epochs) | {ips:.0f} |")
    print(f"| peak RSS of the pretraining process | {peak_rss_mb:.0f} MB |")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
