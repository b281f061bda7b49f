"""The GPU checks in one prepared run: images/s ours vs the reference loop, then cifar10-demo against the clock.

1. Throughput, ours vs benchmarks/reference_loop.py (same model, batch and recipe, same run):
   ResNet-18 CIFAR (the cifar10-demo preset, batch 512) and ResNet-50 at 224 px (imagenet-v2, batch 256).
   * synthetic: no files. Ours augments a random uint8 batch on the GPU and steps; the reference steps
     on a random float batch already on the GPU (it gets its augmentation for free).
   * real: from JPEG files. ResNet-18: ours from the decoded CIFAR-10 cache (the preset's pipeline),
     the reference with PIL in DataLoader workers. ResNet-50: a folder of 256-px JPEGs (CIFAR-10
     images upscaled, made here); ours decodes on the GPU (data.pipeline=device, nvJPEG), the
     reference with PIL in workers.
2. The cifar10-demo preset as the authors ran it (the 200-epoch schedule; 82.58% kNN at the end on one
   V100) with the kNN monitor after every epoch, until the time left runs out (SIGTERM: a checkpoint is
   saved). Its per-epoch kNN of the head's output (what the demo scores) is laid beside the authors'
   curve (../shared/docs/reference/moco-cifar10-demo-curve.json, or the copy --pack puts in .gpu/): the
   difference per epoch and at the last epoch reached.

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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import machine
from reference_loop import reference_images_per_sec
from speed import measure

from moco.config import resolve
from moco.data.cache import DecodedImages, decode_images
from moco.data.encoded import EncodedFiles
from moco.data.folder import ImageList, find_split, scan_images
from moco.data.pipelines import device_batches

ROOT = Path(__file__).resolve().parent
CASES = {  # name -> (preset, overrides, image size)
    "resnet18-cifar": ("cifar10-demo", [], 32),
    "resnet50-224": ("imagenet-v2", ["optim.batch_size=256"], 224),
}


def environment(device: torch.device) -> dict:
    env = {**machine(), "cpu_count": os.cpu_count(), "device": str(device)}
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
    if CURVE_PLACES[0].is_file():  # the authors' curve travels too: the GPU machine does not see ../shared
        shutil.copyfile(CURVE_PLACES[0], dst.parent / CURVE_NAME)


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


CURVE_NAME = "moco-cifar10-demo-curve.json"
CURVE_PLACES = (ROOT.parent.parent / "shared" / "docs" / "reference" / CURVE_NAME, ROOT.parent / ".gpu" / CURVE_NAME)


def reference_curve() -> dict[int, float]:
    """The authors' demo run, epoch -> kNN top-1 (from ../shared, or the copy --pack puts in .gpu/)."""
    for path in CURVE_PLACES:
        if path.is_file():
            return {int(row[0]): float(row[1]) for row in json.loads(path.read_text())["rows"]}
    return {}


def beside_reference(curve: list[dict], reference: dict[int, float]) -> dict:
    """Our per-epoch head kNN beside the authors' (the same 200-epoch schedule): the difference per epoch and
    at the last epoch reached."""
    rows = [{"epoch": p["epoch"], "ours_head": p["knn_head_top1"], "authors": reference[p["epoch"]],
             "diff": round(p["knn_head_top1"] - reference[p["epoch"]], 2)}
            for p in curve if "knn_head_top1" in p and p["epoch"] in reference]
    if not rows:
        return {"rows": []}
    return {"rows": rows, "last_epoch": rows[-1], "mean_diff": round(sum(r["diff"] for r in rows) / len(rows), 2)}


def demo_run(data: Path, out: Path, device: str, seconds: float, workers: int, quick: bool, log) -> dict:
    """cifar10-demo as the authors ran it (the 200-epoch schedule, kNN of the head and the backbone after every
    epoch) until ``seconds`` run out, then stopped with SIGTERM (which saves a checkpoint); per-epoch head kNN
    beside the authors' curve."""
    extra = []
    if quick:  # a tiny network on 512 images
        extra = ["--max-images", "512", "--set", "optim.batch_size=16", "--set", "model.width=8"]
    run = out / "cifar10-demo"
    cmd = [sys.executable, "-m", "moco", "pretrain", "--preset", "cifar10-demo", "--data", str(data / "train"),
           "--knn-train", str(data / "train"), "--knn-test", str(data / "test"), "--out", str(run), "--overwrite",
           "--device", device, "--no-progress", "--set", "train.eval_every=1", "--set", f"data.workers={workers}",
           *extra]
    log(f"demo: the 200-epoch schedule for {seconds:.0f} s: {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    try:
        proc.wait(timeout=max(1.0, seconds - 45))  # 45 s for the step in flight, the checkpoint and the exit
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
        log("demo: stopped at the time limit")
    wall = time.perf_counter() - t0
    curve, spent = [], 0.0  # spent: training + kNN monitor seconds so far (start-up excluded)
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "epoch":
                spent += r["epoch_time"] + r.get("eval_time", r.get("knn_time", 0.0))
                if "knn_top1" in r:
                    curve.append({"epoch": r["epoch"], "knn_top1": r["knn_top1"], "knn_features": r["knn_features"],
                                  "knn_head_top1": r.get("knn_head_top1"), "elapsed_s": round(spent, 1),
                                  "epoch_time": r["epoch_time"], "images_per_sec": r["images_per_sec"]})
    return {"paper_demo": {"epochs": 200, "knn_top1": 82.58, "hours_v100": 1.3}, "wall_s": wall,
            "knn_curve": curve, "beside_authors": beside_reference(curve, reference_curve()),
            "command": " ".join(cmd[2:])}


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
    if left > 60:
        result["demo"] = demo_run(data, out, a.device, left - 30, a.workers, a.quick, log)
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
    beside = {r["epoch"]: r for r in result["demo"].get("beside_authors", {}).get("rows", [])}
    print("\n| demo epoch | head kNN % | authors' % | difference | backbone kNN % | s so far |")
    print("|---|---|---|---|---|---|")
    for p in result["demo"].get("knn_curve", []):
        b = beside.get(p["epoch"], {})
        print(f"| {p['epoch']} | {p.get('knn_head_top1') or 0:.2f} | {b.get('authors', float('nan')):.2f} | "
              f"{b.get('diff', float('nan')):+.2f} | {p['knn_top1']:.2f} | {p['elapsed_s']} |")
    log(f"wrote {result_file}")


if __name__ == "__main__":
    main()
