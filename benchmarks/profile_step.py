"""Where the time of one pretraining step goes: data, augmentation, forward, backward, momentum, queue, optimizer.

Times the parts of our step (the same calls as ``moco.training.loop``) one after another with
``time.perf_counter`` on the CPU (every op there is synchronous), over several steps of the real
cached CIFAR-10 data, and prints each part's share. Optionally also prints torch.profiler's top ops.

    python benchmarks/profile_step.py [--preset cifar10-cpu] [--set key=value ...] [--steps 10] [--ops]

Writes benchmarks/results/profile_step.json.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from common import write_results

from moco.config import resolve
from moco.core.precision import autocast, memory_format
from moco.data.augment import apply_params, sample_params
from moco.data.cache import decode_images
from moco.data.folder import find_split, scan_images
from moco.methods.moco import batch_shuffle, batch_unshuffle, info_nce, update_momentum
from moco.tasks.pretrain import build_training

ROOT = Path(__file__).resolve().parent


def profiled_step(model, opt, data, idx, cfg, gen, fmt, t: dict[str, float]) -> None:
    """One asymmetric MoCo step split into timed parts; numerically the same as MoCo.forward + SGD."""
    device = torch.device("cpu")

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        t[name] += now - t0
        return now

    d = cfg.data
    t0 = time.perf_counter()
    x = data.batch(idx)
    t0 = lap("data (cached uint8 batch)", t0)
    h, w = x.shape[-2:]
    p1 = sample_params(len(idx), h, w, d.augmentation, d.crop_min_scale, gen)
    p2 = sample_params(len(idx), h, w, d.augmentation, d.crop_min_scale, gen)
    im_q = apply_params(x, p1, d.view_size, d.augmentation).contiguous(memory_format=fmt)
    im_k = apply_params(x, p2, d.view_size, d.augmentation).contiguous(memory_format=fmt)
    t0 = lap("augmentation (2 views)", t0)
    with autocast(device, cfg.train.precision):
        with torch.no_grad():
            update_momentum(model.encoder_k, model.encoder_q, model.m)
            t0 = lap("momentum update", t0)
            xs, un = batch_shuffle(im_k, gen)
            k = batch_unshuffle(F.normalize(model.encoder_k(xs).float(), dim=1), un)
            t0 = lap("key encoder forward (shuffled)", t0)
        q = F.normalize(model.encoder_q(im_q).float(), dim=1)
        t0 = lap("query encoder forward", t0)
        loss, _ = info_nce(q, k, model.queue.clone(), model.T)
        t0 = lap("loss (logits vs queue)", t0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t0 = lap("backward", t0)
    opt.step()
    t0 = lap("optimizer (SGD)", t0)
    model._dequeue_and_enqueue(k)
    lap("enqueue", t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--preset", default="cifar10-cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ops", action="store_true", help="also print torch.profiler's top 15 ops")
    ap.add_argument("--out", default=str(ROOT / "results" / "profile_step.json"))
    a = ap.parse_args()
    cfg = resolve(a.preset, overrides=a.set)
    train_dir, _ = find_split(Path(a.data))
    data = decode_images(scan_images(train_dir, max_images=4096), cfg.data.image_size, progress=False)
    torch.manual_seed(0)
    model, opt, _ = build_training(cfg, torch.device("cpu"))
    model.train()
    fmt = memory_format(cfg.train.channels_last)
    gen = torch.Generator().manual_seed(0)
    b = cfg.optim.batch_size
    t: dict[str, float] = defaultdict(float)
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            t.clear()
            start = time.perf_counter()
        idx = torch.randint(len(data.array), (b,), generator=gen)
        profiled_step(model, opt, data, idx, cfg, gen, fmt, t)
    total = time.perf_counter() - start
    rows = [{"part": k, "ms_per_step": 1000 * v / a.steps, "share": v / total} for k, v in t.items()]
    print(f"{a.preset} {' '.join(a.set)}: batch {b}, {1000 * total / a.steps:.1f} ms/step, "
          f"{b * a.steps / total:.0f} images/s\n")
    print("| part | ms / step | share |\n|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['ms_per_step']:.1f} | {100 * r['share']:.1f}% |")
    if a.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                idx = torch.randint(len(data.array), (b,), generator=gen)
                profiled_step(model, opt, data, idx, cfg, gen, fmt, defaultdict(float))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    write_results("profile_step", {"preset": a.preset, "overrides": a.set, "batch_size": b,
                                   "ms_per_step": 1000 * total / a.steps, "images_per_sec": b * a.steps / total,
                                   "parts": rows}, a.out)


if __name__ == "__main__":
    main()
