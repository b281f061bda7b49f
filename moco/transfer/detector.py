"""The detector that ``moco detect`` trains: torchvision's Faster R-CNN (Mask R-CNN when the data has masks)
with a feature pyramid over a pretrained ResNet's stages.

:class:`Detector` keeps the backbone network as ``encoder_q`` (:class:`~moco.transfer.classifier.Transfer`),
sharing its modules with the pyramid's trunk: the backbone is trained in place, and a checkpoint's
``encoder_q.*`` is the fine-tuned backbone for ``moco export``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from moco.schema import DetectConfig
from moco.transfer.classifier import Transfer, lr_groups

STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet_trunk(network: nn.Module) -> nn.Module:
    """The module holding a ResNet's stem and ``layer1``-``layer4`` (the network itself, or the ``backbone``
    of a ``torchvision:`` encoder); ValueError for other networks (ViTs have no stages to build a pyramid on)."""
    for m in (network, getattr(network, "backbone", None)):
        if m is not None and all(isinstance(getattr(m, s, None), nn.Module) for s in ("conv1", *STAGES)):
            return m
    raise ValueError(f"{type(network).__name__} is not a ResNet (conv1, layer1-layer4): the detector builds its "
                     "feature pyramid on ResNet stages")


def stages(trunk: nn.Module, x: torch.Tensor, upto: int = 4) -> list[torch.Tensor]:
    """The outputs of ``trunk``'s stages 1..``upto`` for images ``x``: the stem (conv1, bn1, relu, maxpool, in
    the ResNet's order, whatever order the modules were registered in), then layer1, layer2, ..."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    out = []
    for s in STAGES[:upto]:
        x = getattr(trunk, s)(x)
        out.append(x)
    return out


