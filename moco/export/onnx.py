"""Export a pretrained backbone to ONNX, and check the file against PyTorch with onnxruntime.

The exported graph maps ``images`` (float32, N x 3 x S x S, RGB in [0, 1] normalised by the run's channel mean
and std) to ``features`` (N x D, the backbone's pooled features: what ``moco embed`` computes, before any
projection head). The batch axis is dynamic. The image side, the normalisation and the source checkpoint are
written into the model's metadata (``moco.image_size``, ``moco.mean``, ``moco.std``, ``moco.source``), so a
deployment knows how to prepare its inputs.

The export is torch's own (``torch.onnx.export`` through ``torch.export``); the check runs the file in
onnxruntime. Both come with the optional extra ``momentum-contrast[onnx]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moco.core.errors import ConfigError

EXTRA = "ONNX export needs the optional extra: pip install 'momentum-contrast[onnx]' (onnx, onnxscript, onnxruntime)"
OPSET = 18
TOLERANCE = 1e-4
"""Largest difference allowed between onnxruntime's and PyTorch's features, relative to the features' largest
magnitude: float32 kernels differ in summation order, nothing more."""


def require_onnx() -> None:
    """Raise a one-line :class:`ConfigError` naming the extra when onnx, onnxscript or onnxruntime is missing."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"{EXTRA}; {name} is not installed") from None


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on one batch: the largest absolute difference, relative to the largest
    feature magnitude, and the batch sizes tried (the batch axis is dynamic)."""

    max_abs_diff: float
    relative: float
    batches: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.relative <= TOLERANCE


def export_onnx(net: nn.Module, out: str | Path, image_size: int, metadata: dict[str, str] | None = None,
                opset: int = OPSET) -> Path:
    """Write ``net`` (a backbone in eval mode, features out) to ``out`` as one self-contained ONNX file with a
    dynamic batch axis; ``metadata`` goes into the model's metadata. Returns the path written."""
    require_onnx()
    import onnx

    net = net.eval().float()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    example = (torch.zeros(2, 3, image_size, image_size),)
    batch = torch.export.Dim("batch", min=1)
    # torch.export and onnxscript narrate every pass on stdout and in warnings; keep the terminal to our lines
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, example, dynamo=True, input_names=["images"], output_names=["features"],
                                    dynamic_shapes=({0: batch},), opset_version=opset, external_data=False,
                                    verbose=False)
    model = program.model_proto
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(tmp))
    tmp.replace(out)
    return out


@contextlib.contextmanager
def _quiet(*names: str):  # noqa: ANN202 - a context manager
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def check_onnx(path: str | Path, net: nn.Module, image_size: int, batches: tuple[int, ...] = (1, 3),
               seed: int = 0) -> OnnxCheck:
    """Run the file at ``path`` in onnxruntime (CPU) on random normalised images of each batch size and compare
    its features with ``net``'s in float32."""
    require_onnx()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst, scale = 0.0, 0.0
    net = net.eval().float()
    for n in batches:
        x = torch.randn(n, 3, image_size, image_size, generator=g)
        with torch.no_grad():
            ref = net(x)
        got = torch.from_numpy(sess.run(["features"], {"images": x.numpy()})[0])
        if got.shape != ref.shape:
            raise ValueError(f"{path}: onnxruntime gave features of shape {tuple(got.shape)} for a batch of {n}, "
                             f"PyTorch {tuple(ref.shape)}")
        worst = max(worst, (got - ref).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return OnnxCheck(worst, worst / max(scale, 1e-12), tuple(batches))
