"""Load a pretrained backbone (query encoder, no projection head) from a checkpoint.

Three layouts are understood:

* momentum-contrast checkpoints (``format``, ``config``, ``model`` with ``encoder_q.*``);
* the authors' ``checkpoint_XXXX.pth.tar`` (``state_dict`` with ``module.encoder_q.*`` keys), whose
  architecture is inferred from the tensor shapes;
* a plain torchvision ResNet state dict (e.g. an exported file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.config import Config, from_dict
from moco.core.checkpoint_files import FORMAT, load_checkpoint, load_state_strict
from moco.core.errors import CheckpointError
from moco.methods.encoder import build_encoder
from moco.models import is_named
from moco.models.generic import Encoder, named_backbone
from moco.models.resnet import ARCHS, ResNet, build_resnet
from moco.models.vit import VITS, ViT, build_vit

PREFIXES = ("module.encoder_q.", "encoder_q.", "module.")


def backbone_state_dict(model_state: dict[str, torch.Tensor], prefix: str = "encoder_q.") -> dict[str, torch.Tensor]:
    """The backbone weights under ``prefix`` with the prefix and the ``fc`` head removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in model_state.items() if k.startswith(prefix) and not k[n:].startswith("fc.")}


def infer_resnet(state: dict[str, torch.Tensor]) -> tuple[str, int, bool]:
    """(arch, width, cifar_stem) of a torchvision-style ResNet state dict, from its keys and shapes."""
    if "conv1.weight" not in state:
        raise CheckpointError("no conv1.weight: not a ResNet backbone")
    conv1 = state["conv1.weight"]
    width, cifar_stem = conv1.shape[0], conv1.shape[-1] == 3
    blocks = []
    for i in range(1, 5):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        blocks.append(len(ids))
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    for name, (block, layers, _, wpg) in ARCHS.items():
        if layers == blocks and (block.expansion == 4) == bottleneck:
            if bottleneck:
                mid = state["layer1.0.conv1.weight"].shape[0]
                if mid != width * wpg // 64:
                    continue
            return name, width, cifar_stem
    raise CheckpointError(f"unrecognised ResNet layout: blocks per stage {blocks}, bottleneck={bottleneck}")


def _strip(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Backbone weights from an authors' or plain state dict: known prefixes and the fc head removed."""
    for p in PREFIXES:
        if any(k.startswith(p) for k in state):
            return backbone_state_dict(state, p)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_backbone_and_config(path: str | Path, backbone: nn.Module | None = None) -> tuple[nn.Module, Config]:
    """The query backbone (``fc`` = Identity, plain BatchNorm, eval mode) and a config describing it.

    ``torchvision:NAME`` and ``timm:NAME`` backbones are rebuilt by name (classifier = Identity); a backbone
    that was given to ``pretrain(backbone=...)`` (``custom:NAME``) is loaded into ``backbone``, a fresh
    instance of the same network. For foreign checkpoints the config is the defaults with the inferred
    architecture, so that evaluation commands know the image size (32 for a CIFAR stem, else 224).
    """
    path = Path(path)
    ck = load_checkpoint(path)
    if ck.get("format") == FORMAT and is_named(ck["config"]["model"]["arch"]):
        return _load_named(ck, path, backbone)
    if ck.get("format") == FORMAT:
        cfg = from_dict(ck["config"])
        state = backbone_state_dict(ck["model"])
    else:
        raw = ck.get("state_dict", ck.get("model", ck))
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(f"{path} is neither a momentum-contrast checkpoint nor a ResNet state dict")
        state = _strip(raw)
        arch, width, cifar_stem = infer_resnet(state)
        cfg = Config()
        cfg.model.arch, cfg.model.width, cfg.model.cifar_stem = arch, width, cifar_stem
        cfg.data.image_size = 32 if cifar_stem else 224
    if not state:
        raise CheckpointError(f"{path} holds no encoder_q weights")
    m = cfg.model
    net: ResNet | ViT = (build_vit(m.arch, cfg.data.image_size, m.patch_size) if m.arch in VITS
                         else build_resnet(m.arch, m.width, m.cifar_stem))
    net.fc = nn.Identity()
    load_state_strict(net, state, path, "backbone")
    return net.eval(), cfg


def _load_named(ck: dict[str, Any], path: Path, backbone: nn.Module | None) -> tuple[nn.Module, Config]:
    cfg = from_dict(ck["config"])
    arch = cfg.model.arch
    if backbone is None:
        try:
            backbone = named_backbone(arch)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    state = backbone_state_dict(ck["model"], "encoder_q.backbone.")
    load_state_strict(backbone, state, path, "backbone")
    return Encoder(backbone.eval(), nn.Identity()).eval(), cfg


def load_encoder_and_config(path: str | Path, backbone: nn.Module | None = None) -> tuple[nn.Module, Config]:
    """The whole query encoder of a momentum-contrast checkpoint: the backbone with its projection head as
    ``fc`` (plain BatchNorm, eval mode), for scoring the head's output (``moco knn --features head``)."""
    path = Path(path)
    ck = load_checkpoint(path)
    if ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a momentum-contrast checkpoint: only those keep the projection head")
    cfg = from_dict(ck["config"])
    if is_named(cfg.model.arch) and backbone is None:
        try:
            backbone = named_backbone(cfg.model.arch)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    cfg.model.bn_splits = 1  # evaluation: one BatchNorm over the batch (SplitBatchNorm is plain BN in eval)
    encoder = build_encoder(cfg, backbone)
    state = {k[len("encoder_q."):]: v for k, v in ck["model"].items() if k.startswith("encoder_q.")}
    load_state_strict(encoder, state, path, "query encoder")
    return encoder.eval(), cfg


def load_backbone(path: str | Path, backbone: nn.Module | None = None) -> nn.Module:
    """``moco.load_backbone(path)``: the pretrained query backbone (``encoder_q`` without its projection head:
    ``fc`` is Identity), with plain BatchNorm (pretraining's SplitBatchNorm folded back), on the CPU, in **eval
    mode** (call ``.train()`` to fine-tune). ``backbone(images)`` takes images normalised as the run's
    ``data.normalize`` says (ImageNet's mean and std by default), at the run's ``data.image_size``, and returns
    the pooled features (512-d for ResNet-18 at width 64, 2048-d for ResNet-50), **not L2-normalised**: normalise
    them for cosine similarity (``moco.knn_accuracy`` does so itself).

    ``path``: a momentum-contrast checkpoint (a pretraining, fine-tuning, detection or segmentation run's: the
    backbone it trained), the authors' ``checkpoint_XXXX.pth.tar``, or a torchvision ResNet state dict. Pass
    ``backbone`` (a fresh instance of the same network) for a backbone that was given to ``pretrain``."""
    return load_backbone_and_config(path, backbone)[0]
