"""MoCo augmentations: per-image torchvision pipelines and their batched tensor equivalent.

``per_image_transform`` is the authors' pipeline (PIL, one image at a time).
``batch_augment`` applies the same recipe to a whole uint8 batch at once, with
the same parameter ranges and probabilities, each image drawing its own:
random resized crop (``roi_align``), color jitter in a random order per image,
grayscale, Gaussian blur, horizontal flip, normalisation.

Recipes (method doc, "The recipes"):
- ``v1``: crop(0.2-1), grayscale p=0.2, jitter 0.4/0.4/0.4/0.4 always, flip.
- ``v2``: crop, jitter 0.4/0.4/0.4/0.1 p=0.8, grayscale 0.2, blur sigma 0.1-2 p=0.5, flip.
- ``cifar``: v2 without blur (the CIFAR-10 demo).
- ``byol`` (MoCo v3, from BYOL): crop(0.08-1), jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, then
  asymmetric views: blur p=1.0 in the first and p=0.1 plus solarize p=0.2 in the second.
- ``byol-cifar``: byol without blur, for 32-px images (as CIFAR recipes of v3 do).

A two-view recipe (``data.augmentation``, the registry ``AUGMENTATIONS``) names one per-view recipe for
each view. How evaluation sizes images is :mod:`moco.data.sides`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.ops import roi_align

from moco.data import sides

if TYPE_CHECKING:
    from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (MEAN, STD),  # main_moco.py (v1/v2) and the v3 code: ImageNet's channel statistics
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # the authors' CIFAR-10 demo notebook
}
"""``data.normalize`` -> the (mean, std) of the R, G, B channels (pixels in [0, 1]) that inputs are normalised by."""
GRAY = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class Recipe:
    jitter: tuple[float, float, float, float]
    jitter_p: float
    gray_p: float
    blur_p: float
    gray_first: bool  # v1 applies grayscale before jitter
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


RECIPES = {
    "v1": Recipe((0.4, 0.4, 0.4, 0.4), 1.0, 0.2, 0.0, True),
    "v2": Recipe((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, False),
    "cifar": Recipe((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0, False),
    "byol-view1": Recipe((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 1.0, False),
    "byol-view2": Recipe((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.1, False, solarize_p=0.2),
    "byol-cifar-view1": Recipe((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.0, False),
    "byol-cifar-view2": Recipe((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.0, False, solarize_p=0.2),
}
SOLARIZE_THRESHOLD = 128 / 255  # torchvision's RandomSolarize(threshold=128) on 8-bit images

AUGMENTATIONS: dict[str, tuple[str, str]] = {
    "v1": ("v1", "v1"),
    "v2": ("v2", "v2"),
    "cifar": ("cifar", "cifar"),
    "byol": ("byol-view1", "byol-view2"),  # asymmetric: blur 1.0 / 0.1, solarize 0 / 0.2
    "byol-cifar": ("byol-cifar-view1", "byol-cifar-view2"),
}
"""``data.augmentation`` -> the per-view recipes (``RECIPES``) of its two views."""


def view_recipes(kind: str) -> tuple[str, str]:
    """The per-view recipes of ``kind``: the same for both views, except for the asymmetric byol recipes."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}")
    return AUGMENTATIONS[kind]


class PILGaussianBlur:
    """Gaussian blur with sigma drawn from a range, as in MoCo v2 (PIL filter)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        from PIL import ImageFilter

        s = float(torch.empty(1).uniform_(*self.sigma))
        return img.filter(ImageFilter.GaussianBlur(radius=s))


def normalize(x: torch.Tensor, norm: str = "imagenet") -> torch.Tensor:
    """(x - mean) / std per channel of a (B, 3, H, W) float batch in [0, 1], with ``NORMALIZATIONS[norm]``."""
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in NORMALIZATIONS[norm])
    return (x - mean) / std


def per_image_transform(kind: str, size: int, min_scale: float = 0.2, norm: str = "imagenet") -> T.Compose:
    """The authors' per-image pipeline (PIL in, normalised tensor out)."""
    r = RECIPES[kind]
    jitter = T.ColorJitter(*r.jitter)
    color = [jitter] if r.jitter_p >= 1 else [T.RandomApply([jitter], p=r.jitter_p)]
    gray = [T.RandomGrayscale(p=r.gray_p)]
    ops = [T.RandomResizedCrop(size, scale=(min_scale, 1.0))]
    ops += gray + color if r.gray_first else color + gray
    if r.blur_p > 0:
        ops.append(T.RandomApply([PILGaussianBlur(r.blur_sigma)], p=r.blur_p))
    if r.solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=128, p=r.solarize_p))
    ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*NORMALIZATIONS[norm])]
    return T.Compose(ops)


