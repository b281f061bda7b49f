"""Image sizes for the dense tasks on camera photos: a ceiling on the sides taken from the data, and an estimate
of a training step's memory made before the first step, so that a run that cannot fit is refused in one line
(what to lower) instead of swapping or being killed.

The ceilings are torchvision's references: detection's 800-px shorter side and 1333-px longer side (Detectron2's
``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN``), segmentation's 520-px base size with 480-px crops.
"""

from __future__ import annotations

import logging

import torch

from moco.core.errors import ConfigError
from moco.core.system import host_memory_gb
from moco.presets.auto import ACT_MB_224

log = logging.getLogger("moco")
DETECT_SHORT, DETECT_LONG = 800, 1333
SEGMENT_BASE, SEGMENT_CROP = 520, 480
DETECT_FACTOR = 2.0  # the detector's pyramid, RPN and heads on top of the backbone's activations
SEGMENT_FACTOR = 4.0  # the backbone dilated to stride 8: its last stages at 4x and 16x their area
HEADROOM = 0.8  # the share of the memory a step may take


def capped(median: int, ceiling: int, what: str, key: str) -> int:
    """``median`` (a side the data gives), at most ``ceiling``: said in one line when it is lowered."""
    if median <= ceiling:
        return median
    log.warning("the training images' median shorter side is %d px: %s at %d px (torchvision's ceiling); "
                "--set %s=... for another size", median, what, ceiling, key)
    return ceiling


def device_memory_gb(device: torch.device) -> float:
    """Memory a step can use on ``device``: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    free = host_memory_gb(available=True)
    return float("inf") if free is None else free


CIFAR_STEM_FACTOR = 3.0
"""A CIFAR-stem backbone's step against the same ResNet's with the ImageNet stem (its first stages keep 16x the
area): measured, `moco detect` at 800 x 1333 px on a CIFAR-stem ResNet-18 of width 16, 8 images, fp32, peaked at
12.6 GB where the ImageNet-stem estimate says 3.4 (benchmarks/results/detect_photos.json)."""


def step_memory_gb(arch: str, width: int, pixels: float, images: int, half: bool, factor: float,
                   cifar_stem: bool = False) -> float:
    """A rough estimate of a training step's memory: ``images`` images of ``pixels`` pixels each through the
    network (activations kept for the backward pass, :data:`moco.presets.auto.ACT_MB_224`; a CIFAR stem
    :data:`CIFAR_STEM_FACTOR` times that) times ``factor`` for what the task adds. Named networks (torchvision:,
    timm:) are taken as a ResNet-50."""
    per_224 = ACT_MB_224.get(arch, ACT_MB_224["resnet50"]) * (width / 64 if arch in ACT_MB_224 else 1.0)
    mb = per_224 * pixels / 224**2 * images * factor * (0.5 if half else 1.0) * (CIFAR_STEM_FACTOR if cifar_stem
                                                                                  else 1.0)
    return mb / 1024


def check_fits(need_gb: float, device: torch.device, lower: str) -> None:
    """Refuse a step estimated at ``need_gb`` that the device's memory cannot hold, saying what to ``lower``."""
    have = device_memory_gb(device)
    if need_gb > HEADROOM * have:
        raise ConfigError(f"a training step needs about {need_gb:.1f} GB and {device.type} has {have:.1f} GB "
                          f"available: lower {lower}")


def fitted_side(side: int, per_side_gb: float, device: torch.device, floor: int = 128) -> int:
    """The largest side (a multiple of 32, at least ``floor``) whose step fits the device, given the step's memory
    ``per_side_gb`` at ``side`` (memory grows with the side squared)."""
    have = HEADROOM * device_memory_gb(device)
    if per_side_gb <= have:
        return side
    fit = int(side * (have / per_side_gb) ** 0.5) // 32 * 32
    return max(floor, fit)
