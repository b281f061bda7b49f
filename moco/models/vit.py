"""Vision Transformers for MoCo v3: torchvision's ``VisionTransformer`` with the authors' tweaks.

* a fixed 2-D sin-cos position embedding (not learned; the class token's is zero),
* the authors' initialisation (xavier-uniform linears, qkv treated as three matrices, patch
  projection uniform in +-sqrt(6 / (3 * p * p + dim)), class token N(0, 1e-6)),
* optionally a frozen random patch projection (``stop_grad_conv1``), which the authors found
  to make ViT training stable.

Module names are torchvision's, so ``state_dict()`` minus ``fc.*`` loads with ``strict=True``
into ``torchvision.models.VisionTransformer`` of the same shape (``vit_b_16()`` for ``vit_base``
at 224 px) once its ``heads`` are replaced by ``nn.Identity()``. ``fc`` is the projection head,
as for the ResNets.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

# arch -> (layers, heads, hidden dim, MLP dim)
VITS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny": (12, 3, 192, 768),
    "vit_small": (12, 6, 384, 1536),
    "vit_base": (12, 12, 768, 3072),
}


def sincos_pos_embed(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The authors' 2-D sin-cos position embedding, (1, 1 + grid * grid, dim), class token first (zeros)."""
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs a hidden dim divisible by 4, got {dim}")
    gw, gh = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w, out_h = torch.outer(gw.flatten(), omega), torch.outer(gh.flatten(), omega)
    emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), emb])[None]


class ViT(VisionTransformer):
    """torchvision ViT with ``forward_features`` (the class token after the final LayerNorm) and ``fc``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def build_vit(arch: str = "vit_small", image_size: int = 224, patch_size: int = 16,
              stop_grad_conv1: bool = False) -> ViT:
    if arch not in VITS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(VITS)}")
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    layers, heads, dim, mlp = VITS[arch]
    model = ViT.__new__(ViT)
    VisionTransformer.__init__(model, image_size, patch_size, layers, heads, dim, mlp)
    del model.heads
    model.fc = nn.Identity()
    with torch.no_grad():
        model.encoder.pos_embedding.copy_(sincos_pos_embed(image_size // patch_size, dim))
    model.encoder.pos_embedding.requires_grad = False
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):  # qkv: three (dim, dim) matrices stacked
            val = math.sqrt(6.0 / float(m.in_proj_weight.shape[0] // 3 + m.in_proj_weight.shape[1]))
            nn.init.uniform_(m.in_proj_weight, -val, val)
            nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(model.class_token, std=1e-6)
    val = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))
    nn.init.uniform_(model.conv_proj.weight, -val, val)
    nn.init.zeros_(model.conv_proj.bias)
    if stop_grad_conv1:
        model.conv_proj.weight.requires_grad = False
        model.conv_proj.bias.requires_grad = False
    return model
