"""Load the query encoder's backbone (no projection head) from a momentum-contrast checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from moco.config import Config, from_dict
from moco.models.resnet import ResNet, build_resnet
from moco.training.checkpoint import CheckpointError, load_checkpoint, load_state_strict, require_moco_checkpoint


def backbone_state_dict(model_state: dict[str, torch.Tensor], prefix: str = "encoder_q.") -> dict[str, torch.Tensor]:
    """The backbone weights under ``prefix`` with the prefix and the ``fc`` head removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in model_state.items() if k.startswith(prefix) and not k[n:].startswith("fc.")}


def load_backbone_and_config(path: str | Path) -> tuple[ResNet, Config]:
    """The query backbone (``fc`` replaced by Identity, plain BatchNorm, eval mode) and the run's config."""
    path = Path(path)
    ck = require_moco_checkpoint(load_checkpoint(path), path)
    cfg = from_dict(ck["config"])
    m = cfg.model
    net = build_resnet(m.arch, m.width, m.cifar_stem)
    net.fc = nn.Identity()
    state = backbone_state_dict(ck["model"])
    if not state:
        raise CheckpointError(f"{path} holds no encoder_q weights")
    load_state_strict(net, state, path, "backbone")
    return net.eval(), cfg


def load_backbone(path: str | Path) -> ResNet:
    """``moco.load_backbone(path)``: the pretrained backbone, ready for ``forward_features`` or fine-tuning."""
    return load_backbone_and_config(path)[0]
