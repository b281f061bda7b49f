"""Contrastive methods. ``build_moco`` turns a :class:`moco.config.Config` into a model.

Three dictionaries share one interface, ``model(im_q, im_k, generator=, index=) -> (loss, logits)``
with the positive logit first, and all keep the trained backbone as ``encoder_q``: MoCo's queue and
momentum encoder (``moco``), the current batch (``end_to_end``) and a memory bank (``memory_bank``).
"""

from __future__ import annotations

from moco.config import Config
from moco.methods.end_to_end import EndToEnd, batch_nce
from moco.methods.memory_bank import MemoryBank, update_bank
from moco.methods.moco import MoCo, batch_shuffle, batch_unshuffle, build_head, info_nce, update_momentum
from moco.models.resnet import ResNet, build_resnet, feature_dim


def build_encoder(cfg: Config) -> ResNet:
    """The backbone with its projection head as ``fc`` (fc -> dim for v1, MLP for v2)."""
    m = cfg.model
    enc = build_resnet(m.arch, m.width, m.cifar_stem, num_classes=m.dim, bn_splits=m.bn_splits)
    enc.fc = build_head(feature_dim(enc), m.dim, mlp=m.head == "mlp")
    return enc


def build_moco(cfg: Config, n_images: int = 0) -> MoCo | EndToEnd | MemoryBank:
    """The model ``cfg.method.dictionary`` names; a memory bank needs ``n_images`` (one entry per image)."""
    me = cfg.method
    if me.dictionary == "end_to_end":
        return EndToEnd(build_encoder(cfg), me.T, me.shuffle_bn)
    if me.dictionary == "memory_bank":
        if n_images < 1:
            raise ValueError("method.dictionary=memory_bank needs the number of training images")
        return MemoryBank(build_encoder(cfg), cfg.model.dim, n_images, me.K, me.T, me.bank_m)
    return MoCo(build_encoder(cfg), cfg.model.dim, me.K, me.m, me.T, me.symmetric, me.shuffle_bn)


__all__ = [
    "EndToEnd", "MemoryBank", "MoCo", "batch_nce", "batch_shuffle", "batch_unshuffle", "build_encoder", "build_head",
    "build_moco", "info_nce", "update_bank", "update_momentum",
]
