"""Pretraining throughput of the presets on this machine: images/s of the real training loop.

For each preset network it times, in the same run, the loop as configured
(cached uint8 images, batched augmentation, bf16 autocast, channels_last) and
the same loop in fp32 with NCHW tensors, so the speed-up is a ratio measured
side by side on a shared, noisy machine.

    python benchmarks/speed.py [--data ../shared/datasets/cifar10] [--steps 8]

Prints a table and writes benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from moco.config import resolve
from moco.data.cache import decode_images
from moco.data.folder import find_split, scan_images
from moco.training.pretrain import build_training, cached_batches, memory_format, train_step

ROOT = Path(__file__).resolve().parent


def measure(preset: str, overrides: list[str], data, steps: int, warmup: int) -> dict:
    cfg = resolve(preset, overrides=overrides)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model, opt, scaler = build_training(cfg, device)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data.array), generator=gen)
    fmt = memory_format(cfg)
    times = []
    batches = cached_batches(data, perm, 0, cfg, gen, device)
    t = time.perf_counter()
    for i, (im_q, im_k) in enumerate(batches):
        train_step(model, opt, scaler, im_q.contiguous(memory_format=fmt), im_k.contiguous(memory_format=fmt), gen,
                   cfg.train.precision, device)
        now = time.perf_counter()
        times.append(now - t)
        t = now
        if i + 1 >= warmup + steps:
            break
    dt = sum(times[warmup:]) / steps
    return {"preset": preset, "overrides": overrides, "batch_size": cfg.optim.batch_size,
            "images_per_sec": cfg.optim.batch_size / dt, "sec_per_step": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "speed.json"))
    a = ap.parse_args()
    train_dir, _ = find_split(Path(a.data))
    data = decode_images(scan_images(train_dir, max_images=5120), 32, progress=False)
    cases = [
        ("cifar10-cpu", [], 1),
        ("cifar10-cpu", ["train.precision=fp32", "train.channels_last=false"], 1),
        ("cifar10-demo", ["optim.batch_size=256"], 4),
        ("cifar10-demo", ["optim.batch_size=256", "train.precision=fp32", "train.channels_last=false"], 4),
    ]
    rows = []
    for preset, ov, div in cases:
        steps = max(2, a.steps // div)
        r = measure(preset, ov, data, steps, a.warmup)
        r["variant"] = "fp32 NCHW" if "train.precision=fp32" in ov else "bf16 channels_last"
        rows.append(r)
        print(f"{preset:14s} {r['variant']:20s} batch {r['batch_size']:4d}  {r['images_per_sec']:8.1f} img/s",
              flush=True)
    for i in range(0, len(rows), 2):
        rows[i]["speedup_vs_fp32_nchw"] = rows[i]["images_per_sec"] / rows[i + 1]["images_per_sec"]
    print("\npreset          images/s (bf16+CL)  images/s (fp32 NCHW)  ratio")
    for i in range(0, len(rows), 2):
        print(f"{rows[i]['preset']:14s}  {rows[i]['images_per_sec']:17.1f}  {rows[i + 1]['images_per_sec']:20.1f}"
              f"  {rows[i]['speedup_vs_fp32_nchw']:5.2f}x")
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
