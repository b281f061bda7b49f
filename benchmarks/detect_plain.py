"""Detection against a plain loop (issue #39): `moco detect` and a plain torchvision Faster R-CNN loop of about
60 lines, back to back, at the same wall-clock budget, on the same pasted set and backbone; training images/s,
COCO AP and AP50 of each, with the machine.

    python benchmarks/detect_plain.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt [--budget 4m]
        [--seeds 0 1] [--recipe plain|default] [--set KEY=VALUE ...] [--only plain|moco]

The plain loop (`plain_loop`, outside the project's machinery but for loading the backbone): torchvision's
`FasterRCNN` on `BackboneWithFPN` over layer2-4 with 64 FPN channels and 2 square anchors per level, 128 RPN
and 128 box samples per image, a `TwoMLPHead` of 256, batch 16, SGD at lr 0.02 with a 50-step warm-up and a
cosine over its training time, bf16 autocast where the CPU has it, the images decoded once and held as
tensors, no flips. Its clock starts with its process; it trains until the budget less `--eval-reserve`
seconds, then scores the validation set with pycocotools.

`--recipe plain` runs `moco detect` at the plain loop's recipe (`PLAIN_RECIPE`: the speed comparison);
`--recipe default` at its own defaults (the AP comparison). Each run is a subprocess (the plain loop too, so
that both start alike), into benchmarks/runs/detect_plain/NAME; `moco detect` runs are skipped when their
results.json exists. Writes benchmarks/results/detect_plain[_RECIPE].json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()  # the plain loop's clock starts with its process

from common import ROOT, machine, run_once, write_results  # noqa: E402

PLAIN_RECIPE = ["optim.batch_size=16", "optim.warmup_epochs=0.4", "detect.rois_per_image=128",
                "detect.rpn_per_image=128", "detect.anchor_ratios=[1.0]", "detect.flip=0", "detect.fpn_channels=64",
                "detect.box_head_dim=256", "detect.rpn_post_nms=2000", "detect.roi_sampling=2"]
"""`moco detect` at the plain loop's recipe: batch 16, 128 RPN and box samples, square anchors, no flips,
torchvision's 2,000 proposals and 2 RoIAlign samples a bin side (the FPN and head widths are the width-16
backbone's defaults, named to be sure). One difference stays: the warm-up. 0.4 epochs is the plain loop's 50 steps
of an epoch of 2,000 images, but a time budget fits all of the recipe's 12 epochs into the steps that fit, warm-up
included, so it lasts about 5 of the run's 160 steps; the speed is the same either way."""


def load_split(data: Path, name: str) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]]]:
    """(the COCO file, its images as uint8 (3, H, W) tensors, their targets: boxes x1y1x2y2, labels 1..C)."""
    import numpy as np
    import torch
    from PIL import Image

    coco = json.loads((data / f"{name}.json").read_text())
    index = {c["id"]: i + 1 for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    per: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        per[a["image_id"]].append(a)
    images, targets = [], []
    for im in coco["images"]:
        rgb = np.asarray(Image.open(data / name / im["file_name"]).convert("RGB"))
        images.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1))
        anns = per[im["id"]]
        targets.append({"boxes": torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                a["bbox"][1] + a["bbox"][3]] for a in anns]).view(-1, 4).float(),
                        "labels": torch.tensor([index[a["category_id"]] for a in anns], dtype=torch.int64)})
    return coco, images, targets


