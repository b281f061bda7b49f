"""ResNet backbones with torchvision parameter names, a CIFAR stem and a width knob.

The network is torchvision's own ``ResNet`` class (same blocks, same module
names), built by a small constructor that can also

* use the CIFAR stem of the MoCo CIFAR-10 demo (3x3 stride-1 ``conv1``, no max-pool),
* scale every stage's width (``width=16`` is a quarter-width ResNet-18 for CPUs),
* use split BatchNorm for single-device shuffle BN.

With ``width=64`` and the ImageNet stem, ``encoder.state_dict()`` minus ``fc.*``
loads with ``strict=True`` into ``torchvision.models.resnetXX()``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv

# arch -> (block, layers, groups, width_per_group)
ARCHS: dict[str, tuple[type[nn.Module], list[int], int, int]] = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (tv.Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (tv.Bottleneck, [3, 8, 36, 3], 1, 64),
    "wide_resnet50_2": (tv.Bottleneck, [3, 4, 6, 3], 1, 128),
    "wide_resnet101_2": (tv.Bottleneck, [3, 4, 23, 3], 1, 128),
}


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are computed in ``num_splits`` groups.

    Simulates the per-GPU BatchNorm of multi-GPU MoCo on one device (the demo's
    SplitBatchNorm): the batch is cut into ``num_splits`` contiguous chunks, each
    normalised with its own mean and variance. Running statistics are the mean of
    the groups' updates; evaluation uses them as plain BN does. Chunking along the
    batch dimension keeps channels_last tensors as views (no layout copy).
    """

    def __init__(self, num_features: int, num_splits: int, **kw: Any) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits <= 1:
            return super().forward(x)
        chunks = x.chunk(self.num_splits)
        mean = self.running_mean.clone()
        var = self.running_var.clone()
        out = []
        means, vars_ = [], []
        for c in chunks:
            rm, rv = mean.clone(), var.clone()
            out.append(
                nn.functional.batch_norm(c, rm, rv, self.weight, self.bias, True, self.momentum, self.eps)
            )
            means.append(rm)
            vars_.append(rv)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(vars_).mean(0))
            self.num_batches_tracked.add_(1)
        return torch.cat(out)


class ResNet(tv.ResNet):
    """torchvision ResNet with ``forward_features`` (pooled features, before ``fc``)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def build_resnet(
    arch: str = "resnet18",
    width: int = 64,
    cifar_stem: bool = False,
    num_classes: int = 1000,
    bn_splits: int = 1,
) -> ResNet:
    """Build a torchvision-compatible ResNet.

    ``width`` is the channel count of the first stage (64 in torchvision); all
    stages scale with it. ``bn_splits > 1`` uses :class:`SplitBatchNorm`.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    block, layers, groups, width_per_group = ARCHS[arch]
    norm_layer: Callable[..., nn.Module] = (
        partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    )
    model = ResNet.__new__(ResNet)
    nn.Module.__init__(model)
    model._norm_layer = norm_layer
    model.inplanes = width
    model.dilation = 1
    model.groups = groups
    # torchvision's Bottleneck width is planes * width_per_group / 64; keep the ratio.
    model.base_width = width_per_group
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    model.bn1 = norm_layer(width)
    model.relu = nn.ReLU(inplace=True)
    model.layer1 = model._make_layer(block, width, layers[0])
    model.layer2 = model._make_layer(block, width * 2, layers[1], stride=2)
    model.layer3 = model._make_layer(block, width * 4, layers[2], stride=2)
    model.layer4 = model._make_layer(block, width * 8, layers[3], stride=2)
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.fc = nn.Linear(width * 8 * block.expansion, num_classes)
    # torchvision's initialisation.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return model


def feature_dim(model: ResNet) -> int:
    """Dimension of ``forward_features`` (512 for ResNet-18, 2048 for ResNet-50)."""
    layer4 = model.layer4[-1]
    last_bn = layer4.bn3 if hasattr(layer4, "bn3") else layer4.bn2
    return last_bn.num_features
