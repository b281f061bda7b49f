"""How many labels pretraining saves, measured by `moco evaluate` on a labelled set: the labels-saved line and
its seeds' range, the fine-tuned top-1 of each init at each share, and the frozen protocols.

    python benchmarks/evaluate_cpu.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt \
        --data ../shared/datasets/cifar10 --budget 40m --name cifar10 [--labels 1% 10% 100%] [--seeds 2]

`moco evaluate` runs as a subprocess into benchmarks/runs/evaluate/NAME (resumed when run again after an
interruption, skipped when finished; its wall time is measured from outside, start-up included). Prints a table;
writes benchmarks/results/evaluate_NAME.json with the machine.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import ROOT, run_once, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="a folder with labelled train/ and test/")
    ap.add_argument("--budget", required=True, help="the whole evaluation's --time-budget (40m)")
    ap.add_argument("--name", required=True, help="names the run folder and the results file")
    ap.add_argument("--labels", nargs="+", default=["1%", "10%", "100%"])
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    out = ROOT / "runs" / "evaluate" / a.name
    r = run_once(out, ["evaluate", "--checkpoint", a.checkpoint, "--data", a.data, "--time-budget", a.budget,
                       "--labels", *a.labels, "--seeds", str(a.seeds)])
    inits = [i["name"] for i in r["spec"]["inits"]]
    print(f"\n{'labels':>8s} {'images':>7s} " + " ".join(f"{i + ' init':>24s}" for i in inits))
    for lab in a.labels:
        runs = [x for x in r["finetunes"].values() if x["labels"] == lab]
        cells = []
        for init in inits:
            top = [x["top1"] for x in sorted(runs, key=lambda x: x["seed"]) if x["init"] == init]
            cells.append(f"{statistics.mean(top):6.2f} ({' / '.join(f'{t:.2f}' for t in top)})" if top else "-")
        print(f"{lab:>8s} {runs[0]['images'] if runs else 0:7d} " + " ".join(f"{c:>24s}" for c in cells))
    for name, f in r["frozen"].items():
        print(f"frozen {name}: kNN {f['knn_top1']:.2f}%, linear " + ", ".join(f"{k} {v:.2f}%" for k, v in
                                                                             f["linear"].items()))
    for s in r["savings"].values():
        print(s["line"])
    print(f"wall {r['wall_outside_s']} s of {a.budget}; report: {out / 'report.md'}")
    write_results(f"evaluate_{a.name}", {"checkpoint": str(Path(a.checkpoint)), "data": a.data, "budget": a.budget,
                                        "wall_outside_s": r["wall_outside_s"], "spent_s": r["spent_s"],
                                        "finetunes": r["finetunes"], "frozen": r["frozen"], "savings": r["savings"],
                                        "shares": r["shares"]})


if __name__ == "__main__":
    main()