def plain_loop(ckpt: str, data: Path, budget_s: float, seed: int, eval_reserve: float) -> dict[str, Any]:
    """The plain loop: train until ``budget_s - eval_reserve`` seconds after the process started, then score."""
    import torch
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    import moco
    from moco.core.precision import native_bf16

    torch.manual_seed(seed)
    coco, images, targets = load_split(data, "train")
    val_coco, val_images, _ = load_split(data, "val")
    net = moco.load_backbone(ckpt).train()
    body = BackboneWithFPN(net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [32, 64, 128], 64,
                           LastLevelMaxPool())
    strides = [2, 4, 8, 16]  # the CIFAR stem's layer2-4 and the pooled level
    anchors = AnchorGenerator(tuple((8.0 * s, 8.0 * s * math.sqrt(2)) for s in strides), ((1.0,),) * 4)
    model = FasterRCNN(body, min_size=96, max_size=160, image_mean=[0.4914, 0.4822, 0.4465],
                       image_std=[0.2470, 0.2435, 0.2616], rpn_anchor_generator=anchors, rpn_batch_size_per_image=128,
                       box_batch_size_per_image=128, box_head=TwoMLPHead(64 * 7 * 7, 256),
                       box_predictor=FastRCNNPredictor(256, len(coco["categories"]) + 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    bf16 = native_bf16(torch.device("cpu"))  # as train.precision=auto decides
    train_s = budget_s - eval_reserve - (time.perf_counter() - T0)
    g = torch.Generator().manual_seed(seed)
    step, seen, t_start = 0, 0, time.perf_counter()
    while time.perf_counter() - t_start < train_s:
        for idx in torch.randperm(len(images), generator=g).split(16):
            frac = (time.perf_counter() - t_start) / train_s
            if len(idx) < 16 or frac >= 1:
                break
            for group in opt.param_groups:
                group["lr"] = 0.02 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                losses = model([images[i].float() / 255 for i in idx], [targets[i] for i in idx])
            loss = sum(v.float() for v in losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            step, seen = step + 1, seen + len(idx)
    trained = time.perf_counter() - t_start
    model.eval()
    results = []
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for i in range(0, len(val_images), 16):
            outs = model([x.float() / 255 for x in val_images[i:i + 16]])
            for im, out in zip(val_coco["images"][i:i + 16], outs):
                cats = sorted(c["id"] for c in val_coco["categories"])
                boxes, scores = out["boxes"].float().tolist(), out["scores"].float().tolist()
                for b, c, s in zip(boxes, out["labels"].tolist(), scores):
                    results.append({"image_id": im["id"], "category_id": cats[c - 1], "score": s,
                                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    gt = COCO()
    gt.dataset = val_coco
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(results) if results else COCO(), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"AP": round(100 * ev.stats[0], 2), "AP50": round(100 * ev.stats[1], 2), "steps": step,
            "images_per_sec": round(seen / trained, 2), "train_seconds": round(trained, 1),
            "wall_s": round(time.perf_counter() - T0, 1), "precision": "bf16" if bf16 else "fp32"}


def plain_run(out: Path, a: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The plain loop in a subprocess of this script (skipped when its result.json exists)."""
    res = out / "results.json"
    if not res.is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "--checkpoint", a.checkpoint, "--data", a.data, "--budget", a.budget,
                        "--eval-reserve", str(a.eval_reserve), "--plain-child", str(res), "--seeds", str(seed)],
                       check=True, stdout=subprocess.DEVNULL)
    return json.loads(res.read_text())


def moco_run(out: Path, a: argparse.Namespace, seed: int, settings: list[str]) -> dict[str, Any]:
    data = Path(a.data)
    r = run_once(out, ["detect", "--checkpoint", a.checkpoint, "--train-ann", str(data / "train.json"),
                       "--train-images", str(data / "train"), "--val-ann", str(data / "val.json"), "--val-images",
                       str(data / "val"), "--seed", str(seed), "--time-budget", a.budget,
                       *[x for s in settings for x in ("--set", s)]])
    return {k: r.get(k) for k in ("AP", "AP50", "steps", "images_per_sec", "train_seconds", "precision")} | {
        "wall_s": r["wall_outside_s"]}


def tag_of(settings: list[str]) -> str:
    """A run folder's tag for ``settings``: a digest of them (empty for none), the same for the same list."""
    import hashlib

    return hashlib.sha1("\n".join(settings).encode()).hexdigest()[:8] if settings else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(ROOT / "runs" / "pasted"), help="the pasted set (made when missing)")
    ap.add_argument("--budget", default="4m", help="each run's wall-clock budget (moco detect's --time-budget)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--recipe", choices=["plain", "default"], default="plain")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for moco detect")
    ap.add_argument("--only", choices=["plain", "moco"], help="run one of the two loops")
    ap.add_argument("--eval-reserve", type=float, default=30.0, help="the plain loop's seconds kept for scoring")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "detect_plain"))
    ap.add_argument("--json")
    ap.add_argument("--plain-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.plain_child:
        from moco.training.budget import parse_duration

        rec = plain_loop(a.checkpoint, Path(a.data), parse_duration(a.budget), a.seeds[0], a.eval_reserve)
        Path(a.plain_child).write_text(json.dumps(rec) + "\n")
        return
    data = Path(a.data)
    if not (data / "val.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "make_detection_set.py"), "--out", str(data)], check=True)
    settings = [*(PLAIN_RECIPE if a.recipe == "plain" else []), *a.set]
    tag = tag_of(a.set)
    out: dict[str, Any] = {"checkpoint": a.checkpoint, "budget": a.budget, "recipe": a.recipe, "settings": settings,
                           "runs": {}}
    loops = [x for x in ("plain", "moco") if a.only in (None, x)]
    for seed in a.seeds:  # back to back: the two loops of a seed run minutes apart, on the same machine
        for loop in loops:
            name = f"plain-s{seed}" if loop == "plain" else f"moco-{a.recipe}-{tag_of(settings)}-s{seed}"
            run = Path(a.runs) / a.budget / name
            r = plain_run(run, a, seed) if loop == "plain" else moco_run(run, a, seed, settings)
            out["runs"][name] = r | {"loop": loop, "seed": seed}
            print(f"{name}: AP {r['AP']:.2f}, AP50 {r['AP50']:.2f}, {r['images_per_sec']} img/s, {r['steps']} steps, "
                  f"{r['wall_s']} s", flush=True)
    print(f"\n{machine()['cpu']} ({machine()['capability']}), budget {a.budget}, moco detect at the {a.recipe} recipe")
    print("| loop | AP (by seed) | AP50 (by seed) | training images/s |\n|---|---|---|---|")
    for loop in loops:
        rs = [r for r in out["runs"].values() if r["loop"] == loop]
        cell = {k: " / ".join(f"{r[k]:.2f}" for r in rs) + f" (mean {statistics.mean(r[k] for r in rs):.2f})"
                for k in ("AP", "AP50")}
        print(f"| {loop} | {cell['AP']} | {cell['AP50']} | {statistics.mean(r['images_per_sec'] for r in rs):.2f} |")
    name = f"detect_plain_{a.recipe}{'_' + tag if tag else ''}"
    write_results("detect_plain", out, a.json or ROOT / "results" / f"{name}.json")


if __name__ == "__main__":
    main()
