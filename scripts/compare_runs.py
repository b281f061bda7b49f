"""Compare two folders of fixed-seed runs (scripts/fixed_seed_runs.sh): every checkpoint tensor (both encoders,
queue, optimiser state, random states), every counter, and metrics.jsonl, the history and results.json without
wall-clock fields; paths under either folder are compared relative to it. Exits 1 if any run differs.

    python scripts/compare_runs.py BEFORE AFTER cached per_image v3 [--added task,config.finetune]

``--added`` lists key prefixes that only AFTER's checkpoints may hold (settings or records a change adds, whose
defaults keep the old behaviour); they are listed, not counted as differences. ``--renamed=OLD:NEW,...`` names
keys that a change renamed (compared under the new name: ``config.train.knn_every:config.train.eval_every``);
``--changed=KEY,...`` keys whose values a change meant to alter (shown before -> after, not counted). Both apply
to the checkpoints and to results.json.
"""
import json
import sys
from pathlib import Path

import torch

TIMING = {"images_per_sec", "epoch_time", "knn_time", "eval_time", "wall_s", "train_seconds", "train_time"}


def relative(obj, root: Path):
    """``obj`` with every string naming a path under ``root`` written relative to it (``<OUT>/...``)."""
    if isinstance(obj, dict):
        return {k: relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(relative(v, root) for v in obj)
    if isinstance(obj, str):
        for r in (str(root.resolve()), str(root)):
            obj = obj.replace(r, "<OUT>")
    return obj


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def strip_timing(rec):
    return {k: v for k, v in rec.items() if k not in TIMING}


def option(name):
    return [p for x in sys.argv[1:] if x.startswith(f"--{name}=") for p in x.split("=", 1)[1].split(",")]


args = [x for x in sys.argv[1:] if not x.startswith("--")]
added = tuple(option("added"))
renamed = dict(p.split(":", 1) for p in option("renamed"))
changed = tuple(option("changed"))


def compare_flat(fa, fb, bad, notes, prefix=""):
    """Compare two flattened dicts (``fa`` before, its renamed keys under their new names); tensors by value."""
    fa = {renamed.get(k, k): v for k, v in fa.items()}
    n_t = 0
    if fa.keys() != fb.keys():
        bad.append(f"{prefix}keys differ: {sorted(set(fa) ^ set(fb))[:5]}")
    for k in sorted(fa.keys() & fb.keys()):
        x, y = fa[k], fb[k]
        if isinstance(x, torch.Tensor):
            n_t += 1
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)):
                bad.append(prefix + k)
        elif x != y:
            (notes if k.startswith(changed) and changed else bad).append(f"{prefix}{k}: {x!r} -> {y!r}")
    return n_t

a_root, b_root = Path(args[0]), Path(args[1])
ok = True
for name in args[2:]:
    a = relative(torch.load(a_root / name / "checkpoint_last.pt", weights_only=True), a_root)
    b = relative(torch.load(b_root / name / "checkpoint_last.pt", weights_only=True), b_root)
    fa = dict(flat({k: v for k, v in a.items() if k not in ("history", "metrics")}))
    fb = dict(flat({k: v for k, v in b.items() if k not in ("history", "metrics")}))
    n_t, bad = 0, []
    new = sorted(k for k in set(fb) - set(fa) if k.startswith(added)) if added else []
    for k in new:
        fb.pop(k)
    notes = []
    n_t = compare_flat(fa, fb, bad, notes)
    ha = [strip_timing(r) for r in a.get("history", [])]
    hb = [strip_timing(r) for r in b.get("history", [])]
    if ha != hb:
        bad.append("history differs")
    ma = [strip_timing(json.loads(line)) for line in (a_root / name / "metrics.jsonl").read_text().splitlines()]
    mb = [strip_timing(json.loads(line)) for line in (b_root / name / "metrics.jsonl").read_text().splitlines()]
    if ma != mb:
        bad.append("metrics.jsonl differs")
    ra, rb = (a_root / name / "results.json", b_root / name / "results.json")
    if ra.is_file() != rb.is_file():
        bad.append("results.json in one run only")
    elif ra.is_file():
        ja, jb = (strip_timing(relative(json.loads(r.read_text()), root)) for r, root in ((ra, a_root), (rb, b_root)))
        compare_flat(dict(flat(ja)), dict(flat(jb)), bad, notes, "results.json: ")
    q = "model.queue"
    queue = "n/a" if q not in fa else "equal" if torch.equal(fa[q], fb[q]) else "DIFF"
    verdict = ("IDENTICAL" + (f" (added: {', '.join(new)})" if new else "")
               + (f" (meant to change: {'; '.join(sorted(set(notes)))})" if notes else "")) if not bad else \
        "DIFFERENT: " + "; ".join(bad[:5])
    last = ha[-1] if ha else {}
    score = next((f"{k}: {last[k]}" for k in ("knn_top1", "test_top1", "AP") if k in last), "")
    print(f"{name:15s} tensors compared: {n_t:4d}  queue {queue}  metrics records: {len(ma)}  {score}  -> {verdict}")
    ok &= not bad
sys.exit(0 if ok else 1)
