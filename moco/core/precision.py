"""Where and in what precision tensors run: device choice, autocast, memory format."""

from __future__ import annotations

import contextlib

import torch

from moco.core.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; refuses CUDA without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here")
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on ``device``; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last (faster convolutions on CPUs and tensor cores) or the default contiguous layout."""
    return torch.channels_last if channels_last else torch.contiguous_format
