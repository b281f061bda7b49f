"""Any network as a backbone: torchvision models by name (``torchvision:NAME``), timm models (``timm:NAME``,
an optional extra) or a user's own module.

A backbone maps images to a feature vector, or to a feature map (N, C, H, W) or tokens (N, L, C) that
:func:`pool` averages. A classification model's classifier is replaced by ``nn.Identity`` so that its
state dict loads strictly into the same constructor once the user removes the classifier there too.
"""

from __future__ import annotations

import torch
from torch import nn

from moco.models.resnet import SplitBatchNorm

CLASSIFIER_ATTRS = ("fc", "classifier", "heads", "head")  # where torchvision and timm keep the classifier


def pool(f: torch.Tensor) -> torch.Tensor:
    """(N, C) features from a backbone's output: feature maps are averaged over space, tokens over length."""
    if f.ndim == 4:
        return f.mean(dim=(2, 3))
    if f.ndim == 3:
        return f.mean(dim=1)
    return f.flatten(1)


def remove_classifier(model: nn.Module) -> nn.Module:
    """Replace the classifier (``fc``, ``classifier``, ``heads`` or ``head``) by ``nn.Identity``, in place."""
    for attr in CLASSIFIER_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model
    raise ValueError(f"{type(model).__name__} has none of {', '.join(CLASSIFIER_ATTRS)}: no classifier to replace")


@torch.no_grad()
def infer_feature_dim(backbone: nn.Module, image_size: int = 32) -> int:
    """The width of ``pool(backbone(x))``, from one forward pass of two blank images in eval mode (running
    statistics are not touched)."""
    was_training = backbone.training
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    backbone.eval()
    try:
        return pool(backbone(torch.zeros(2, 3, image_size, image_size, device=device))).shape[1]
    finally:
        backbone.train(was_training)


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Every ``BatchNorm2d`` in ``module`` becomes a :class:`SplitBatchNorm` of ``splits`` groups (same
    parameters and buffers, so state dict keys stay the same); in place, returns ``module``."""
    if splits <= 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = SplitBatchNorm(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                affine=child.affine, track_running_stats=child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            split_batchnorm(child, splits)
    return module


def custom_name(backbone: nn.Module) -> str:
    """``custom:MODULE.CLASS`` for a user's backbone, so that the CLI and ``load_backbone`` can rebuild it
    when its class is importable and takes no arguments."""
    cls = type(backbone)
    return f"custom:{cls.__module__}.{cls.__qualname__}"


def named_backbone(arch: str) -> nn.Module:
    """``torchvision:NAME`` (any classification model of ``torchvision.models``) or ``timm:NAME``, randomly
    initialised, with its classifier replaced by ``nn.Identity``; or ``custom:MODULE.CLASS``, a user's
    network class (importable, no arguments) instantiated."""
    source, _, name = arch.partition(":")
    if source == "custom":
        import importlib

        module, _, cls = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), cls)()
        except (ImportError, AttributeError, ValueError, TypeError) as e:
            raise ValueError(f"model.arch {arch!r}: cannot build {name} ({e}); pass the network itself "
                             "(pretrain(backbone=...), load_backbone(path, backbone=...))") from None
    if source == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"torchvision.models has no classification model {name!r}")
        return remove_classifier(torchvision.models.get_model(name, weights=None))
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise ValueError(f"model.arch {arch!r} needs timm: pip install 'momentum-contrast[timm]'") from None
        return timm.create_model(name, pretrained=False, num_classes=0)  # num_classes=0: no classifier
    raise ValueError(f"unknown backbone source {source!r} in {arch!r}; use torchvision:NAME or timm:NAME")


class Encoder(nn.Module):
    """A backbone with a projection head: ``fc(pool(backbone(x)))``. ``forward_features`` is the pooled
    backbone output that the kNN monitor, linear probes and exports use."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.fc = backbone, head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
