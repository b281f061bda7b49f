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


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The x86 CPU flags of bf16 arithmetic in hardware (Zen 4, Cooper Lake, Sapphire Rapids on)."""


def cpu_flags() -> set[str] | None:
    """The CPU's flags from ``/proc/cpuinfo``, or None where there is none to read (not Linux x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), None)
    except OSError:
        return None
    return set(line.split(":", 1)[1].split()) if line else None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 at speed: a CUDA GPU with bf16 (Ampere on), a CPU with bf16 instructions
    (AVX512_BF16 or AMX). oneDNN also accepts AVX-512 CPUs without them (Ice Lake), where it converts to fp32
    and back around every operation: there the main job ran 2.3x slower in bf16 than in fp32, so they get fp32.
    Where the flags cannot be read, oneDNN's own answer counts."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
    flags = cpu_flags()
    return onednn if flags is None else onednn and any(f in flags for f in BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes bf16 where ``device`` runs it natively and fp32 elsewhere; other values stay."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on ``device``; a no-op for fp32 (``auto`` is resolved for ``device`` first)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last (faster convolutions on CPUs and tensor cores) or the default contiguous layout."""
    return torch.channels_last if channels_last else torch.contiguous_format
