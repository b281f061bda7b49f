"""The GPU checks in one prepared run: images/s ours vs the reference loop, then cifar10-demo against the clock.

1. Throughput, ours vs benchmarks/reference_loop.py (same model, batch and recipe, same run):
   ResNet-18 CIFAR (the cifar10-demo preset, batch 512) and ResNet-50 at 224 px (imagenet-v2, batch 256).
   * synthetic: no files. Ours augments a random uint8 batch on the GPU and steps; the reference steps
     on a random float batch already on the GPU (it gets its augmentation for free).
   * real: from JPEG files. ResNet-18: ours from the decoded CIFAR-10 cache (the preset's pipeline),
     the reference with PIL in DataLoader workers. ResNet-50: a folder of 256-px JPEGs (CIFAR-10
     images upscaled, made here); ours decodes on the GPU (data.pipeline=device, nvJPEG), the
     reference with PIL in workers.
2. The cifar10-demo preset (200 epochs in the authors' demo, 82.6% kNN) with the kNN monitor, for as
   many epochs as the measured throughput fits into the time left (all 200 when they fit); kNN top-1
   against wall-clock from its metrics.jsonl.

    python benchmarks/gpu_check.py --pack .gpu/cifar10.npz       # here: CIFAR-10's JPEG bytes in one file
    bash benchmarks/gpu_check.sh                                 # on the GPU machine (carry .gpu)
    python benchmarks/gpu_check.py --device cpu --quick          # smoke test of the script on a CPU

The device machine sees only the repository (64 MiB), not ../shared: ``--pack`` stores the 60k JPEG
files' bytes (55 MB) in one .npz that travels, and gpu_check.sh unpacks it there into an ImageFolder.

Writes gpu_check.json (GPU model, driver, torch/torchvision/CUDA versions, every number) into --out,
rewritten after every measurement so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from moco.config import resolve
from moco.data.cache import DecodedImages, decode_images
from moco.data.encoded import EncodedFiles
from moco.data.folder import ImageList, find_split, scan_images
from moco.data.pipelines import device_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_loop import reference_images_per_sec  # noqa: E402
from speed import measure  # noqa: E402

ROOT = Path(__file__).resolve().parent
CASES = {  # name -> (preset, overrides, image size)
    "resnet18-cifar": ("cifar10-demo", [], 32),
    "resnet50-224": ("imagenet-v2", ["optim.batch_size=256"], 224),
}


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def pack_folder(src: Path, dst: Path) -> None:
    """Every file of the ImageFolder ``src`` (train/ and test/) as raw bytes + relative paths in one .npz."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    blobs = [p.read_bytes() for p in files]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, data=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets,
             paths=np.array([str(p.relative_to(src)) for p in files]))
    print(f"packed {len(files)} files ({offsets[-1] / 1e6:.1f} MB) from {src} into {dst}")


def unpack_folder(pack: Path, dst: Path) -> None:
    """Write the files of a ``pack_folder`` archive under ``dst``."""
    z = np.load(pack)
    data, offsets = z["data"], z["offsets"]
    for i, rel in enumerate(z["paths"]):
        path = dst / str(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[offsets[i] : offsets[i + 1]].tobytes())
    print(f"unpacked {len(z['paths'])} files into {dst}")


