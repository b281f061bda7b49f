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
from moco.methods.moco_v3 import MoCoV3, build_mlp
from moco.models import build_backbone, feature_dim
from moco.models.resnet import ResNet
from moco.models.vit import VITS, ViT


def mlp_hidden(cfg: Config) -> int | None:
    """Hidden width of the MLP heads: ``model.mlp_dim``, or by default 4096 for v3 and the feature dim for v2."""
    return cfg.model.mlp_dim or (4096 if cfg.model.head == "v3" else None)


def build_encoder(cfg: Config) -> ResNet | ViT:
    """The backbone with its projection head as ``fc``: fc -> dim (v1), MLP (v2), or v3's BN MLP
    (2 layers after a ResNet, 3 after a ViT)."""
    m = cfg.model
    enc = build_backbone(cfg)
    if m.head == "v3":
        enc.fc = build_mlp(3 if m.arch in VITS else 2, feature_dim(enc), mlp_hidden(cfg), m.dim)
    else:
        enc.fc = build_head(feature_dim(enc), m.dim, mlp=m.head == "mlp", hidden=mlp_hidden(cfg))
    return enc


def build_moco(cfg: Config, n_images: int = 0) -> MoCo | EndToEnd | MemoryBank | MoCoV3:
    """The model ``cfg.method.dictionary`` names; a memory bank needs ``n_images`` (one entry per image)."""
    me = cfg.method
    if me.dictionary == "v3":  # the predictor: 2 layers, no BN after the last
        return MoCoV3(build_encoder(cfg), build_mlp(2, cfg.model.dim, mlp_hidden(cfg), cfg.model.dim, False),
                      me.T, me.m)
    if me.dictionary == "end_to_end":
        return EndToEnd(build_encoder(cfg), me.T, me.shuffle_bn)
    if me.dictionary == "memory_bank":  # MemoryBank refuses n_images < 1
        return MemoryBank(build_encoder(cfg), cfg.model.dim, n_images, me.K, me.T, me.bank_m)
    return MoCo(build_encoder(cfg), cfg.model.dim, me.K, me.m, me.T, me.symmetric, me.shuffle_bn)


__all__ = [
    "EndToEnd", "MemoryBank", "MoCo", "MoCoV3", "batch_nce", "batch_shuffle", "batch_unshuffle", "build_encoder",
    "build_head", "build_mlp", "build_moco", "info_nce", "update_bank", "update_momentum",
]
