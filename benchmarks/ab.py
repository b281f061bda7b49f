"""One `moco` command on two commits, back to back, in alternating order: the same-run speed ratio of a change
(and its scores side by side).

    python benchmarks/ab.py --before 614e53e --after HEAD [--rounds 2] [--name NAME] -- \\
        pretrain --preset cifar10-cpu --data ../shared/datasets/cifar10 --max-images 4096 --epochs 1 --no-knn

Each commit is checked out into a temporary worktree and the command run there (``python -m moco ARGS --out
TMP --no-progress --overwrite``); rounds alternate which side goes first, so a machine that drifts during the
run weighs on both. Reports each run's training images/s (the mean of its epochs' records), its last score
(kNN, test top-1 or AP) and wall time, and the ratio after/before of the images/s; writes
benchmarks/results/ab_NAME.json. Arguments that name existing files or folders are made absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_results

SCORES = ("knn_top1", "test_top1", "AP")


def run(tree: Path, args: list[str], out: Path) -> dict:
    """``moco ARGS`` in the worktree ``tree`` (its package first on the path); its epochs' mean images/s, last
    score and wall time."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "moco", *args, "--out", str(out), "--no-progress", "--overwrite"],
                   cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["type"] == "epoch"]
    score = next(((k, epochs[-1][k]) for k in SCORES if k in epochs[-1]), (None, None))
    return {"images_per_sec": statistics.mean(r["images_per_sec"] for r in epochs), "score": score[0],
            "value": score[1], "loss": epochs[-1]["loss"], "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="refactor", help="the results file: benchmarks/results/ab_NAME.json")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the moco command and its arguments, after --")
    a = ap.parse_args()
    args = [x for x in a.command if x != "--"]
    args = [str(Path(x).resolve()) if not x.startswith("-") and Path(x).exists() else x for x in args]
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for side, commit in (("before", a.before), ("after", a.after)):
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[side]), commit],
                           check=True, capture_output=True)
        try:
            for i in range(a.rounds):
                for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    r = run(trees[side], args, Path(tmp) / f"run-{side}-{i}")
                    runs[side].append(r)
                    print(f"round {i + 1} {side}: {r}", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    speed = {side: statistics.mean(r["images_per_sec"] for r in rs) for side, rs in runs.items()}
    ratio = speed["after"] / speed["before"]
    print("\n| side | commit | images/s (by round) | score | wall s |\n|---|---|---|---|---|")
    for side, commit in (("before", a.before), ("after", a.after)):
        rs = runs[side]
        ips = " / ".join(f"{r['images_per_sec']:.1f}" for r in rs)
        walls = " / ".join(str(r["wall_s"]) for r in rs)
        print(f"| {side} | {commit} | {ips} | {rs[-1]['score']} {rs[-1]['value']} | {walls} |")
    print(f"\nafter / before images/s: {ratio:.3f}")
    write_results(f"ab_{a.name}", {"before": a.before, "after": a.after, "args": args, "runs": runs,
                                   "images_per_sec": speed, "ratio": round(ratio, 4)})


if __name__ == "__main__":
    main()
