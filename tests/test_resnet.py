"""Backbones keep torchvision's names and shapes, so weights carry over."""

import pytest
import torch
import torchvision

from moco.config import resolve
from moco.methods import build_encoder
from moco.models.resnet import build_resnet, feature_dim


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_standard_backbone_loads_strictly_into_torchvision(arch):
    ours = build_resnet(arch)
    ref = getattr(torchvision.models, arch)()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_cifar_stem_and_width():
    net = build_resnet("resnet18", width=16, cifar_stem=True, num_classes=10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert feature_dim(net) == 128
    assert net.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert feature_dim(build_resnet("resnet50", width=32)) == 1024


def test_heads_v1_and_v2():
    v1 = build_encoder(resolve("cifar10-cpu", overrides=["model.head=linear"]))
    assert isinstance(v1.fc, torch.nn.Linear) and v1.fc.out_features == 128
    v2 = build_encoder(resolve("cifar10-cpu", overrides=["model.head=mlp"]))
    assert isinstance(v2.fc, torch.nn.Sequential) and v2.fc[0].out_features == feature_dim(v2)


def test_bad_arch_and_width():
    with pytest.raises(ValueError, match="unknown arch"):
        build_resnet("resnet19")
    with pytest.raises(ValueError, match="width"):
        build_resnet("resnet18", width=0)
