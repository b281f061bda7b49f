"""Batched augmentation: same parameter distributions and pixel ops as torchvision's per-image pipeline."""

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms as T

from moco.data.augment import (
    MEAN,
    RECIPES,
    STD,
    adjust_hue,
    batch_augment,
    color_jitter,
    eval_batch,
    gaussian_blur,
    jitter_params,
    per_image_transform,
    sample_crop_boxes,
)


@pytest.mark.parametrize("hw", [(32, 32), (100, 200)])
def test_crop_boxes_match_torchvision_distribution(hw):
    h, w = hw
    n = 20000
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(n, h, w, (0.2, 1.0), generator=g)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all() and (bw >= 1).all() and (bh >= 1).all()
    torch.manual_seed(0)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, h, w), [0.2, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float)
    rh, rw = ref[:, 2], ref[:, 3]
    area, ref_area = bw * bh / (h * w), rw * rh / (h * w)
    ar, ref_ar = torch.log(bw / bh), torch.log(rw / rh)
    def ks(a, b):  # Kolmogorov-Smirnov distance between two samples
        grid = torch.cat([a, b]).unique()
        cdf = lambda v: torch.searchsorted(v.sort().values, grid, right=True).float() / len(v)
        return (cdf(a) - cdf(b)).abs().max().item()

    assert ks(area, ref_area) < 0.03 and abs(area.mean() - ref_area.mean()) < 0.01
    assert ks(ar, ref_ar) < 0.03 and abs(ar.mean() - ref_ar.mean()) < 0.01
    # horizontal offset relative to the free room is uniform in both
    cx = (boxes[:, 0] / (w - bw).clamp(min=1)).mean()
    ref_cx = (ref[:, 1] / (w - rw).clamp(min=1)).mean()
    assert abs(cx - ref_cx) < 0.02


def test_jitter_params_ranges_probability_and_orders():
    n = 20000
    apply, b, c, s, h, order = jitter_params(n, (0.4, 0.4, 0.4, 0.1), 0.8, torch.Generator().manual_seed(0))
    assert abs(apply.float().mean().item() - 0.8) < 0.01
    for f in (b, c, s):
        assert f.min() >= 0.6 and f.max() <= 1.4 and abs(f.mean().item() - 1.0) < 0.01
    assert h.min() >= -0.1 and h.max() <= 0.1
    assert (order.sort(1).values == torch.arange(4)).all()
    assert len({tuple(o) for o in order.tolist()}) == 24  # every order occurs, as in ColorJitter


def test_adjust_hue_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 9, 9)
    hue = torch.linspace(-0.4, 0.4, 6)
    ours = adjust_hue(x, hue)
    for i in range(6):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], hue[i].item()), atol=1e-5)


def test_color_jitter_matches_sequential_torchvision_ops():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 8, 8)
    b, c, s, h = torch.tensor([0.7, 1.3, 1.0, 0.9]), torch.tensor([1.2, 0.8, 0.6, 1.0]), \
        torch.tensor([0.5, 1.4, 1.1, 0.0]), torch.tensor([0.05, -0.1, 0.0, 0.1])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    ours = color_jitter(x, b, c, s, h, order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(4):
        ref = x[i]
        for o in order[i].tolist():
            ref = ops[o](ref, [b, c, s, h][o][i].item())
        assert torch.allclose(ours[i], ref, atol=1e-5), i


def test_gaussian_blur_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 24, 24)
    sigma = torch.tensor([0.5, 1.5, 0.0])
    ours = gaussian_blur(x, sigma)
    k = 2 * math.ceil(3 * 1.5) + 1
    for i in (0, 1):
        ref = TF.gaussian_blur(x[i], [k, k], [sigma[i].item()] * 2)
        assert torch.allclose(ours[i], ref, atol=1e-5)
    assert torch.allclose(ours[2], x[2])  # sigma 0: not blurred


def test_batch_augment_shapes_determinism_and_gray_rate():
    x = torch.randint(0, 256, (512, 3, 40, 40), dtype=torch.uint8)
    a = batch_augment(x, 32, "v2", generator=torch.Generator().manual_seed(5))
    b = batch_augment(x, 32, "v2", generator=torch.Generator().manual_seed(5))
    assert a.shape == (512, 3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    pix = a * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pix.min() > -1e-4 and pix.max() < 1 + 1e-4
    gray = ((pix[:, 0] - pix[:, 1]).abs().amax(dim=(1, 2)) < 1e-4).float().mean().item()
    assert abs(gray - RECIPES["v2"].gray_p) < 0.06


def test_flip_and_crop_are_geometric():
    """A left-dark/right-bright image: full-image crops either keep or mirror the gradient."""
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).view(1, 1, 1, 32).expand(400, 3, 32, 32)
    out = batch_augment(ramp.contiguous(), 32, "cifar", min_scale=0.99, generator=torch.Generator().manual_seed(0))
    left, right = out[..., :4].mean(dim=(1, 2, 3)), out[..., -4:].mean(dim=(1, 2, 3))
    flipped = (left > right).float().mean().item()
    assert 0.4 < flipped < 0.6


def test_per_image_pipeline_runs_on_pil():
    from PIL import Image

    img = Image.new("RGB", (50, 40), (120, 40, 200))
    for kind in RECIPES:
        out = per_image_transform(kind, 32)(img)
        assert out.shape == (3, 32, 32)


def test_eval_batch_normalises_and_resizes():
    x = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    out = eval_batch(x, 32)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out[0, :, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD), atol=1e-5)
