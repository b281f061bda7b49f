"""Contrastive methods. ``build_moco`` turns a :class:`moco.config.Config` into a model."""

from __future__ import annotations

from moco.config import Config
from moco.methods.moco import MoCo, batch_shuffle, batch_unshuffle, build_head, info_nce, update_momentum
from moco.models.resnet import ResNet, build_resnet, feature_dim


def build_encoder(cfg: Config) -> ResNet:
    """The backbone with its projection head as ``fc`` (fc -> dim for v1, MLP for v2)."""
    m = cfg.model
    enc = build_resnet(m.arch, m.width, m.cifar_stem, num_classes=m.dim, bn_splits=m.bn_splits)
    enc.fc = build_head(feature_dim(enc), m.dim, mlp=m.head == "mlp")
    return enc


def build_moco(cfg: Config) -> MoCo:
    me = cfg.method
    return MoCo(build_encoder(cfg), cfg.model.dim, me.K, me.m, me.T, me.symmetric, me.shuffle_bn)


__all__ = [
    "MoCo", "batch_shuffle", "batch_unshuffle", "build_encoder", "build_head", "build_moco", "info_nce",
    "update_momentum",
]
