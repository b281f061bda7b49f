"""What a time budget buys: the main job under ``--time-budget`` against the fixed-epoch preset, back to back,
and kNN top-1 at several budgets (issue #17).

    python benchmarks/budget.py [--preset cifar10-cpu] [--budgets 15m] [--fixed]      # one occasion
    python benchmarks/budget.py --budgets 5m 10m 15m 30m                               # the budget curve
    python benchmarks/budget.py --budgets 14m50s --fixed-epochs 3                      # against a hand-sized run

Each run is the real command (``moco pretrain --preset P --time-budget B``, whose final kNN is in its summary
line), timed from the outside: wall time includes the interpreter's start-up. ``--fixed`` also runs the preset
as shipped (its fixed number of epochs) right after, so the two are compared on the same machine the same
day. ``--fixed-epochs N`` runs the preset for N epochs instead: on a machine too slow for the preset's epochs
in the budget, the fixed schedule a user would size by hand to fit it. The machine's speed at the time (the
preset's training images/s in each run) and the precision that ran are recorded with every result. Appends to
benchmarks/results/budget_PRESET.json, one record per occasion.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import machine

from moco.training.budget import parse_duration

ROOT = Path(__file__).resolve().parent


def run(preset: str, data: str, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "moco", "pretrain", "--preset", preset, "--data", data, "--out", str(out),
           "--overwrite", "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["type"] == "epoch"]
    precision = yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"]
    return {"command": " ".join(cmd[2:]), "wall_s": round(wall, 1), "knn_top1": summary.get("knn_top1"),
            "precision": precision,
            "epochs_reached": round(summary["step"] / max(1, epochs[0]["step"]), 2) if epochs else 0,
            "steps": summary["step"], "images_per_sec": epochs[0]["images_per_sec"] if epochs else None,
            "plans": sum(r["type"] == "plan" for r in recs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar10-cpu")
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--budgets", nargs="+", default=["15m"])
    ap.add_argument("--fixed", action="store_true", help="also run the fixed-epoch preset, back to back")
    ap.add_argument("--fixed-epochs", type=int, help="also run the preset for this many epochs, back to back")
    ap.add_argument("--runs", default="runs")
    a = ap.parse_args()
    occasion = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv]),
                "machine": machine(), "runs": {}}  # each occasion appended, with the machine it ran on
    for b in a.budgets:
        occasion["runs"][b] = run(a.preset, a.data, Path(a.runs) / f"budget-{a.preset}-{b}", ["--time-budget", b])
        occasion["runs"][b]["budget_used"] = round(occasion["runs"][b]["wall_s"] / parse_duration(b), 4)
        print(b, occasion["runs"][b], flush=True)
    if a.fixed:
        occasion["runs"]["fixed"] = run(a.preset, a.data, Path(a.runs) / f"budget-{a.preset}-fixed", [])
        print("fixed", occasion["runs"]["fixed"], flush=True)
    if a.fixed_epochs:
        name = f"fixed {a.fixed_epochs} epochs"
        occasion["runs"][name] = run(a.preset, a.data, Path(a.runs) / f"budget-{a.preset}-e{a.fixed_epochs}",
                                     ["--epochs", str(a.fixed_epochs)])
        print(name, occasion["runs"][name], flush=True)
    print("\n| run | kNN top-1 | epochs | wall s | of the budget | train img/s | precision | plans |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, r in occasion["runs"].items():
        used = f"{100 * r['budget_used']:.1f}%" if "budget_used" in r else "-"
        print(f"| {name} | {r['knn_top1']:.2f}% | {r['epochs_reached']} | {r['wall_s']} | {used} | "
              f"{r['images_per_sec'] or 0:.0f} | {r['precision']} | {r['plans']} |")
    path = ROOT / "results" / f"budget_{a.preset}.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([*history, occasion], indent=2) + "\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
