"""The whole moco job (checkpoints, resume, kNN monitor) on a network defined here.

    python examples/custom_backbone.py --data ../shared/datasets/cifar10 --out runs/custom --epochs 2
"""

import argparse

import torch
from torch import nn

import moco


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks; returns a feature map, which MoCo pools."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, c = [], 3
        for i in range(4):
            layers += [nn.Conv2d(c, width * 2**i, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(width * 2**i), nn.ReLU(inplace=True)]
            c = width * 2**i
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="a folder of images, or one with train/ and test/")
    p.add_argument("--out", default="runs/custom")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()

    cfg = moco.Config.from_preset("cifar10-cpu", {"optim.epochs": args.epochs, "data.max_images": args.max_images,
                                                  "optim.batch_size": args.batch_size})
    result = moco.pretrain(cfg, args.data, args.out, backbone=SmallCNN(), resume="auto")
    print(f"{result.epoch} epochs, kNN top-1 {result.metrics.get('knn_top1', float('nan')):.2f}%")

    backbone = moco.load_backbone(f"{args.out}/checkpoint_last.pt", backbone=SmallCNN())
    with torch.no_grad():
        print("features:", tuple(backbone(torch.rand(4, 3, 32, 32)).shape))


if __name__ == "__main__":
    main()
