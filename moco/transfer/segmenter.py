"""The network that ``moco segment`` trains: a pretrained ResNet whose later stages are dilated to an output
stride, under torchvision's DeepLabV3 head (ASPP) or FCN head, with logits upsampled to the image.

:class:`Segmenter` keeps the backbone network as ``encoder_q`` (:class:`~moco.transfer.classifier.Transfer`), so
a checkpoint's ``encoder_q.*`` is the fine-tuned backbone for ``moco export``. Dilation changes strides and
dilations only: the weights are the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from moco.transfer.classifier import Transfer, lr_groups
from moco.transfer.detector import STAGES, resnet_trunk, stage_shapes, stages


def _dilate_stage(stage: nn.Module, previous: int, dilation: int) -> None:
    """A ResNet stage made stride 1, its 3 x 3 convolutions dilated as torchvision's
    ``replace_stride_with_dilation`` builds them: the first block at ``previous``, the others at ``dilation``."""
    for i, block in enumerate(stage.children()):
        d = previous if i == 0 else dilation
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                if m.stride == (2, 2):
                    m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (d, d), (d, d)


def dilate(trunk: nn.Module, output_stride: int) -> int:
    """Dilate ``trunk``'s last stride-2 stages until its last stage's stride is at most ``output_stride``; returns
    the stride reached. A network already there (the CIFAR stem: 8) is unchanged."""
    shapes = stage_shapes(trunk)
    strides = [s for _, s in shapes]
    halving = [i for i in range(1, 4) if strides[i] == 2 * strides[i - 1]]  # stages that halve (layer2-4)
    dilated: set[int] = set()
    stride = strides[-1]
    while stride > output_stride and halving:
        dilated.add(halving.pop())
        stride //= 2
    dilation = 1
    for i in range(1, 4):
        if i in dilated:
            previous, dilation = dilation, dilation * 2
            _dilate_stage(getattr(trunk, STAGES[i]), previous, dilation)
    return stride


HEADS = {
    "deeplabv3": lambda c, n, rates: DeepLabHead(c, n, tuple(rates)),
    "fcn": lambda c, n, rates: FCNHead(c, n),
}
"""segment.head -> torchvision's head on ``c`` channels for ``n`` classes (``rates``: ASPP's)."""


class Segmenter(Transfer):
    """``encoder_q``'s ResNet stages under a segmentation ``head``, trained with per-pixel cross-entropy
    (``ignore_index`` left out); images come in as float [0, 1] and are normalised with ``mean`` and ``std``."""

    def __init__(self, network: nn.Module, head: nn.Module, mean: Sequence[float], std: Sequence[float],
                 ignore_index: int = 255, bn: str = "train") -> None:
        super().__init__(network, bn)
        self.head, self.ignore_index = head, ignore_index
        self.trunk = resnet_trunk(network)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, classes, H, W) logits of images (B, 3, H, W) in [0, 1], upsampled bilinearly to the image."""
        x = (images - self.mean) / self.std
        out = self.head(stages(self.trunk, x)[-1])
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the pixels' mean cross-entropy in fp32, the logits)."""
        logits = self.logits(images)
        return F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index), logits

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Each pixel's class (B, H, W), in eval mode; the modes are restored after."""
        was = self.training
        self.eval()
        try:
            return self.logits(images).argmax(1)
        finally:
            self.train(was)

    def param_groups(self, backbone_lr: float) -> list[dict]:
        """The backbone at ``backbone_lr`` times the lr (``lr_scale``), the head at the lr."""
        return lr_groups(list(self.encoder_q.parameters()), list(self.head.parameters()), backbone_lr)


def build_segmenter(network: nn.Module, num_classes: int, head: str, output_stride: int, atrous_rates: Sequence[int],
                    mean: Sequence[float], std: Sequence[float], ignore_index: int = 255, bn: str = "train",
                    ) -> tuple[Segmenter, int]:
    """(the segmenter on ``network``'s ResNet stages, dilated to ``output_stride``, the stride reached);
    ValueError for a network that is not a ResNet."""
    trunk = resnet_trunk(network)
    stride = dilate(trunk, output_stride)
    channels = stage_shapes(trunk)[-1][0]
    return Segmenter(network, HEADS[head](channels, num_classes, atrous_rates), mean, std, ignore_index, bn), stride
