"""The encoder every dictionary trains: a backbone with its projection head as ``fc`` (registry ``HEADS``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from moco.models import build_backbone, feature_dim, is_named
from moco.models.generic import Encoder, infer_feature_dim, split_batchnorm
from moco.models.vit import VITS
from moco.schema import Config


def build_head(in_dim: int, dim: int, mlp: bool, hidden: int | None = None) -> nn.Module:
    """v1: fc -> dim. v2: fc(in, hidden) - ReLU - fc(hidden, dim), hidden = in by default (the authors')."""
    if mlp:
        hidden = hidden or in_dim
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
    return nn.Linear(in_dim, dim)


def build_mlp(num_layers: int, in_dim: int, mlp_dim: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP: Linear(no bias) - BN - ReLU between layers; a BN without affine after the last if
    ``last_bn``."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d1 = in_dim if i == 0 else mlp_dim
        d2 = out_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


def mlp_hidden(cfg: Config) -> int | None:
    """Hidden width of the MLP heads: ``model.mlp_dim``, or by default 4096 for v3 and the feature dim for v2."""
    return cfg.model.mlp_dim or (4096 if cfg.model.head == "v3" else None)


FEATURES = ("backbone", "head")
"""What kNN and embeddings can score: ``backbone`` = the pooled backbone features (``forward_features``), what
transfer uses; ``head`` = the projection head's output (``fc`` on them), what the authors' CIFAR-10 demo
monitors. Both come from the same forward pass."""

HEADS: dict[str, Callable[[Config, int], nn.Module]] = {
    "linear": lambda cfg, in_dim: build_head(in_dim, cfg.model.dim, mlp=False),
    "mlp": lambda cfg, in_dim: build_head(in_dim, cfg.model.dim, mlp=True, hidden=mlp_hidden(cfg)),
    # v3's projector: 2 layers after a ResNet, 3 after a ViT
    "v3": lambda cfg, in_dim: build_mlp(3 if cfg.model.arch in VITS else 2, in_dim, mlp_hidden(cfg), cfg.model.dim),
}
"""``model.head`` -> a function (config, backbone feature dim) -> projection head."""


def build_network(cfg: Config, head: Callable[[int], nn.Module], backbone: nn.Module | None = None,
                  out_dim: int | None = None) -> nn.Module:
    """The backbone ``cfg.model`` describes (or ``backbone``) with ``head(its feature width)`` as ``fc``: the one
    network builder of pretraining (a projection head) and transfer (a classifier).

    Our ResNets and ViTs carry ``fc`` themselves; a ResNet is built with an ``fc`` of ``out_dim`` outputs
    (default ``model.dim``) that ``head`` then replaces, so that the random draws of its layers stay those of
    earlier versions. ``torchvision:NAME``, ``timm:NAME`` and a given ``backbone`` (any module mapping images to
    features or feature maps) are wrapped in an :class:`Encoder`, their feature width found by one dry forward
    pass at ``data.image_size``, their BatchNorm2d layers made ``model.bn_splits`` SplitBatchNorm groups.
    """
    if backbone is None and not is_named(cfg.model.arch):
        net = build_backbone(cfg, out_dim)
        net.fc = head(feature_dim(net))
        return net
    if backbone is None:
        backbone = build_backbone(cfg)
    else:
        split_batchnorm(backbone, cfg.model.bn_splits)
    return Encoder(backbone, head(infer_feature_dim(backbone, cfg.data.image_size)))


def build_encoder(cfg: Config, backbone: nn.Module | None = None) -> nn.Module:
    """The backbone (``backbone``, or the one ``cfg.model`` describes) with the projection head ``model.head``
    names as ``fc`` (:func:`build_network`)."""
    return build_network(cfg, lambda in_dim: HEADS[cfg.model.head](cfg, in_dim), backbone)
