"""Linear protocol vs kNN for a pretrained checkpoint and for a randomly initialised backbone of the same shape.

    python benchmarks/linear_cpu.py --checkpoint runs/bench-cifar10-cpu/checkpoint_last.pt
                                    [--data ../shared/datasets/cifar10] [--precision fp32]

Both backbones get the same protocols (moco linear's defaults: 100 epochs, step schedule; each protocol
``NORM@LR[:augV]``: the feature norm (bn = a parameter-free BatchNorm on the features, moco linear's
default; none = the paper's protocol), the lr, and cached center features or flip + pad-crop with V
cached augmented views) and the same kNN (k=200, t=0.1). Prints a table and writes
benchmarks/results/linear_cpu.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_results
from torch import nn

from moco.data.cache import decode_images
from moco.data.folder import scan_images
from moco.evaluation.knn import evaluate_knn
from moco.evaluation.linear import LinearConfig, linear_eval
from moco.export.backbone import load_backbone_and_config
from moco.models.resnet import build_resnet

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--protocols", default="none@30,none@0.3,bn@0.03,bn@0.1,bn@0.3,bn@1,bn@0.1:aug10",
                    help="comma-separated NORM@LR or NORM@LR:augV (flip + pad-crop, V cached augmented views); "
                         "none@30 is the paper's protocol, bn@0.1 moco linear's default")
    ap.add_argument("--precision", default="bf16", help="fp32 where the CPU has no native bf16")
    ap.add_argument("--pretrained-only", action="store_true", help="skip the random network's row")
    ap.add_argument("--json", default=str(ROOT / "results" / "linear_cpu.json"))
    a = ap.parse_args()
    data = Path(a.data)
    pretrained, cfg = load_backbone_and_config(a.checkpoint)
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    random_net = build_resnet(m.arch, m.width, m.cifar_stem).eval()
    random_net.fc = nn.Identity()
    size = cfg.data.image_size
    train = decode_images(scan_images(data / "train"), size, progress=False)
    test = decode_images(scan_images(data / "test"), size, progress=False)
    dev = torch.device("cpu")
    rows = {}
    nets = (("pretrained", pretrained),) + (() if a.pretrained_only else (("random init", random_net),))
    for name, net in nets:
        net = net.to(memory_format=torch.channels_last)
        norm = cfg.data.normalize
        knn = evaluate_knn(net, train, test, size, dev, a.precision, norm=norm)
        rows[name] = {"knn_top1": knn["top1"], "linear": {}}
        for spec in a.protocols.split(","):
            feature_norm, _, rest = spec.partition("@")
            lr, _, aug = rest.partition(":aug")
            lc = LinearConfig(lr=float(lr), feature_norm=feature_norm, augment=bool(aug), cached_views=int(aug or 0))
            t0 = time.perf_counter()
            lin, _ = linear_eval(net, train, test, size, dev, lc, a.precision, progress=False, norm=norm)
            rows[name]["linear"][spec] = {"top1": lin["top1"], "top5": lin["top5"], "lr": lc.lr,
                                          "feature_norm": feature_norm, "augment": lc.augment,
                                          "cached_views": lc.cached_views, "seconds": time.perf_counter() - t0}
    lrs = list(rows["pretrained"]["linear"])

    def title(spec: str) -> str:
        feature_norm, _, rest = spec.partition("@")
        lr, _, aug = rest.partition(":aug")
        return f"linear, {feature_norm}, lr {lr}" + (f", flip+crop ({aug} views)" if aug else "")

    print("\n| backbone | kNN top-1 | " + " | ".join(title(lr) for lr in lrs) + " |")
    print("|---|---|" + "---|" * len(lrs))
    for name, r in rows.items():
        lin = " | ".join(f"{r['linear'][lr]['top1']:.2f}% ({r['linear'][lr]['seconds']:.0f} s)" for lr in lrs)
        print(f"| {name} | {r['knn_top1']:.2f}% | {lin} |")
    out = {"checkpoint": a.checkpoint, "protocol": vars(LinearConfig()), "rows": rows,
           "command": f"python benchmarks/linear_cpu.py --checkpoint {a.checkpoint} --protocols {a.protocols} "
                      f"--precision {a.precision}" + (" --pretrained-only" if a.pretrained_only else ""),
           }
    write_results("linear_cpu", out, a.json)


if __name__ == "__main__":
    main()
