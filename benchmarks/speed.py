"""Pretraining throughput of the presets on this machine: images/s of the real training loop.

For each preset network it times, in the same run: our loop as configured (cached uint8 images,
batched augmentation, bf16 autocast, channels_last), our loop in fp32 with NCHW tensors, and the
plain demo-style reference loop (benchmarks/reference_loop.py: per-image PIL augmentation in 2
DataLoader workers, fp32, NCHW). Speed-ups are ratios measured side by side on a shared, noisy machine.

    python benchmarks/speed.py [--data ../shared/datasets/cifar10] [--steps 8]

Prints a table and writes benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_results
from reference_loop import reference_images_per_sec, sync_device

from moco.config import resolve
from moco.data.cache import decode_images
from moco.data.folder import find_split, scan_images
from moco.data.pipelines import cached_batches
from moco.tasks.pretrain import build_training, pretrain_task
from moco.training.loop import train_step
from moco.training.task import StepModule

ROOT = Path(__file__).resolve().parent


def measure(preset: str, overrides: list[str], data, steps: int, warmup: int, device: str = "cpu",
            batches=None) -> dict:
    """Images/s of our training step fed by the cached pipeline over ``data`` (a DecodedImages), or by
    ``batches(cfg, gen, device)`` when given (another pipeline), after ``warmup`` steps."""
    cfg = resolve(preset, overrides=overrides)
    device = torch.device(device)
    torch.manual_seed(0)
    model, opt, scaler = build_training(cfg, device)
    gen = torch.Generator().manual_seed(0)
    net = StepModule(model, pretrain_task(cfg).step)
    if batches is None:
        source = cached_batches(data, torch.randperm(len(data.array), generator=gen), 0, cfg.data,
                                cfg.optim.batch_size, gen, device)
    else:
        source = batches(cfg, gen, device)
    t = None
    for i, batch in enumerate(source):
        if i == warmup:
            sync_device(device)
            t = time.perf_counter()
        train_step(net, opt, scaler, batch, gen, cfg.train.precision, device)
        if i + 1 >= warmup + steps:
            break
    assert t is not None, "not enough batches for warmup + steps"
    sync_device(device)
    dt = (time.perf_counter() - t) / steps
    return {"preset": preset, "overrides": overrides, "batch_size": cfg.optim.batch_size,
            "images_per_sec": cfg.optim.batch_size / dt, "sec_per_step": dt}


def parse_args(doc: str, steps: int, warmup: int, out: str) -> argparse.Namespace:
    """--data, --steps, --warmup and --out, as the throughput scripts share them."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--out", default=str(ROOT / "results" / out))
    return ap.parse_args()


def cifar_train(data: str, n: int):  # noqa: ANN201 - DecodedImages
    """The first ``n`` images of the training split, decoded at 32 px."""
    train_dir, _ = find_split(Path(data))
    return decode_images(scan_images(train_dir, max_images=n), 32, progress=False)


def main() -> None:
    a = parse_args(__doc__, 8, 2, "speed.json")
    data = cifar_train(a.data, 5120)
    cases = [("cifar10-cpu", [], 1), ("cifar10-demo", ["optim.batch_size=256"], 4)]
    rows = []
    for preset, ov, div in cases:
        steps = max(2, a.steps // div)
        ours = measure(preset, ov, data, steps, a.warmup)["images_per_sec"]
        fp32 = measure(preset, ov + ["train.precision=fp32", "train.channels_last=false"], data, steps,
                       a.warmup)["images_per_sec"]
        ref = reference_images_per_sec(preset, ov, a.data, steps, a.warmup)
        row = {"preset": preset, "overrides": ov, "ours_images_per_sec": ours, "ours_fp32_nchw_images_per_sec": fp32,
               "reference_images_per_sec": ref, "speedup_vs_reference": ours / ref}
        rows.append(row)
        print(f"{preset:14s} ours {ours:7.1f}  ours fp32/NCHW {fp32:7.1f}  reference {ref:7.1f} img/s", flush=True)
    print("\n| network (preset) | ours, bf16 + channels_last | ours, fp32 NCHW | reference loop | ours / reference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['ours_images_per_sec']:.0f} | {r['ours_fp32_nchw_images_per_sec']:.0f} | "
              f"{r['reference_images_per_sec']:.0f} | {r['speedup_vs_reference']:.2f}x |")
    write_results("speed", {"rows": rows}, a.out)


if __name__ == "__main__":
    main()
