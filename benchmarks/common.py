"""What every benchmark shares: the machine record, a command run once (skipped when its results exist), and
results files of one schema.

A results file is ``{"benchmark": NAME, "command": "python benchmarks/NAME.py ...", "date": ..., "machine":
machine(), "results": ...}``. The scripts run as ``python benchmarks/NAME.py``, so this folder is first on
``sys.path`` and they import this module (and each other) by name.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from moco.core.precision import cpu_flags, native_bf16

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DATA = REPO.parent / "shared" / "datasets" / "cifar10"  # CIFAR-10 as an ImageFolder, read in place
RESULTS = ROOT / "results"


def machine() -> dict[str, Any]:
    """The machine a figure was measured on: the CPU (model, torch's capability, native bf16, AVX-512 flags),
    threads, the GPU when there is one, and the versions."""
    model = platform.processor() or platform.machine()
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                     model)
    except OSError:
        pass
    import torchvision

    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu")),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "avx512": sorted(f for f in cpu_flags() or () if f.startswith("avx512")),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def write_results(name: str, results: Any, path: str | Path | None = None) -> Path:
    """``results`` in the one schema (the benchmark's name, the command that made it, the date, the machine) to
    ``path`` (default ``benchmarks/results/NAME.json``); returns the path."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(), "results": results}
    out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def run_once(out: Path, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """``moco CMD --out OUT`` run as a subprocess unless ``OUT/results.json`` exists (resumed when interrupted),
    its wall time from outside (start-up included) kept in ``OUT/wall.txt``; returns results.json with
    ``wall_outside_s``."""
    res = out / "results.json"
    if not res.is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moco", *cmd, "--out", str(out), "--no-progress", "--resume", "auto"],
                       check=True, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
        (out / "wall.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    r = json.loads(res.read_text())
    wall = out / "wall.txt"
    r["wall_outside_s"] = float(wall.read_text()) if wall.is_file() else None
    return r
