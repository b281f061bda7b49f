"""A tiny network for the API tests, importable as ``api_nets.TinyCNN`` (so ``custom:api_nets.TinyCNN`` works)."""

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Two conv-BN-ReLU layers; returns a feature map (MoCo pools it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
