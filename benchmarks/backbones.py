"""Images/s of the training step for backbones beyond our ResNets, on the cpu preset's data and recipe.

Each row is ``cifar10-cpu`` with only ``model.arch`` changed (cached CIFAR-10 images, batch 256, 32 px),
timed in the same run in the preset's bf16 and in fp32 (CPUs without native bf16 run fp32 faster).

    python benchmarks/backbones.py [--data ../shared/datasets/cifar10] [--steps 4]

Prints a table and writes benchmarks/results/backbones.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))
from speed import cifar_train, measure, parse_args  # noqa: E402

ARCHS = ["resnet18", "torchvision:mobilenet_v3_small", "custom:custom_backbone.SmallCNN"]


def main() -> None:
    a = parse_args(__doc__, 4, 1, "backbones.json")
    data = cifar_train(a.data, 2560)
    rows = []
    for arch in ARCHS:
        row = {"arch": arch}
        for precision in ("bf16", "fp32"):
            r = measure("cifar10-cpu", [f"model.arch={arch}", f"train.precision={precision}"], data, a.steps,
                        a.warmup)
            row[f"{precision}_images_per_sec"] = r["images_per_sec"]
        rows.append(row)
        print(f"{arch:34s} bf16 {row['bf16_images_per_sec']:7.1f}  fp32 {row['fp32_images_per_sec']:7.1f} img/s",
              flush=True)
    print("\n| model.arch (cifar10-cpu otherwise) | images/s, bf16 | images/s, fp32 |\n|---|---|---|")
    for r in rows:
        print(f"| `{r['arch']}` | {r['bf16_images_per_sec']:.0f} | {r['fp32_images_per_sec']:.0f} |")
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "steps": a.steps, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
