"""The evaluation side rule, in one place: how big images are kept, and how evaluation crops them.

Images up to ``SMALL`` px (CIFAR-style data) are used whole at ``image_size``. Larger ones follow the
ImageNet convention: decode (cache) with the shorter side at ``CACHE_SCALE x image_size``, and evaluate
on a center crop of ``EVAL_CROP`` of the resized image (224 of 256).
"""

from __future__ import annotations

SMALL = 64
CACHE_SCALE = 1.15
EVAL_CROP = 0.875


def is_small(image_size: int) -> bool:
    """True for CIFAR-sized images, which are never resized or center-cropped for evaluation."""
    return image_size <= SMALL


def cache_side(image_size: int) -> int:
    """Side at which images are decoded and cached for an ``image_size`` run."""
    return image_size if is_small(image_size) else int(round(image_size * CACHE_SCALE))


def eval_resize(image_size: int) -> int:
    """Shorter side before the evaluation center crop (PIL pipeline): 256 for 224."""
    return image_size if is_small(image_size) else int(round(image_size / EVAL_CROP))


def center_crop(side: int, image_size: int) -> int:
    """The center crop of a ``side``-px cached square that evaluation resizes to ``image_size``."""
    return side if is_small(image_size) else int(round(side * EVAL_CROP))
