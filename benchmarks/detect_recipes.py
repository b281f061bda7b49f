"""Detection recipes compared at an equal budget (issue #39): `moco detect` on the pasted set with one recipe
difference at a time, each run's AP, AP50, training images/s and steps, so that a CPU default is chosen by AP per
minute.

    python benchmarks/detect_recipes.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt [--budget 4m]
        [--seeds 0] [--only NAME ...] [--base KEY=VALUE ...]

Each variant is the base (`--base`, default: none, the recipe as it stands) plus its settings (`VARIANTS`).
Runs go to benchmarks/runs/detect_plain/BUDGET/moco-default-TAG-sSEED (shared with detect_plain.py, skipped
when done). Prints a table; writes benchmarks/results/detect_recipes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

from common import ROOT, machine, write_results
from detect_plain import moco_run, tag_of

OLD = ["detect.rois_per_image=512", "detect.rpn_per_image=256", "optim.batch_size=8", "detect.rpn_post_nms=2000",
       "detect.roi_sampling=2", "detect.flip=0.5", "detect.anchor_ratios=[0.5,1.0,2.0]"]  # the defaults before #39


def _with(*settings: str, base: tuple[str, ...] = ()) -> list[str]:
    """The old defaults with ``base`` and then ``settings`` over them (a later value of a key wins)."""
    return [*OLD, *base, *settings]


SMALL = ("detect.rois_per_image=128", "detect.rpn_per_image=128", "detect.rpn_post_nms=1000")
VARIANTS: dict[str, list[str]] = {
    "512 RoIs, batch 8 (the old default)": _with(),
    "128 RoIs, batch 8": _with("detect.rois_per_image=128"),
    "128 RoIs, batch 16": _with("detect.rois_per_image=128", "optim.batch_size=16"),
    "128 RoIs, 128 RPN samples, 1,000 proposals (batch 8)": _with(base=SMALL),
    "... with 1 RoIAlign sample a bin side": _with("detect.roi_sampling=1", base=SMALL),
    "... without flips": _with("detect.flip=0", base=SMALL),
    "... square anchors only": _with("detect.anchor_ratios=[1.0]", base=SMALL),
    "... FPN of 32 channels": _with("detect.fpn_channels=32", "detect.box_head_dim=128", base=SMALL),
    "... shorter sides 80-112 (multi-scale)": _with("detect.min_size=[80,88,96,104,112]", "detect.max_size=187",
                                                    base=SMALL),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(ROOT / "runs" / "pasted"))
    ap.add_argument("--budget", default="4m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--only", nargs="+", help="variants by their position (0, 1, ...)", type=int)
    ap.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="settings under every variant")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "detect_plain"))
    ap.add_argument("--json", default=str(ROOT / "results" / "detect_recipes.json"))
    a = ap.parse_args()
    a.recipe = "default"
    out: dict[str, Any] = {"checkpoint": a.checkpoint, "budget": a.budget, "base": a.base, "variants": {}}
    chosen = [v for i, v in enumerate(VARIANTS) if a.only is None or i in a.only]
    for name in chosen:
        settings = [*a.base, *VARIANTS[name]]
        runs = []
        for seed in a.seeds:
            run = Path(a.runs) / a.budget / f"moco-default-{tag_of(settings)}-s{seed}"
            failed = run / "failed.json"
            try:
                r = json.loads(failed.read_text()) if failed.is_file() else moco_run(run, a, seed, settings)
            except subprocess.CalledProcessError:  # a run that diverged: kept in the table as such, not re-run
                steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
                r = {"AP": None, "AP50": None, "images_per_sec": None, "steps": steps[-1]["step"] if steps else 0,
                     "failed": "the loss became NaN (moco detect stopped)"}
                failed.write_text(json.dumps(r) + "\n")
            runs.append(r | {"seed": seed})
            print(f"{name} (seed {seed}): {r}", flush=True)
        out["variants"][name] = {"settings": settings, "runs": runs}
    print(f"\n{machine()['cpu']} ({machine()['capability']}), budget {a.budget} per run, seeds {a.seeds}")
    print("| recipe | AP | AP50 | training images/s | steps |\n|---|---|---|---|---|")
    for name in chosen:
        rs = [r for r in out["variants"][name]["runs"] if r["AP"] is not None]
        if not rs:
            print(f"| {name} | diverged | | | |")
            continue
        mean = {k: statistics.mean(r[k] for r in rs) for k in ("AP", "AP50", "images_per_sec", "steps")}
        print(f"| {name} | {mean['AP']:.2f} | {mean['AP50']:.2f} | {mean['images_per_sec']:.2f} | "
              f"{mean['steps']:.0f} |")
    write_results("detect_recipes", out, a.json)


if __name__ == "__main__":
    main()
