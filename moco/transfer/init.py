"""Where a transfer's network starts: ``--init`` parsed, the network built with a new classifier, and the
pretrained (or supervised) backbone loaded into it. Fine-tuning and detection start here alike."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from moco.config import Config
from moco.core.checkpoint_files import load_state_strict
from moco.core.errors import ConfigError
from moco.export.backbone import load_backbone_and_config
from moco.methods.encoder import build_network as build_with_head


def parse_init(init: str | None, checkpoint: str | Path | None) -> tuple[str, str]:
    """(kind, the checkpoint to load or '') from ``--init`` and ``--checkpoint``: ``checkpoint`` (the default
    given a checkpoint), ``random`` (the default without one) or ``supervised:CKPT``."""
    ck = str(checkpoint or "")
    if init is None:
        return ("checkpoint", ck) if ck else ("random", "")
    kind, _, path = init.partition(":")
    if kind == "supervised":
        if not path and not ck:
            raise ConfigError("--init supervised:CKPT names the supervised network's checkpoint")
        return "supervised", path or ck
    if path or kind not in ("checkpoint", "random"):
        raise ConfigError(f"--init takes checkpoint, random or supervised:CKPT, got {init!r}")
    if kind == "checkpoint" and not ck:
        raise ConfigError("--init checkpoint needs --checkpoint (or use --init random)")
    return kind, ck


def classifier(in_dim: int, num_classes: int) -> nn.Linear:
    """A new linear classifier: weights N(0, 0.01), bias 0, as the authors' linear classifier (its default
    initialisation is skipped: it would be overwritten)."""
    fc = nn.utils.skip_init(nn.Linear, in_dim, num_classes)
    fc.weight.data.normal_(mean=0.0, std=0.01)
    fc.bias.data.zero_()
    return fc


def build_network(cfg: Config, num_classes: int, backbone: nn.Module | None = None) -> nn.Module:
    """The network ``cfg.model`` describes (or ``backbone``), randomly initialised, with ``fc`` a new
    :func:`classifier` to ``num_classes``."""
    try:
        return build_with_head(cfg, lambda in_dim: classifier(in_dim, num_classes), backbone, num_classes)
    except ValueError as e:  # a torchvision:/timm:/custom: name that does not build
        raise ConfigError(str(e)) from None


def load_backbone_into(net: nn.Module, source: nn.Module, path: str) -> None:
    """Copy the backbone ``source`` (as :func:`load_backbone_and_config` returns it, ``fc`` = Identity) into
    ``net``, all but its classifier, strictly."""
    fc = net.fc
    net.fc = nn.Identity()
    try:
        load_state_strict(net, source.state_dict(), path, "backbone")
    finally:
        net.fc = fc


def init_network(cfg: Config, kind: str, ckpt: str, num_classes: int, backbone: nn.Module | None) -> nn.Module:
    """The network a transfer trains: built from ``cfg`` (the random init's weights drawn from the global
    generator, seeded with ``train.seed``) with a classifier to ``num_classes``, then, unless ``kind`` is
    random, the checkpoint's backbone loaded into it. ``backbone`` is a fresh instance of a custom network."""
    net = build_network(cfg, num_classes, backbone)
    if kind != "random":
        source, _ = load_backbone_and_config(ckpt, copy.deepcopy(backbone))
        load_backbone_into(net, source, ckpt)
    return net


def dense_network(cfg: Config, kind: str, ckpt: str, backbone: nn.Module | None) -> nn.Module:
    """The network whose stages a dense task (detection, segmentation) builds on: :func:`init_network`'s, without
    a classifier (``fc`` = Identity)."""
    network = init_network(cfg, kind, ckpt, 1, backbone)
    network.fc = nn.Identity()
    return network
