"""What this installation can do (``moco info --system``): the versions, the devices, whether bf16 runs
natively, the cores and memory, and which optional extras are installed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from typing import Any

import torch

from moco.core.precision import native_bf16

EXTRAS = {  # extra -> the modules it brings (each must import)
    "onnx": ("onnx", "onnxscript", "onnxruntime"), "mlflow": ("mlflow",), "wandb": ("wandb",),
    "map": ("openTSNE",), "timm": ("timm",), "dev": ("pytest", "ruff", "mkdocs"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def host_memory_gb(available: bool = False) -> float | None:
    """The host's memory in GB (``available``: what is free now), or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES" if available else "SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def system_report() -> dict[str, Any]:
    """The installation as a dict: versions, CPU (torch's capability, native bf16, cores, memory), CUDA (its
    version and each GPU's name and memory, bf16), and each extra's presence."""
    import torchvision

    try:
        version = importlib.metadata.version("momentum-contrast")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
        version = "not installed"

    mem_gb, cores = host_memory_gb(), usable_cores()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                         "bf16": native_bf16(torch.device("cuda", i))})
    return {
        "momentum-contrast": version, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu": {"machine": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
                "native_bf16": native_bf16(torch.device("cpu")), "cores": cores, "threads": torch.get_num_threads(),
                "memory_gb": round(mem_gb, 1) if mem_gb else None},
        "cuda": {"built": torch.version.cuda, "available": torch.cuda.is_available(), "gpus": gpus},
        "extras": {name: all(_installed(m) for m in mods) for name, mods in EXTRAS.items()},
    }


def system_lines(r: dict[str, Any]) -> list[str]:
    """:func:`system_report` as the lines ``moco info --system`` prints."""
    c, g = r["cpu"], r["cuda"]
    lines = [f"momentum-contrast {r['momentum-contrast']}, python {r['python']}, torch {r['torch']}, "
             f"torchvision {r['torchvision']}",
             f"cpu         {c['machine']}, {c['capability']}, {c['cores']} cores ({c['threads']} threads), "
             f"{c['memory_gb']} GB, bf16 {'native' if c['native_bf16'] else 'not native: fp32'}"]
    if g["gpus"]:
        lines += [f"gpu {i}       {x['name']}, {x['memory_gb']} GB, bf16 {'yes' if x['bf16'] else 'no'} (CUDA "
                  f"{g['built']})" for i, x in enumerate(g["gpus"])]
    else:
        build = f"torch built with CUDA {g['built']}" if g["built"] else "a CPU build of torch"
        lines.append(f"gpu         none ({build})")
    have = [k for k, v in r["extras"].items() if v]
    miss = [k for k, v in r["extras"].items() if not v]
    lines.append(f"extras      {', '.join(have) or 'none'}"
                 + (f"; not installed: {', '.join(miss)} (pip install 'momentum-contrast[{','.join(miss)}]')" if miss
                    else ""))
    return lines
