"""Print docs/results.md: the headline figures, each read from the results file in benchmarks/results/ that a
benchmark script wrote, with the date, the machine and the commit that added the file.

    python scripts/results_doc.py > docs/results.md

A row is (what, results file, a function of that file's contents giving the figure). Nothing on the page is
typed: a figure that changes is re-measured by its benchmark and this page regenerated.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def commit(name: str) -> str:
    """The commit that last wrote ``benchmarks/results/NAME`` (uncommitted: not yet)."""
    out = subprocess.run(["git", "log", "-1", "--format=%h", "--", f"benchmarks/results/{name}"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    return out or "uncommitted"


def machine(d: Any) -> str:
    """The machine a file names, in a few words (files of the older schemas say less)."""
    m = d.get("machine") if isinstance(d, dict) else None
    if isinstance(m, dict):
        bf16 = m.get("native_bf16")
        return f"{m.get('cpu', '?')}, {m.get('capability', '?')}" + (", native bf16" if bf16 else ", fp32" if
                                                                       bf16 is False else "")
    if isinstance(d, dict) and isinstance(d.get("cpu"), dict):
        c = d["cpu"]
        return f"{c.get('model', '?')}, {c.get('capability', '?')}" + (", native bf16" if c.get("native_bf16") else
                                                                       ", fp32")
    if isinstance(d, dict) and d.get("cpu_capability"):
        return f"{d.get('cpu', 'x86_64')}, {d['cpu_capability']}"
    return str(m or "2-core x86-64 CPU")


def date(d: Any) -> str:
    return str(d.get("date", "?"))[:10] if isinstance(d, dict) else "?"


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def _runs(d: dict, prefix: str, key: str) -> list[float]:
    return [v[key] for k, v in d["results"]["runs"].items() if k.startswith(prefix)]


def photos(d: dict) -> str:
    r = d["results"]
    return "; ".join(f"{k.split('/')[0]}: {v['knn_top1']:.2f}% kNN ({v['recipe']}, {v['epoch']} epochs)"
                     for k, v in r.items())


ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("main job (`cifar10-cpu --time-budget 14m50s`), native bf16", "main_job_bf16.json",
     lambda d: f"{d['knn_top1']:.2f}% kNN after {d['epochs']} epochs, {d['wall_s']} s of the 900; peak memory "
               f"{d['peak_rss_gb']} GB"),
    ("main job on an AVX2 CPU in fp32 (`--time-budget 14m50s`)", "budget_cifar10-cpu.json",
     lambda d: f"{d[0]['runs']['14m50s']['knn_top1']:.2f}% kNN after {d[0]['runs']['14m50s']['epochs_reached']} "
               f"epochs, {d[0]['runs']['14m50s']['wall_s']:.0f} s"),
    ("`cifar10-cpu`, its fixed 10 epochs", "cifar10_cpu.json",
     lambda d: f"{d['knn_top1']:.2f}% kNN in {d['total_wall_s']:.0f} s (random init: "
               f"{d['random_init_knn_top1']:.2f}%)"),
    ("`cifar10-v3-cpu` (v3 recipe, 5 epochs)", "cifar10_v3_cpu.json",
     lambda d: f"{d['knn_top1']:.2f}% kNN in {d['total_wall_s']:.0f} s"),
    ("speed against the authors' loop style, same network", "speed.json",
     lambda d: " and ".join(f"{r['speedup_vs_reference']:.2f}x the images/s ({r['preset']})" for r in d["rows"])),
    ("15 minutes of wall time, ours against that loop", "time_to_accuracy.json",
     lambda d: " against ".join(f"{r['knn_top1']:.2f}%" for r in d["rows"]) + " kNN"),
    ("fine-tuning speed against a plain torchvision-style loop", "finetune_speed_cpu.json",
     lambda d: f"{d['speed']['ratio']}x the images/s ({d['speed']['ours_images_per_sec']} against "
               f"{d['speed']['plain_images_per_sec']})"),
    ("detection (`moco detect`) on pasted CIFAR-10 objects, 4 minutes each, 2 seeds", "detect_cpu_4m.json",
     lambda d: f"MoCo {mean(_runs(d, 'checkpoint', 'AP')):.2f} AP against random init "
               f"{mean(_runs(d, 'random', 'AP')):.2f}"),
    ("segmentation (`moco segment`) on the pasted objects' class maps, 4 minutes each, 2 seeds", "segment_cpu.json",
     lambda d: f"MoCo {mean(_runs(d, 'moco', 'mIoU')):.2f} mIoU against random init "
               f"{mean(_runs(d, 'random', 'mIoU')):.2f} (labels: {mean(_runs(d, 'supervised', 'mIoU')):.2f})"),
    ("labels saved on CIFAR-10 (`moco evaluate`, 40 min)", "evaluate_cifar10.json",
     lambda d: d["results"]["savings"]["MoCo"]["line"].split(":")[0]),
    ("labels saved on grayscale 40-px images (`moco evaluate`, 20 min)", "evaluate_gray40.json",
     lambda d: d["results"]["savings"]["MoCo"]["line"].split(":")[0]),
    ("photos (3,068 clothing photos), 6 minutes: chosen recipe, 32-px recipe, `imagenet-v2`", "photos_pretrain_6m.json",
     photos),
    ("photos, 30 minutes: the 32-px recipe (what the chooser now takes) and the 48-px one it took before",
     "photos_pretrain_30m.json", photos),
    ("photos, 6 minutes on a CPU without bf16: chosen recipe against the shipped 32-px preset (K=4096)",
     "photos_pretrain_6m_avx2.json", photos),
    ("labels saved on the photos (`moco evaluate`, 16 min, the 30-minute 48-px backbone)", "evaluate_photos.json",
     lambda d: d["results"]["savings"]["MoCo"]["line"].split(":")[0]),
    ("4,000-px JPEGs to the pretraining cache: full against reduced decode", "decode_photos.json",
     lambda d: f"{d['results']['full_ms']} against {d['results']['reduced_ms']} ms an image "
               f"({d['results']['speedup']}x)"),
    ("`moco detect` on 4,000 x 3,000 photos", "detect_photos.json",
     lambda d: f"trains at {d['results'].get('min_size', '?')} px; first epoch peak memory "
               f"{d['results']['peak_rss_gb']} GB"),
    ("`moco detect` on the same photos at the recipe's 8 images a step", "detect_photos_b8.json",
     lambda d: f"first epoch peak memory {d['results']['peak_rss_gb']} GB"),
]

INTRO = """# Results