def stage_shapes(trunk: nn.Module, side: int = 64) -> list[tuple[int, int]]:
    """(channels, stride) of each of ``trunk``'s four stages, from one forward pass of a ``side``-px image."""
    was = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            p = next(trunk.parameters())
            out = stages(trunk, torch.zeros(1, 3, side, side, device=p.device, dtype=p.dtype))
    finally:
        trunk.train(was)
    return [(o.shape[1], side // o.shape[-1]) for o in out]


class PyramidBackbone(nn.Module):
    """A ResNet's stages ``levels`` (1-4) under torchvision's FeaturePyramidNetwork of ``width`` channels, with
    a max-pooled extra level: the backbone torchvision's detectors take (``out_channels``)."""

    def __init__(self, trunk: nn.Module, levels: Sequence[int], channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.trunk, self.levels, self.out_channels = trunk, list(levels), width
        self.fpn = FeaturePyramidNetwork(list(channels), width, extra_blocks=LastLevelMaxPool())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = stages(self.trunk, x, max(self.levels))
        return self.fpn(OrderedDict((str(n), out[i - 1]) for n, i in enumerate(self.levels)))


def _hits_of_roi_heads(heads: nn.Module) -> None:
    """Let ``heads`` (torchvision's RoIHeads) keep the box classifier's logits and the sampled RoIs' labels of
    its last training pass, for the training accuracy; its computation is unchanged."""
    select = type(heads).select_training_samples

    def select_and_keep(proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> Any:
        out = select(heads, proposals, targets)
        heads.last_labels = torch.cat(out[2])
        return out

    heads.select_training_samples = select_and_keep
    heads.box_predictor.register_forward_hook(lambda _m, _i, out: setattr(heads, "last_logits", out[0]))


class Detector(Transfer):
    """A torchvision detector whose backbone body is ``encoder_q``'s modules, the backbone's BatchNorm trained
    or frozen (Detectron2's FrozenBN; :class:`~moco.transfer.classifier.Transfer`)."""

    def __init__(self, network: nn.Module, detector: FasterRCNN, bn: str = "train") -> None:
        super().__init__(network, bn)
        self.detector = detector
        _hits_of_roi_heads(detector.roi_heads)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sum of the detector's losses in fp32, which sampled RoIs the box classifier got right)."""
        losses = self.detector(images, targets)
        loss = sum(v.float() for v in losses.values())
        heads = self.detector.roi_heads
        hits = heads.last_logits.argmax(1) == heads.last_labels
        return loss, hits

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections (boxes in each image's own pixels, labels, scores[, masks]) in eval mode; the modes are
        restored after."""
        was = self.training
        self.eval()
        try:
            return self.detector(images)
        finally:
            self.train(was)

    def param_groups(self, backbone_lr: float) -> list[dict]:
        """The backbone at ``backbone_lr`` times the lr (``lr_scale``); the pyramid and the heads at the lr."""
        ids = {id(p) for p in self.encoder_q.parameters()}
        return lr_groups(list(self.encoder_q.parameters()),
                         [p for p in self.detector.parameters() if id(p) not in ids], backbone_lr)


class KeypointPredictor(KeypointRCNNPredictor):
    """torchvision's keypoint predictor with its heatmaps made contiguous: torchvision's keypoint loss views
    them flat, which a channels_last network's output does not allow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous()


def anchor_sizes(strides: Sequence[int], scale: float) -> tuple[tuple[float, ...], ...]:
    """Two anchor sides per pyramid level: ``scale`` and ``scale`` x sqrt(2) strides."""
    return tuple((scale * s, round(scale * s * math.sqrt(2), 1)) for s in strides)


def build_detector(
    network: nn.Module, num_classes: int, d: DetectConfig, min_size: Sequence[int], max_size: int,
    mean: Sequence[float], std: Sequence[float], masks: bool = False, bn: str = "train", keypoints: int = 0,
) -> Detector:
    """Faster R-CNN (Mask R-CNN with ``masks``; Keypoint R-CNN for ``keypoints`` keypoints an object, with
    ``d.keypoint_head``) for ``num_classes`` categories (plus the background) on
    ``network``'s ResNet stages ``d.levels`` (default: those of stride 2 or more), with an FPN of
    ``d.fpn_channels`` and a max-pooled extra level; images resized to a shorter side of ``min_size`` (one drawn
    per image when training, the last at test) and a longer side of at most ``max_size``, normalised with
    ``mean`` and ``std``."""
    trunk = resnet_trunk(network)
    shapes = stage_shapes(trunk)
    levels = list(d.levels) or [i + 1 for i, (_, s) in enumerate(shapes) if s >= 2]
    chans = [shapes[i - 1][0] for i in levels]
    width = d.fpn_channels or min(256, max(chans[-1] // 2, 16))
    body = PyramidBackbone(trunk, levels, chans, width)
    head = d.box_head_dim or 4 * width
    strides = [shapes[i - 1][1] for i in levels]
    names = [str(n) for n in range(len(levels))]
    anchors = AnchorGenerator(anchor_sizes([*strides, strides[-1] * 2], d.anchor_scale),
                              (tuple(d.anchor_ratios),) * (len(levels) + 1))
    kw: dict[str, Any] = dict(
        min_size=tuple(min_size), max_size=max_size, image_mean=list(mean), image_std=list(std),
        rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(names, 7, d.roi_sampling),
        box_head=TwoMLPHead(width * 7 * 7, head), box_predictor=FastRCNNPredictor(head, num_classes + 1),
        box_batch_size_per_image=d.rois_per_image, rpn_batch_size_per_image=d.rpn_per_image,
        rpn_post_nms_top_n_train=d.rpn_post_nms,
    )
    if keypoints:
        det: FasterRCNN = KeypointRCNN(
            body, keypoint_roi_pool=MultiScaleRoIAlign(names, 14, d.roi_sampling),
            keypoint_head=KeypointRCNNHeads(width, list(d.keypoint_head)),
            keypoint_predictor=KeypointPredictor(d.keypoint_head[-1], keypoints), **kw)
    elif masks:
        det = MaskRCNN(body, mask_roi_pool=MultiScaleRoIAlign(names, 14, d.roi_sampling),
                                   mask_head=MaskRCNNHeads(width, [width] * 4, 1),
                                   mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1), **kw)
    else:
        det = FasterRCNN(body, **kw)
    return Detector(network, det, bn)
