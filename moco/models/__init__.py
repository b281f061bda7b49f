"""Backbones: torchvision-compatible ResNets (CIFAR stem, width knob, split BN)."""

from moco.models.resnet import ARCHS, ResNet, SplitBatchNorm, build_resnet, feature_dim

__all__ = ["ARCHS", "ResNet", "SplitBatchNorm", "build_resnet", "feature_dim"]