Every figure below is read from the results file a benchmark script wrote (`benchmarks/results/`, one schema:
the command, the date, the machine), by `python scripts/results_doc.py > docs/results.md`; how each is made, and
every variant tried, is in `benchmarks/README.md`. All were measured on 2-core x86-64 CPUs: one with native bf16
(AMD Zen 4), others without it, where `train.precision=auto` runs fp32 at about a third of the speed. **No GPU
has run this code yet.** The paper's comparisons (`moco reproduce`) have reports of their own in `reports/`.

| what | result | date | machine | results file (commit) |
|---|---|---|---|---|
"""


def budget_curve() -> str:
    """What more time buys: every budget of ``budget_cifar10-cpu.json`` (its latest run)."""
    name = "budget_cifar10-cpu.json"
    if not (RESULTS / name).is_file():
        return ""
    seen: dict[str, dict] = {}
    for entry in load(name):
        for budget, r in entry["runs"].items():
            if not budget.startswith("fixed"):
                seen[budget] = {**r, "date": entry["date"], "cpu": entry.get("cpu_capability")}  # the latest
    order = sorted(seen, key=lambda b: float(b.split("m")[0]) * 60 + (float(b.split("m")[1][:-1] or 0)
                                                                      if b.endswith("s") else 0))
    lines = ["", "What more time buys: `moco pretrain --preset cifar10-cpu --time-budget B` "
             f"(`{name}` ({commit(name)}); wall time of the whole command):", "",
             "| budget | kNN top-1 | epochs reached | wall time | precision | date |", "|---|---|---|---|---|---|"]
    for b in order:
        r = seen[b]
        lines.append(f"| {b} | {r['knn_top1']:.2f}% | {r['epochs_reached']:.2f} | {r['wall_s']:.0f} s | "
                     f"{r['precision']} ({r['cpu']}) | {r['date'][:10]} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    rows = []
    for what, name, figure in ROWS:
        if not (RESULTS / name).is_file():
            continue
        d = load(name)
        rows.append(f"| {what} | {figure(d)} | {date(d if isinstance(d, dict) else d[0])} | "
                    f"{machine(d if isinstance(d, dict) else d[0])} | `{name}` ({commit(name)}) |")
    return INTRO + "\n".join(rows) + "\n" + budget_curve()


if __name__ == "__main__":
    print(render(), end="")
