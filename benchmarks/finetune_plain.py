"""A plain fine-tuning loop outside the project's machinery, to check `moco finetune` against: the same network
(random init), the same labelled images, flip and 4-px pad-crop, batch 256, SGD with Nesterov momentum and weight
decay 5e-4, in fp32, with a one-cycle schedule (the issue's probe: lr 0.1 everywhere) or `moco finetune`'s warm-up
and cosine; top-1 on the test images.

    python benchmarks/finetune_plain.py --labels-file benchmarks/runs/finetune10/10pct-random-s0/labels.txt \
        [--schedule onecycle|cosine] [--steps 312] [--seed 0] [--json benchmarks/results/finetune_plain.json]

Prints one JSON line and adds it to --json under its schedule, with the CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine

ROOT = Path(__file__).resolve().parent



def main() -> None:
    from moco.config import resolve
    from moco.data.augment import crop_flip, eval_batch
    from moco.data.cache import decode_images
    from moco.data.folder import scan_images
    from moco.tasks.finetune import finetune_config
    from moco.transfer.classifier import Classifier
    from moco.transfer.init import build_network
    from moco.transfer.labels import read_labels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels-file", required=True)
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle")
    ap.add_argument("--steps", type=int, default=312)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "results" / "finetune_plain.json"))
    a = ap.parse_args()
    data = Path(a.data)
    train = decode_images(read_labels(scan_images(data / "train"), a.labels_file), 32, progress=False)
    test = decode_images(scan_images(data / "test"), 32, progress=False)
    cfg = finetune_config(resolve("cifar10-cpu"), "random", "")
    torch.manual_seed(a.seed)
    model = Classifier(build_network(cfg, 10)).to(memory_format=torch.channels_last)
    y_train, y_test = torch.tensor(train.images.labels), torch.tensor(test.images.labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if a.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=a.steps)
    else:  # moco finetune's: a warm-up of an eighth of the run, then a cosine to zero over the rest
        w = a.steps // 8
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / w if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / (a.steps - w))))
    g = torch.Generator().manual_seed(a.seed)
    step, t0 = 0, time.perf_counter()
    model.train()
    while step < a.steps:
        perm = torch.randperm(len(y_train), generator=g)
        for i in range(0, len(perm) - 255, 256):
            idx = perm[i:i + 256]
            x = crop_flip(train.batch(idx), 32, g, cfg.data.normalize).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model.encoder_q(x), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= a.steps:
                break
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(y_test), 500):
            idx = torch.arange(i, min(i + 500, len(y_test)))
            x = eval_batch(test.batch(idx), 32, cfg.data.normalize).contiguous(memory_format=torch.channels_last)
            right += (model.encoder_q(x).argmax(1) == y_test[idx]).sum().item()
    rec = {"schedule": a.schedule, "steps": a.steps, "seed": a.seed, "images": len(y_train),
           "top1": round(100.0 * right / len(y_test), 2), "seconds": round(time.perf_counter() - t0, 1),
           "command": " ".join(["python", *sys.argv]), "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(rec))
    path = Path(a.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[f"{a.schedule}-s{a.seed}"] = rec
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
