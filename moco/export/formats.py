"""Export a pretrained backbone: torchvision state dict, Detectron2 ``.pkl``, safetensors, or ONNX.

* ``torchvision``: the query backbone's state dict, no ``module.``/``encoder_q.`` prefix and no
  ``fc``; it loads with ``strict=True`` into ``torchvision.models.resnetXX()`` once that model's
  ``fc`` is replaced by ``nn.Identity()`` (the classifier is not part of a pretrained backbone).
* ``detectron2``: the same weights renamed as the authors' ``convert-pretrain-to-detectron2.py``
  does (``stem.conv1``, ``res2``-``res5``, ``shortcut``, ``convN.norm``), as numpy arrays in a
  pickle with ``matching_heuristics``, for R50-C4/FPN transfer.
* ``safetensors``: the torchvision state dict in the safetensors format.
* ``onnx``: the backbone as a graph, images in and features out, with a dynamic batch axis
  (:mod:`moco.export.onnx`; the optional extra ``momentum-contrast[onnx]``).

ViT backbones (MoCo v3) export as a torchvision ``VisionTransformer`` state dict without ``heads``
(``torchvision.models.vit_b_16()`` for ViT-Base/16 at 224 px, once ``heads = nn.Identity()``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from moco.data.augment import NORMALIZATIONS
from moco.export.backbone import load_backbone, load_backbone_and_config
from moco.export.onnx import OnnxCheck, check_onnx, export_onnx
from moco.models.generic import Encoder

FORMATS = ("torchvision", "detectron2", "safetensors", "onnx")


def torchvision_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone of a checkpoint as the state dict of its torchvision (or timm) constructor, without the
    classifier: a ResNet without ``fc``, a ViT without ``heads``, ``torchvision:NAME`` without its classifier."""
    net = load_backbone(path)
    net = net.backbone if isinstance(net, Encoder) else net
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def detectron2_name(k: str) -> str:
    """torchvision ResNet key -> Detectron2 ResNet key (the authors' converter's rules)."""
    if "layer" not in k:
        k = "stem." + k
    for t in (1, 2, 3, 4):
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    return k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_state_dict(state: dict[str, torch.Tensor]) -> dict:
    model = {detectron2_name(k): v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return {"model": model, "__author__": "MOCO", "matching_heuristics": True}


def export_onnx_backbone(checkpoint: str | Path, out: str | Path) -> tuple[Path, OnnxCheck, int]:
    """The checkpoint's backbone as ONNX, with the inputs it expects in its metadata, run in onnxruntime against
    PyTorch: (the path written, the check, the image side)."""
    net, cfg = load_backbone_and_config(checkpoint)
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    size = cfg.data.image_size
    path = export_onnx(net, out, size, {
        "moco.source": str(checkpoint), "moco.arch": cfg.model.arch, "moco.image_size": str(size),
        "moco.mean": ",".join(map(str, mean)), "moco.std": ",".join(map(str, std))})
    return path, check_onnx(path, net, size), size


def export_backbone(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the checkpoint's backbone to ``out`` in ``fmt``; returns the path written (ONNX: checked as
    :func:`export_onnx_backbone` does, a mismatch refused)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        path, check, _ = export_onnx_backbone(checkpoint, out)
        if not check.ok:
            raise ValueError(f"{path}: onnxruntime's features differ from PyTorch's by {check.relative:.1e} of their "
                             "scale; do not deploy it")
        return path
    state = torchvision_state_dict(checkpoint)
    vit = "class_token" in state
    if fmt == "detectron2" and "layer1.0.conv1.weight" not in state:
        raise ValueError("the detectron2 format is for ResNet backbones; export this one as torchvision or "
                         "safetensors")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "torchvision":
        torch.save(state, tmp)
    elif fmt == "detectron2":
        with open(tmp, "wb") as f:
            pickle.dump(detectron2_state_dict(state), f)
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"source": str(checkpoint),
                                                "format": "torchvision-vit" if vit else "torchvision-resnet"
                                                if "layer1.0.conv1.weight" in state else "torchvision"})
    tmp.replace(out)
    return out
