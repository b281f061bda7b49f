"""The supervised objective that fine-tuning trains: a network whose ``fc`` is a new linear classifier,
under cross-entropy; and what every transfer model shares (:class:`Transfer`).

A transfer model keeps the trained network as ``encoder_q``, as the contrastive methods do, so that a
checkpoint's ``encoder_q.*`` minus ``fc`` is the backbone for ``moco export`` and the evaluations alike.
``encoder_q`` is one of our ResNets or ViTs, or an :class:`~moco.models.generic.Encoder`, with ``fc`` mapping
the pooled features to the classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE, HEAD = "backbone", "head"


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm layer of ``module`` to eval mode (running statistics used, not updated), its affine
    parameters frozen: Detectron2's FrozenBatchNorm, in place."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


class Transfer(nn.Module):
    """What the transfer objectives share: the pretrained network as ``encoder_q``, its BatchNorm trained
    (``bn="train"``: batch statistics, affine parameters learnt) or frozen (``"frozen"``: the statistics and
    affine parameters kept as they were, also in train mode)."""

    def __init__(self, network: nn.Module, bn: str = "train") -> None:
        super().__init__()
        self.encoder_q, self.bn = network, bn
        if bn == "frozen":
            freeze_batchnorm(network)

    def train(self, mode: bool = True) -> Transfer:
        super().train(mode)
        if self.bn == "frozen":
            freeze_batchnorm(self.encoder_q)
        return self


class Classifier(Transfer):
    """``encoder_q`` (a network with ``forward_features`` and a linear ``fc`` to the classes) trained with
    cross-entropy, its BatchNorm trained or frozen (:class:`Transfer`)."""

    def __init__(self, network: nn.Module, bn: str = "train", label_smoothing: float = 0.0) -> None:
        if not isinstance(getattr(network, "fc", None), nn.Linear):
            raise ValueError("the network's fc must be the linear classifier")
        super().__init__(network, bn)
        self.label_smoothing = label_smoothing

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy in fp32, the logits) of a batch of images and their labels."""
        logits = self.encoder_q(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing), logits

    def param_groups(self, backbone_lr: float) -> list[dict]:
        """The optimiser's groups: the backbone at ``backbone_lr`` times the lr (``lr_scale``), the new classifier
        at the lr; weight decay on both, as the supervised recipes do. Frozen parameters are left out."""
        head = list(self.encoder_q.fc.parameters())
        ids = {id(p) for p in head}
        return lr_groups([p for p in self.encoder_q.parameters() if id(p) not in ids], head, backbone_lr)


def lr_groups(backbone: list[nn.Parameter], rest: list[nn.Parameter], backbone_lr: float) -> list[dict]:
    """Optimiser groups for transfer: ``backbone`` at ``backbone_lr`` times the lr (``lr_scale``), ``rest`` (what
    is new: a classifier, a detector's heads) at the lr; frozen parameters left out."""
    return [{"params": [p for p in backbone if p.requires_grad], "lr_scale": backbone_lr, "name": BACKBONE},
            {"params": [p for p in rest if p.requires_grad], "lr_scale": 1.0, "name": HEAD}]


def hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which predictions are right: the top logit is the label (a classifier's training accuracy)."""
    return logits.argmax(1) == labels
