"""Pretraining from WebDataset shards against the folder's per_image pipeline, on a CPU (issue #26).

    python benchmarks/shards_cpu.py [--budget 90] [--rounds 2] [--checkpoint CK]
        [--parts speed loader loader_device rss torchrun one_process finetune]

* speed: `moco pretrain --preset cifar10-cpu` on CIFAR-10's training images for ``--budget`` seconds each, from
  the folder (``data.pipeline=per_image``, the same PIL views) and from its shards (`moco shards`, 16 MB
  each), ``--rounds`` times in turn; training images/s, the median of the step records after the first fifth,
  and the median of the rounds' ratios.
* loader: the data path alone at 224 px (CIFAR-10 images upscaled to 224-px JPEGs, the imagenet-v2 preset's
  views and augmentation): batches of 64 from the folder's per_image source and from the shards' source,
  no network; images/s. loader_device: the same with data.pipeline=device (workers pass JPEG bytes, the
  training device, here the CPU, decodes and augments whole batches), folder against shards.
* rss: peak resident memory of pretraining (``--budget`` seconds) over 10 and over 100 shards of the same
  size (500 samples each), to show that memory follows the buffers, not the data set.
* finetune (with --checkpoint): `moco finetune` with 1% of CIFAR-10's labels for 5 epochs, from the folder and
  from its shards: top-1, top-5 and wall time of each.
* one_process: 5 shards of 1,000 images written by plain tarfile, `moco pretrain --epochs 1 --batch-size 100`
  with 2 and 6 loader workers (more workers than shards): the steps and the keys trained (issue #34).
* torchrun: `moco pretrain --nproc 2` (gloo) from 12 uneven shards for 2 epochs with data.workers=2, every
  sample's key traced (``MOCO_TRACE_KEYS``): how often each key was trained on per epoch, and how many.

Data and runs go to benchmarks/runs/shards/ (made once); prints a table and writes
benchmarks/results/shards_cpu.json with the CPU's flags.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parent


CIFAR = ROOT.parent.parent / "shared" / "datasets" / "cifar10"
WORK = ROOT / "runs" / "shards"


def moco(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "moco", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})


def shards_of(folder: Path, out: Path, size: str) -> Path:
    if not list(out.glob("*.tar")):
        moco("shards", "--data", str(folder), "--out", str(out), "--shard-size", size, "--no-progress")
    return out


def images_per_sec(run: Path) -> float:
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ips = [r["images_per_sec"] for r in steps if r["type"] == "step"]
    return statistics.median(ips[len(ips) // 5:])


def pretrain(run: Path, data: str, budget: int, *sets: str, env: dict | None = None) -> Path:
    """A fresh `cifar10-cpu` run of ``budget`` seconds in ``run`` (a run left there is replaced: its budget or
    code may have been another)."""
    moco("pretrain", "--preset", "cifar10-cpu", "--data", data, "--out", str(run), "--no-progress", "--no-knn",
         "--overwrite", "--time-budget", f"{budget}s", *[x for s in sets for x in ("--set", s)], env=env)
    return run


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory (MB) of the largest process ``cmd`` ran (itself or a loader worker)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
            " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def part_speed(budget: int, rounds: int) -> dict:
    """Folder and shards in turn, ``rounds`` times each (the machine's speed drifts): each round's ratio and
    their median."""
    shards = shards_of(CIFAR, WORK / "cifar10", "16MB")
    rows = []
    for r in range(rounds):
        folder = images_per_sec(pretrain(WORK / f"speed-folder-{r}", str(CIFAR), budget, "data.pipeline=per_image"))
        stream = images_per_sec(pretrain(WORK / f"speed-shards-{r}", str(shards), budget))
        rows.append({"folder_per_image_ips": round(folder, 1), "shards_ips": round(stream, 1),
                     "shards_over_folder": round(stream / folder, 3)})
        print(f"speed round {r}: {json.dumps(rows[-1])}", flush=True)
    return {"budget_s": budget, "rounds": rows,
            "folder_per_image_ips": round(statistics.median(x["folder_per_image_ips"] for x in rows), 1),
            "shards_ips": round(statistics.median(x["shards_ips"] for x in rows), 1),
            "shards_over_folder": round(statistics.median(x["shards_over_folder"] for x in rows), 3)}


def upscaled(n_per_class: int = 200) -> Path:
    """CIFAR-10 training images upscaled to 224-px JPEGs (quality 90), ``n_per_class`` per class."""
    from PIL import Image

    out = WORK / "c224" / "train"
    if out.is_dir():
        return out
    for cls in sorted(p.name for p in (CIFAR / "train").iterdir()):
        (out / cls).mkdir(parents=True)
        for f in sorted((CIFAR / "train" / cls).iterdir())[:n_per_class]:
            Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC).save(out / cls / f.name, quality=90)
    return out


def loader_ips(source, batches: int) -> float:  # noqa: ANN001 - a batch source
    it = source.epoch(None if getattr(source, "streams", False) else __import__("torch").randperm(
        len(source.images)), 0, 224, 1)
    next(it)  # workers started
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        q, _, _ = next(it)
        n += q.shape[0]
    return n / (time.perf_counter() - t0)


def part_loader(pipeline: str = "per_image") -> dict:
    import torch

    from moco.config import resolve
    from moco.data.folder import scan_images
    from moco.data.pipelines import open_source
    from moco.data.shards import resolve_shards
    from moco.data.stream import ShardSource

    folder = upscaled()
    shards = shards_of(folder, WORK / "c224-shards", "4MB")
    cfg = resolve("imagenet-v2", overrides=[f"data.pipeline={pipeline}", "data.workers=2"])
    gen, dev = torch.Generator().manual_seed(0), torch.device("cpu")
    source = open_source(scan_images(folder), cfg.data, 64, gen, dev)
    stream = ShardSource(resolve_shards(shards), cfg.data, 64, gen, dev)
    n = min(25, stream.steps - 1, len(source.images) // 64 - 1)  # the same batches from each, after the first
    a, b = loader_ips(source, n), loader_ips(stream, n)
    return {"batches": n, f"folder_{pipeline}_ips": round(a, 1), "shards_ips": round(b, 1),
            "shards_over_folder": round(b / a, 3)}


def repeated_shards(out: Path, n: int, per_shard: int = 500) -> Path:
    """``n`` shards of ``per_shard`` CIFAR-10 samples each (the images repeat across shards, under new keys)."""
    import tarfile

    if len(list(out.glob("*.tar"))) == n:
        return out
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((CIFAR / "train").rglob("*.jpg"))[: per_shard * 10]
    for j in range(n):
        with tarfile.open(out / f"part-{j:04d}.tar", "w") as tf:
            for i in range(per_shard):
                f = files[(j * per_shard + i) % len(files)]
                tf.add(f, arcname=f"s{j:04d}/{i:05d}.jpg")
    return out


def part_rss(budget: int) -> dict:
    res = {}
    for n in (10, 100):
        shards = repeated_shards(WORK / f"rss-{n}", n)
        run = WORK / f"rss-run-{n}"
        cmd = [sys.executable, "-m", "moco", "pretrain", "--preset", "cifar10-cpu", "--data", str(shards), "--out",
               str(run), "--no-progress", "--no-knn", "--time-budget", f"{budget}s", "--overwrite"]
        res[f"peak_rss_mb_{n}_shards"] = round(peak_rss_mb(cmd), 1)
    return res


def part_torchrun() -> dict:
    sizes = [700, 150, 420, 90, 380, 260, 510, 120, 330, 600, 210, 230]  # 4,000 samples, uneven
    out = WORK / "uneven"
    if not list(out.glob("*.tar")):
        import tarfile

        out.mkdir(parents=True)
        files = sorted((CIFAR / "train").rglob("*.jpg"))
        k = 0
        for j, n in enumerate(sizes):
            with tarfile.open(out / f"u-{j:02d}.tar", "w") as tf:
                for _ in range(n):
                    tf.add(files[k], arcname=f"u{j:02d}/{k:05d}.jpg")
                    k += 1
    trace, run = WORK / "trace", WORK / "torchrun-run"
    for p in (trace, run):
        subprocess.run(["rm", "-rf", str(p)], check=True)
    trace.mkdir(parents=True)
    moco("pretrain", "--nproc", "2", "--data", str(out), "--out", str(run), "--no-progress", "--no-knn",
         "--epochs", "2", "--batch-size", "64", "--set", "model.width=16", "--set", "method.K=1024",
         "--set", "data.workers=2", env={"MOCO_TRACE_KEYS": str(trace)})
    ranks, epochs = traced_epochs(trace, sum(sizes))
    return {"shards": sizes, "samples_per_rank": ranks, "epochs": epochs}


def traced_epochs(trace: Path, total: int) -> tuple[dict, dict]:
    """(samples each rank trained, per epoch: samples, distinct keys, the most any key came, their share of
    ``total``) from the ``MOCO_TRACE_KEYS`` files in ``trace``."""
    per_epoch: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    ranks = {}
    for f in sorted(trace.glob("keys-rank*.txt")):
        lines = [ln for ln in f.read_text().split("\n") if ln]
        ranks[f.stem] = len(lines)
        for line in lines:
            epoch, key = line.split(" ", 1)
            per_epoch[epoch][key] += 1
    epochs = {e: {"samples": sum(c.values()), "distinct_keys": len(c), "max_per_key": max(c.values()),
                  "share_of_keys": round(len(c) / total, 4)} for e, c in per_epoch.items()}
    return ranks, epochs


def part_one_process() -> dict:
    """Issue #34's first contact: 5 shards of 1,000 CIFAR-10 images written by plain tarfile, `moco pretrain
    --epochs 1 --batch-size 100` in one process with 2 and with 6 loader workers (more than shards): the steps
    and the keys trained."""
    import tarfile

    out = WORK / "five"
    if not list(out.glob("*.tar")):
        out.mkdir(parents=True)
        files = sorted((CIFAR / "train").rglob("*.jpg"))[:5000]
        for j in range(5):
            with tarfile.open(out / f"s-{j:06d}.tar", "w") as tf:
                for k in range(j * 1000, (j + 1) * 1000):
                    f = files[k]
                    tf.add(f, arcname=f"{f.parent.name}/{f.stem}.jpg")
    res = {}
    for workers in (2, 6):
        trace, run = WORK / f"trace-one-{workers}", WORK / f"one-run-{workers}"
        for p in (trace, run):
            subprocess.run(["rm", "-rf", str(p)], check=True)
        trace.mkdir(parents=True)
        moco("pretrain", "--data", str(out / "s-{000000..000004}.tar"), "--out", str(run), "--no-progress",
             "--no-knn", "--epochs", "1", "--batch-size", "100", "--workers", str(workers), "--overwrite",
             env={"MOCO_TRACE_KEYS": str(trace)})
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r["type"] == "epoch"][-1]
        _, epochs = traced_epochs(trace, 5000)
        res[f"workers_{workers}"] = {"steps": steps, "epochs": epochs}
    return res


def part_finetune(checkpoint: str) -> dict:
    """`moco finetune` of ``checkpoint`` with 1% of the labels for 5 epochs, from the folder and from its shards:
    the same labels should train to the same top-1."""
    if not checkpoint:
        raise SystemExit("the finetune part needs --checkpoint (a pretraining checkpoint)")
    shards = shards_of(CIFAR, WORK / "cifar10", "16MB")
    res = {}
    for name, data in (("folder", CIFAR), ("shards", shards)):
        out = WORK / f"finetune-{name}"
        t0 = time.perf_counter()
        moco("finetune", "--checkpoint", checkpoint, "--data", str(data), "--labels", "1%", "--epochs", "5",
             "--out", str(out), "--overwrite", "--no-progress")
        got = json.loads((out / "results.json").read_text())
        res[name] = {"top1": got["top1"], "top5": got["top5"], "images": got["labels"]["images"],
                     "wall_s": round(time.perf_counter() - t0, 1)}
    res["same_top1"] = res["folder"]["top1"] == res["shards"]["top1"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=90, help="seconds of each pretraining run (speed, rss)")
    ap.add_argument("--rounds", type=int, default=2, help="folder/shards pairs of the speed part, run in turn")
    ap.add_argument("--parts", nargs="+", default=["speed", "loader", "rss", "torchrun"])
    ap.add_argument("--checkpoint", default="", help="the backbone the finetune part fine-tunes")
    ap.add_argument("--json", default=str(ROOT / "results" / "shards_cpu.json"))
    a = ap.parse_args()
    res = {}
    parts = {"speed": lambda: part_speed(a.budget, a.rounds), "loader": part_loader,
             "loader_device": lambda: part_loader("device"), "rss": lambda: part_rss(a.budget),
             "torchrun": part_torchrun, "one_process": part_one_process,
             "finetune": lambda: part_finetune(a.checkpoint)}
    for name in a.parts:
        # the parts of one JSON come from several runs, on whichever machine each drew: each records its own
        res[name] = {**parts[name](), "command": " ".join(["python", *sys.argv]), "machine": machine(),
                     "date": time.strftime("%Y-%m-%d")}
        print(f"{name:9s} {json.dumps(res[name])}", flush=True)
    old = json.loads(Path(a.json).read_text()) if Path(a.json).is_file() else {}
    Path(a.json).write_text(json.dumps({**old, **res}, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
