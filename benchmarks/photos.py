"""Pretraining on real photos at a time budget: the recipe `moco pretrain` chooses against the 32-px recipe and
the `imagenet-v2` preset, each with a queue that fits the set; kNN top-1 on the held-out split.

    python benchmarks/make_photo_set.py --repo CLOTHING_REPO --out benchmarks/runs/clothing
    python benchmarks/photos.py --data benchmarks/runs/clothing --budget 6m [--recipes chosen cifar32 v2] [--seed 0]

Each recipe is one `moco pretrain --data DATA --time-budget BUDGET` run (a subprocess: start-up, decoding and
the final kNN are inside the budget), one after another, never side by side. Runs already finished are read
back, not run again. Prints a table and writes benchmarks/results/photos_pretrain_BUDGET.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, write_results

QUEUE = "method.K=512"  # a quarter of the clothing set's 3,068 training photos, as the chooser takes it
RECIPES = {
    "chosen": [],  # no preset: the recipe chosen from the data and the machine
    "cifar32": ["--preset", "cifar10-cpu", "--set", QUEUE],  # the 32-px recipe with a queue that fits
    "cifar32-preset": ["--preset", "cifar10-cpu"],  # as shipped (K=4096): what `--data PHOTOS` ran before #48
    # MoCo v2, ResNet-50 at 224 px; batch 128 (lr scaled to it) so that its activations fit 24 GB with room
    "v2": ["--preset", "imagenet-v2", "--set", QUEUE, "--set", "data.workers=2", "--batch-size", "128",
           "--lr", "0.015"],
}


def run(name: str, data: str, budget: str, seed: int, out: Path) -> dict:
    done = out / "summary.json"
    if not done.is_file():
        cmd = [sys.executable, "-m", "moco", "pretrain", "--data", data, "--time-budget", budget, "--seed", str(seed),
               "--out", str(out), "--no-progress", "--overwrite", *RECIPES[name]]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, check=True, capture_output=True, text=True)
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        summary["wall_outside_s"] = round(time.perf_counter() - t0, 1)
        summary["command"] = " ".join(["moco", *cmd[3:]])
        summary["machine"] = machine()  # each run's own: the file gathers runs made on other days
        done.write_text(json.dumps(summary, indent=2) + "\n")
    summary = json.loads(done.read_text())
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    m, d = cfg["model"], cfg["data"]
    summary["recipe"] = (f"{m['arch']} w{m['width']}{' cifar stem' if m['cifar_stem'] else ''} at "
                         f"{d['image_size']} px, {d['augmentation']} aug, K={cfg['method']['K']}, batch "
                         f"{cfg['optim']['batch_size']}")
    recipe = out / "recipe.json"
    if recipe.is_file():
        summary["chosen"] = json.loads(recipe.read_text())
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "runs" / "clothing"))
    ap.add_argument("--budget", default="6m")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="results/photos_pretrain_BUDGET_TAG.json: runs of another machine")
    a = ap.parse_args()
    name = f"photos_pretrain_{a.budget}" + (f"_{a.tag}" if a.tag else "")
    path = ROOT / "results" / f"{name}.json"
    results = json.loads(path.read_text())["results"] if path.is_file() else {}
    for recipe in a.recipes:
        key = f"{recipe}/seed{a.seed}"
        results[key] = run(recipe, a.data, a.budget, a.seed,
                           ROOT / "runs" / f"photos-{a.budget}{'-' + a.tag if a.tag else ''}-{recipe}-s{a.seed}")
        r = results[key]
        print(f"{key:16s} kNN {r.get('knn_top1', float('nan')):6.2f}%  epochs {r['epoch']:4d}  steps {r['step']:5d}  "
              f"wall {r['wall_outside_s']:6.1f} s  {r['recipe']}", flush=True)
    write_results(name, results, path)


if __name__ == "__main__":
    main()