def eval_transform(size: int, norm: str = "imagenet") -> T.Compose:
    """Resize + center crop for evaluation (small images pass through unchanged)."""
    return T.Compose([T.Resize(sides.eval_resize(size)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(*NORMALIZATIONS[norm])])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def sample_crop_boxes(
    n: int, height: int | torch.Tensor, width: int | torch.Tensor, scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None, tries: int = 10,
) -> torch.Tensor:
    """``RandomResizedCrop.get_params`` for ``n`` images at once: (n, 4) boxes x1, y1, x2, y2 in pixels.

    ``height``/``width`` are one size for all images or (n,) tensors of each image's size; the random
    draws do not depend on the sizes, so the stream of draws is the same either way.
    """
    H = torch.as_tensor(height, dtype=torch.float32).expand(n)
    W = torch.as_tensor(width, dtype=torch.float32).expand(n)
    target = (H * W).view(n, 1) * _uniform(n * tries, *scale, generator).view(n, tries)
    logr = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), generator).view(n, tries)
    aspect = torch.exp(logr)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= W.view(n, 1)) & (h > 0) & (h <= H.view(n, 1))
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    # Fallback (no try fits): the central crop with the ratio clamped, as torchvision does.
    in_ratio = W / H
    fw = torch.where(in_ratio > ratio[1], (H * ratio[1]).round(), W)
    fh = torch.where(in_ratio < ratio[0], (W / ratio[0]).round(), H)
    rows = torch.arange(n)
    cw = torch.where(first >= 0, w[rows, first.clamp(min=0)], fw)
    ch = torch.where(first >= 0, h[rows, first.clamp(min=0)], fh)
    height, width = H, W
    u = torch.rand(n, 2, generator=generator)
    # torch.randint(0, H - h + 1) in torchvision: a uniform integer offset.
    y1 = torch.where(first >= 0, torch.floor(u[:, 0] * (height - ch + 1)), ((height - ch) / 2).round())
    x1 = torch.where(first >= 0, torch.floor(u[:, 1] * (width - cw + 1)), ((width - cw) / 2).round())
    return torch.stack([x1, y1, x1 + cw, y1 + ch], dim=1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _rgb2hsv(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(dim=1)
    maxc = img.max(dim=1).values
    minc = img.min(dim=1).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv2rgb(img: torch.Tensor) -> torch.Tensor:
    h, s, v = img.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    sel = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), dim=1)
    sel = sel.view(img.shape[0], 3, 6, *h.shape[1:])
    return sel.gather(2, i[:, None, None].expand(-1, 3, 1, *h.shape[1:])).squeeze(2)


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    hsv = _rgb2hsv(x)
    h = torch.remainder(hsv[:, 0] + hue.view(-1, 1, 1), 1.0)
    return _hsv2rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def color_jitter(
    x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor, h: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """Per-image brightness/contrast/saturation/hue factors, applied in per-image ``order`` (n, 4)."""
    x = x.clone()
    for j in range(4):
        for op in range(4):
            idx = (order[:, j] == op).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            xi = x[idx]
            if op == 0:
                xi = (xi * b[idx].view(-1, 1, 1, 1)).clamp_(0, 1)
            elif op == 1:
                xi = _blend(xi, rgb_to_gray(xi).mean(dim=(1, 2, 3), keepdim=True), c[idx])
            elif op == 2:
                xi = _blend(xi, rgb_to_gray(xi), s[idx])
            else:
                xi = adjust_hue(xi, h[idx])
            x[idx] = xi
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (sigma <= 0 leaves the image unchanged)."""
    n, c, hgt, wid = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), min(hgt, wid) // 2 - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sg = sigma.to(x.device, x.dtype).clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t / sg) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = torch.where((sigma.to(x.device) > 0).view(-1, 1), k, (t == 0).to(x.dtype).expand_as(k))
    k = k.repeat_interleave(c, 0)  # (n*c, K)
    y = x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


def jitter_params(
    n: int, jitter: tuple[float, float, float, float], p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Per-image ColorJitter draws: (apply, brightness, contrast, saturation, hue, order).

    Factors are uniform in [max(0, 1 - j), 1 + j] (hue in [-j, j]) as in
    ``T.ColorJitter``; ``order`` is a random permutation of the four ops per image.
    """
    bj, cj, sj, hj = jitter
    apply = torch.rand(n, generator=generator) < p
    b = _uniform(n, max(0.0, 1 - bj), 1 + bj, generator)
    c = _uniform(n, max(0.0, 1 - cj), 1 + cj, generator)
    s = _uniform(n, max(0.0, 1 - sj), 1 + sj, generator)
    h = _uniform(n, -hj, hj, generator)
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
    return apply, b, c, s, h, order


@dataclass
class AugParams:
    """Every random draw of one view of a batch, per image; ``[lo:hi]`` selects images."""

    boxes: torch.Tensor  # (n, 4) crop boxes x1, y1, x2, y2 in pixels
    gray: torch.Tensor  # (n,) bool
    jitter: tuple[torch.Tensor, ...]  # apply, brightness, contrast, saturation, hue, order
    sigma: torch.Tensor  # (n,) blur sigma, 0 = no blur
    flip: torch.Tensor  # (n,) bool
    solarize: torch.Tensor | None = None  # (n,) bool; None when the recipe never solarizes

    def __getitem__(self, sl: slice) -> AugParams:
        return AugParams(self.boxes[sl], self.gray[sl], tuple(t[sl] for t in self.jitter), self.sigma[sl],
                         self.flip[sl], None if self.solarize is None else self.solarize[sl])


def sample_params(
    n: int, height: int | torch.Tensor, width: int | torch.Tensor, kind: str = "v2", min_scale: float = 0.2,
    generator: torch.Generator | None = None,
) -> AugParams:
    """Draw the random parameters of ``kind``'s recipe for ``n`` images (on the CPU)."""
    r = RECIPES[kind]
    boxes = sample_crop_boxes(n, height, width, (min_scale, 1.0), generator=generator)
    gray = torch.rand(n, generator=generator) < r.gray_p
    jitter = jitter_params(n, r.jitter, r.jitter_p, generator)
    sigma = torch.zeros(n)
    if r.blur_p > 0:
        sigma = _uniform(n, *r.blur_sigma, generator) * (torch.rand(n, generator=generator) < r.blur_p)
    flip = torch.rand(n, generator=generator) < 0.5
    solarize = torch.rand(n, generator=generator) < r.solarize_p if r.solarize_p > 0 else None
    return AugParams(boxes, gray, jitter, sigma, flip, solarize)


def crop_resize(images: torch.Tensor | list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box and resize to ``size`` (``roi_align``, averaging when it shrinks): float [0, 1].

    ``images`` is a (B, 3, H, W) uint8 batch, or a list of (3, H_i, W_i) uint8 images of different sizes
    (cropped one by one with the same op, so the results are identical for equal sizes).
    """
    if isinstance(images, torch.Tensor):
        n, dev = images.shape[0], images.device
        rois = torch.cat([torch.arange(n, dtype=boxes.dtype).view(-1, 1), boxes], dim=1).to(dev)
        x = roi_align(images.float().div_(255), rois, output_size=(size, size), spatial_scale=1.0,
                      sampling_ratio=-1, aligned=True)
    else:
        dev = images[0].device
        rois = torch.cat([torch.zeros(len(images), 1, dtype=boxes.dtype), boxes], dim=1).to(dev)
        x = torch.cat([roi_align(img[None].float().div_(255), rois[i : i + 1], output_size=(size, size),
                                 spatial_scale=1.0, sampling_ratio=-1, aligned=True) for i, img in enumerate(images)])
    return x.clamp_(0, 1)


def apply_params(
    images: torch.Tensor | list[torch.Tensor], p: AugParams, size: int, kind: str = "v2", norm: str = "imagenet",
) -> torch.Tensor:
    """Augment a (B, 3, H, W) uint8 batch (or a list of uint8 images of any sizes) with drawn parameters;
    returns float32 (B, 3, size, size) normalised by ``NORMALIZATIONS[norm]``. The pixel work runs on the
    images' device.
    """
    r = RECIPES[kind]
    x = crop_resize(images, p.boxes, size)
    dev = x.device

    def gray_step(x: torch.Tensor) -> torch.Tensor:
        return torch.where(p.gray.to(dev).view(-1, 1, 1, 1), rgb_to_gray(x).expand_as(x), x)

    def jitter_step(x: torch.Tensor) -> torch.Tensor:
        apply, b, c, s, h, order = p.jitter
        idx = apply.nonzero().squeeze(1)
        if idx.numel():
            di = idx.to(dev)
            x[di] = color_jitter(x[di], b[idx].to(dev), c[idx].to(dev), s[idx].to(dev), h[idx].to(dev),
                                 order[idx].to(dev))
        return x

    x = jitter_step(gray_step(x)) if r.gray_first else gray_step(jitter_step(x))
    if (p.sigma > 0).any():
        x = gaussian_blur(x, p.sigma)
    if p.solarize is not None:
        sol = p.solarize.to(dev).view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD)
        x = torch.where(sol, 1.0 - x, x)
    x = torch.where(p.flip.to(dev).view(-1, 1, 1, 1), x.flip(-1), x)
    return normalize(x, norm)


def batch_augment(
    images: torch.Tensor, size: int, kind: str = "v2", min_scale: float = 0.2,
    generator: torch.Generator | None = None, norm: str = "imagenet",
) -> torch.Tensor:
    """Augment a (B, 3, H, W) uint8 batch; returns normalised float32 (B, 3, size, size).

    Random parameters are drawn on the CPU from ``generator``; the pixel work runs
    on ``images.device``.
    """
    n, _, height, width = images.shape
    return apply_params(images, sample_params(n, height, width, kind, min_scale, generator), size, kind, norm)


def two_views(
    images: torch.Tensor, size: int | None = None, recipe: str = "v2", min_scale: float = 0.2,
    generator: torch.Generator | None = None, norm: str = "imagenet",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's two augmented views of a (B, 3, H, W) uint8 batch (``moco.augment``): normalised float32
    (B, 3, size, size) each, every image with its own draws. ``recipe`` is a two-view recipe
    (``AUGMENTATIONS``: v1, v2, cifar, byol, byol-cifar); ``size`` defaults to the images' side;
    ``norm`` names the channel statistics (``NORMALIZATIONS``: imagenet, cifar10)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) uint8 batch, got {tuple(images.shape)} {images.dtype}")
    side = size or images.shape[-1]
    k1, k2 = view_recipes(recipe)
    return (batch_augment(images, side, k1, min_scale, generator, norm),
            batch_augment(images, side, k2, min_scale, generator, norm))


def crop_flip_params(
    n: int, height: int, width: int, size: int, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The draws of :func:`crop_flip` for ``n`` images of ``height`` x ``width``: (crop boxes (n, 4) in the
    padded image for small sides, flips (n,), padding)."""
    if sides.is_small(size):  # CIFAR style: 4-px zero padding, random size-px crop
        off = torch.randint(0, 9 + (width - size), (n, 2), generator=generator).float()
        boxes, pad = torch.cat([off, off + size], dim=1), 4
    else:
        boxes, pad = sample_crop_boxes(n, height, width, (0.08, 1.0), generator=generator), 0
    return boxes, torch.rand(n, generator=generator) < 0.5, pad


def crop_flip(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None, norm: str = "imagenet",
    params: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """The supervised training augmentation (linear protocol, fine-tuning) of a uint8 batch -> normalised float
    (B, 3, size, size): for sides up to 64 px a 4-px zero padding, a random crop and a flip (the CIFAR
    recipe); above, a random resized crop (scale 0.08-1) and a flip (the ImageNet recipe). ``params`` are draws
    from :func:`crop_flip_params` (a process's slice of a global batch's); by default drawn here."""
    n, _, h, w = images.shape
    boxes, flip, pad = params if params is not None else crop_flip_params(n, h, w, size, generator)
    x = images.float().div_(255)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    rois = torch.cat([torch.arange(n, dtype=torch.float).view(-1, 1), boxes], 1).to(x.device)
    x = roi_align(x, rois, (size, size), 1.0, 1 if pad else -1, aligned=True)
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return normalize(x, norm)


def eval_batch(images: torch.Tensor, size: int, norm: str = "imagenet") -> torch.Tensor:
    """Normalise a (B, 3, S, S) uint8 batch for evaluation (``NORMALIZATIONS[norm]``), resizing to ``size`` if
    needed."""
    x = images.float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        # images are cached as center squares; center-crop the same fraction eval_transform would
        crop = sides.center_crop(x.shape[-1], size)
        off = (x.shape[-1] - crop) // 2
        x = x[..., off : off + crop, off : off + crop]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x, norm)
