"""Backbones: torchvision-compatible ResNets (CIFAR stem, width knob, split BN) and ViTs (MoCo v3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from moco.models.generic import Encoder, named_backbone, split_batchnorm
from moco.models.resnet import ARCHS, ResNet, SplitBatchNorm, build_resnet
from moco.models.resnet import feature_dim as _resnet_feature_dim
from moco.models.vit import VITS, ViT, build_vit

if TYPE_CHECKING:
    from moco.schema import Config


def is_named(arch: str) -> bool:
    """``torchvision:NAME``, ``timm:NAME`` or ``custom:NAME`` (a backbone given to ``pretrain``), not one of
    our ResNets or ViTs."""
    return ":" in arch


def build_backbone(cfg: Config, num_classes: int | None = None) -> nn.Module:
    """The backbone ``cfg.model`` describes (its ``fc`` a Linear to ``num_classes``, default model.dim, for
    ResNets; Identity for ViTs; no classifier for ``torchvision:NAME`` / ``timm:NAME``, whose BatchNorm2d
    layers become ``model.bn_splits`` groups). ViTs need ``cfg.data.image_size`` for their position embedding."""
    m = cfg.model
    if is_named(m.arch):
        return split_batchnorm(named_backbone(m.arch), m.bn_splits)
    if m.arch in VITS:
        return build_vit(m.arch, cfg.data.image_size, m.patch_size, m.stop_grad_conv1)
    return build_resnet(m.arch, m.width, m.cifar_stem, num_classes=num_classes or m.dim, bn_splits=m.bn_splits)


def feature_dim(model: nn.Module) -> int:
    """Dimension of ``forward_features``: 512 for ResNet-18, 2048 for ResNet-50, the hidden dim for a ViT."""
    if isinstance(model, ViT):
        return model.hidden_dim
    return _resnet_feature_dim(model)


__all__ = ["ARCHS", "VITS", "Encoder", "ResNet", "SplitBatchNorm", "ViT", "build_backbone", "build_resnet",
           "build_vit", "feature_dim", "is_named"]
