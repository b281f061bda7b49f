"""momentum-contrast: Momentum Contrast (MoCo) self-supervised pretraining for PyTorch."""

__version__ = "0.1.0"


def load_backbone(path):  # noqa: ANN001, ANN201 - lazy import keeps `import moco` light
    """Load a checkpoint's pretrained backbone (query encoder, no head) as a torchvision ResNet."""
    from moco.export.backbone import load_backbone as _load

    return _load(path)


__all__ = ["__version__", "load_backbone"]
