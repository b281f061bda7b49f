"""Images/s of the training step for backbones beyond our ResNets, on the cpu preset's data and recipe.

Each row is ``cifar10-cpu`` with only ``model.arch`` changed (cached CIFAR-10 images, batch 256, 32 px),
timed in the same run in the preset's bf16 and in fp32 (CPUs without native bf16 run fp32 faster).

    python benchmarks/backbones.py [--data ../shared/datasets/cifar10] [--steps 4]

Prints a table and writes benchmarks/results/backbones.json.
"""

from __future__ import annotations

import importlib.util
import sys

from common import REPO, write_results
from speed import cifar_train, measure, parse_args


def load_example(name: str) -> None:
    """examples/NAME.py as the module NAME, so that ``custom:NAME.CLASS`` names a network in it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    sys.modules[name] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


ARCHS = ["resnet18", "torchvision:mobilenet_v3_small", "custom:custom_backbone.SmallCNN"]


def main() -> None:
    a = parse_args(__doc__, 4, 1, "backbones.json")
    load_example("custom_backbone")
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
    write_results("backbones", {"steps": a.steps, "rows": rows}, a.out)


if __name__ == "__main__":
    main()