def make_jpeg_folder(src: DecodedImages, out: Path, n: int, size: int = 256) -> ImageList:
    """``n`` CIFAR-10 images upscaled to ``size`` px and saved as JPEG (quality 90): ImageNet-sized files."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = out / f"{i:06d}.jpg"
        if not path.exists():
            Image.fromarray(src.array[i % len(src.array)]).resize((size, size), Image.BICUBIC).save(path, quality=90)
    return scan_images(out, max_images=n)


def random_images(n: int, size: int) -> DecodedImages:
    arr = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return DecodedImages(arr, ImageList(Path("."), [Path(f"{i}.jpg") for i in range(n)]), [])


def throughput(case: str, cifar: DecodedImages, jpegs: ImageList, device: str, steps: int, workers: int,
               log, extra: list[str]) -> dict:
    preset, ov, size = CASES[case]
    ov = ov + extra
    cfg = resolve(preset, overrides=ov)
    b = cfg.optim.batch_size
    ov_w = ov + [f"data.workers={workers}"]
    row: dict = {"preset": preset, "overrides": ov, "batch_size": b, "image_size": size}
    n_syn = b * (steps + 3)
    row["ours_synthetic"] = measure(preset, ov_w, random_images(n_syn, size), steps, 2, device)["images_per_sec"]
    log(f"{case}: ours synthetic {row['ours_synthetic']:.0f} img/s")
    row["reference_synthetic"] = reference_images_per_sec(preset, ov, "", steps, device=device, synthetic=True)
    log(f"{case}: reference synthetic {row['reference_synthetic']:.0f} img/s")
    if size == 32:
        row["ours_real"] = measure(preset, ov_w, cifar, steps, 2, device)["images_per_sec"]
        row["ours_real_pipeline"] = "cached (decoded once), batched augmentation on the device"
        row["reference_real"] = reference_images_per_sec(preset, ov, str(cifar.images.root), steps, workers=workers,
                                                         device=device)
    else:
        ds = EncodedFiles(jpegs)

        def batches(cfg, gen, dev):
            return device_batches(ds, torch.randperm(len(jpegs), generator=gen), 0, cfg.data, cfg.optim.batch_size,
                                  gen, dev)

        row["ours_real"] = measure(preset, ov_w + ["data.pipeline=device"], None, steps, 2, device,
                                   batches=batches)["images_per_sec"]
        row["ours_real_pipeline"] = "device: workers read files, nvJPEG decode + batched augmentation on the device"
        row["reference_real"] = reference_images_per_sec(preset, ov, str(jpegs.root), steps, workers=workers,
                                                         device=device)
    row["reference_real_pipeline"] = f"PIL decode + per-image augmentation in {workers} DataLoader workers"
    log(f"{case}: ours real {row['ours_real']:.0f} img/s, reference real {row['reference_real']:.0f} img/s")
    row["speedup_synthetic"] = row["ours_synthetic"] / row["reference_synthetic"]
    row["speedup_real"] = row["ours_real"] / row["reference_real"]
    return row


def demo_run(data: Path, out: Path, device: str, seconds: float, images_per_sec: float, n_train: int,
             workers: int, quick: bool, log) -> dict:
    """cifar10-demo with the kNN monitor for the epochs that fit ``seconds``; kNN vs wall-clock."""
    epochs = int(min(200, max(1, 0.85 * seconds * images_per_sec / n_train)))  # 15% for kNN monitors, start-up
    extra = []
    if quick:  # one epoch of a tiny network on 512 images
        epochs, extra = 1, ["--max-images", "512", "--set", "optim.batch_size=16", "--set", "model.width=8"]
    knn_every = max(1, epochs // 10)
    run = out / "cifar10-demo"
    cmd = [sys.executable, "-m", "moco", "pretrain", "--preset", "cifar10-demo", "--data", str(data / "train"),
           "--knn-train", str(data / "train"), "--knn-test", str(data / "test"), "--out", str(run), "--overwrite",
           "--epochs", str(epochs), "--device", device, "--no-progress", "--set", f"train.knn_every={knn_every}",
           "--set", f"data.workers={workers}", *extra]
    log(f"demo: {epochs} epochs planned (kNN every {knn_every}): {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired:
        log("demo: stopped at the time limit")
    wall = time.perf_counter() - t0
    curve, spent = [], 0.0  # spent: training + kNN monitor seconds so far (start-up excluded)
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "epoch":
                spent += r["epoch_time"] + r.get("knn_time", 0.0)
                if "knn_top1" in r:
                    curve.append({"epoch": r["epoch"], "knn_top1": r["knn_top1"], "elapsed_s": round(spent, 1),
                                  "images_per_sec": r["images_per_sec"]})
    return {"epochs_planned": epochs, "paper_demo": {"epochs": 200, "knn_top1": 82.6, "hours_v100": 1.3},
            "wall_s": wall, "knn_curve": curve, "command": " ".join(cmd[2:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole script (default 9 min)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per throughput measurement")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script on any machine")
    ap.add_argument("--pack", metavar="NPZ", help="only pack --data's files into NPZ (to carry to the GPU machine)")
    ap.add_argument("--unpack", metavar="NPZ", help="only unpack NPZ into --data")
    a = ap.parse_args()
    if a.pack or a.unpack:
        pack_folder(Path(a.data), Path(a.pack)) if a.pack else unpack_folder(Path(a.unpack), Path(a.data))
        return
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "gpu_check.json"
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f}s] {msg}", flush=True)

    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "environment": environment(device),
                    "command": "bash benchmarks/gpu_check.sh", "throughput": {}}

    def save() -> None:
        result_file.write_text(json.dumps(result, indent=2) + "\n")

    save()
    log(f"environment: {result['environment']}")
    data = Path(a.data)
    train_dir, test_dir = find_split(data)
    cifar = decode_images(scan_images(train_dir, max_images=2048 if a.quick else None), 32,
                          workers=a.workers, progress=False)
    steps = 2 if a.quick else a.steps
    jpegs = make_jpeg_folder(cifar, Path(os.environ.get("TMPDIR", "/tmp")) / "moco-gpu-check-jpegs",
                             16 * (steps + 3) if a.quick else 256 * (steps + 3))
    log(f"data ready: {len(cifar.array)} decoded CIFAR-10 images, {len(jpegs)} 256-px JPEGs")
    quick = ["optim.batch_size=16", "model.arch=resnet18", "model.width=8"] if a.quick else []
    for case in CASES:
        try:
            result["throughput"][case] = throughput(case, cifar, jpegs, a.device, steps, a.workers, log, quick)
        except Exception as e:  # noqa: BLE001 - record the failure, go on with the next check
            result["throughput"][case] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{case}: failed: {e}")
        save()
    left = a.budget - (time.perf_counter() - t_start)
    r18 = result["throughput"].get("resnet18-cifar", {})
    rate = r18.get("ours_real", 1000.0)
    n_train = len(cifar.array)
    if left > 60:
        result["demo"] = demo_run(data, out, a.device, left - 30, rate, n_train, a.workers, a.quick, log)
    else:
        result["demo"] = {"skipped": f"only {left:.0f} s left"}
    result["total_s"] = time.perf_counter() - t_start
    save()
    print("\n| network | data | ours img/s | reference img/s | ours / reference |\n|---|---|---|---|---|")
    for case, r in result["throughput"].items():
        for kind in ("synthetic", "real"):
            if f"ours_{kind}" in r:
                print(f"| {case} | {kind} | {r[f'ours_{kind}']:.0f} | {r[f'reference_{kind}']:.0f} | "
                      f"{r[f'speedup_{kind}']:.2f}x |")
    for p in result["demo"].get("knn_curve", []):
        print(f"demo epoch {p['epoch']}: kNN {p['knn_top1']:.2f}% at {p['elapsed_s']} s")
    log(f"wrote {result_file}")


if __name__ == "__main__":
    main()
