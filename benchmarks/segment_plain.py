"""`moco segment`'s training speed against a plain torchvision-style loop on the same network, the same data held
in memory, the same training views (scale, crop, flip) and the same recipe (batch 8, SGD, poly lr), one after the
other in this process's machine state.

    python benchmarks/segment_plain.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt [--seconds 90] [--repeats 2]

The plain loop is ~30 lines: images and maps decoded into tensors, a random batch, the views, the segmenter's
cross-entropy, backward, SGD; timed after 5 warm-up steps. `moco segment` runs as a subprocess with
`--time-budget`, and its results.json's images/s (training time only) is read. Prints a table; writes
benchmarks/results/segment_plain.json with the CPU's flags.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from common import ROOT, run_once, write_results


def plain_loop(ckpt: str, data: Path, seconds: float, seed: int, batch: int = 8) -> dict[str, Any]:
    """Images/s of a plain loop training the segmenter ``moco segment`` builds, for ``seconds`` after warm-up."""
    import torch

    from moco.data.augment import NORMALIZATIONS
    from moco.data.segmentation import SegImages, pair_folders, train_view
    from moco.export.backbone import load_backbone_and_config
    from moco.transfer.segmenter import build_segmenter

    torch.manual_seed(seed)
    network, cfg = load_backbone_and_config(ckpt)
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    model, _ = build_segmenter(network, 11, "deeplabv3", 8, [2, 4, 6], mean, std)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9,
                          weight_decay=1e-4)
    images = SegImages(pair_folders(data / "train", data / "train_maps", keep_mb=1024), cache_mb=1024)
    held = [images[k] for k in range(len(images))]
    g = torch.Generator().manual_seed(seed)
    model.train()
    steps, t0, warm = 0, 0.0, 5
    while True:
        idx = torch.randint(len(held), (batch,), generator=g).tolist()
        views = [train_view(*held[k], torch.rand(4, generator=g), 96, (0.5, 2.0), 96, 0.5, 255) for k in idx]
        x = torch.stack([v[0] for v in views]).float().div_(255)
        y = torch.stack([v[1] for v in views]).long()
        loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps == warm:
            t0 = time.perf_counter()
        if steps > warm and time.perf_counter() - t0 >= seconds:
            return {"images_per_sec": round((steps - warm) * batch / (time.perf_counter() - t0), 2),
                    "steps": steps - warm, "loss": round(loss.item(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(ROOT / "runs" / "pasted"))
    ap.add_argument("--seconds", type=float, default=90, help="training seconds of each run")
    ap.add_argument("--repeats", type=int, default=2, help="plain / moco pairs, alternating")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "segment_plain"))
    ap.add_argument("--json", default=str(ROOT / "results" / "segment_plain.json"))
    a = ap.parse_args()
    data, runs = Path(a.data), Path(a.runs)
    out: dict[str, Any] = {"checkpoint": a.checkpoint, "seconds": a.seconds, "plain": [], "moco": []}
    for r in range(a.repeats):
        out["plain"].append(plain_loop(a.checkpoint, data, a.seconds, r))
        shutil.rmtree(runs / f"moco-{r}", ignore_errors=True)
        res = run_once(runs / f"moco-{r}", [
            "segment", "--checkpoint", a.checkpoint, "--train-images", str(data / "train"), "--train-masks",
            str(data / "train_maps"), "--seed", str(r), "--time-budget", f"{a.seconds + 15:.0f}s",
            "--set", "train.precision=fp32"])  # no validation set: the budget is training and start-up
        out["moco"].append({"images_per_sec": res["images_per_sec"], "steps": res["steps"]})
        print(f"repeat {r}: plain {out['plain'][-1]['images_per_sec']} img/s, moco segment "
              f"{out['moco'][-1]['images_per_sec']} img/s", flush=True)
    p, m = (statistics.mean(x["images_per_sec"] for x in out[k]) for k in ("plain", "moco"))
    out["ratio"] = round(m / p, 3)
    print("\n| loop | images/s (by repeat) | mean |\n|---|---|---|")
    for k, v in (("plain loop", p), ("moco segment", m)):
        key = "plain" if k.startswith("plain") else "moco"
        print(f"| {k} | {' / '.join(str(x['images_per_sec']) for x in out[key])} | {v:.2f} |")
    print(f"\nmoco segment / plain loop: {out['ratio']:.2f}x")
    write_results("segment_plain", out, a.json)


if __name__ == "__main__":
    main()
