"""Where the time of one `moco detect` step goes: data, the detector's transform, the ResNet trunk, the FPN, the
RPN (head, anchors, proposals and its loss), the RoI heads (sampling, RoIAlign, box head, loss), backward and the
optimiser; then torch.profiler's ops grouped into families (convolutions, RoIAlign forward and backward, NMS...).

The run is set up as `moco detect` sets it up (`resolve_job`, `set_up_detect`: the same detector, optimiser and
batches from `DetectionSource`), in a scratch folder; the parts are timed with `time.perf_counter` around the
modules' forwards (forward hooks; every op on the CPU is synchronous).

    python benchmarks/profile_detect.py [--data benchmarks/runs/pasted] [--checkpoint CK] [--set KEY=VALUE ...]
        [--steps 12] [--warmup 3] [--json benchmarks/results/profile_detect.json]

Prints the two tables; writes the JSON with the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from common import ROOT, write_results
from torch import nn

PARTS = {  # a module's path in the Detector -> the part its forward is counted in (inclusive)
    "detector.transform": "transform (resize, normalise, pad)",
    "detector.backbone": "backbone (trunk + FPN)",
    "detector.backbone.fpn": "FPN",
    "detector.rpn": "RPN (all)",
    "detector.rpn.head": "RPN head (conv)",
    "detector.rpn.anchor_generator": "RPN anchors",
    "detector.roi_heads": "RoI heads (all)",
    "detector.roi_heads.box_roi_pool": "RoIAlign (forward)",
    "detector.roi_heads.box_head": "box head (2 FC)",
    "detector.roi_heads.box_predictor": "box predictor",
}
FAMILIES = (  # torch.profiler op name fragments -> a family (first match wins)
    ("roi_align_backward", "RoIAlign backward"), ("roialignbackward", "RoIAlign backward"),
    ("roi_align", "RoIAlign forward"), ("nms", "NMS"),
    ("convolution_backward", "convolution backward"), ("convolution", "convolution forward"),
    ("conv", "convolution forward"), ("batch_norm", "BatchNorm"), ("native_batch_norm", "BatchNorm"),
    ("addmm", "linear"), ("mm", "linear"), ("upsample", "FPN upsample"), ("interpolate", "resize"),
    ("sgd", "optimiser"), ("_foreach", "optimiser"), ("cross_entropy", "losses"), ("smooth_l1", "losses"),
    ("nll", "losses"), ("log_softmax", "losses"), ("sort", "sort / topk"), ("topk", "sort / topk"),
    ("index", "indexing"), ("gather", "indexing"), ("copy_", "copies"), ("to", "copies"), ("cat", "copies"),
)


def timed_modules(model: nn.Module, t: dict[str, float]) -> list[Any]:
    """Hooks that add each of :data:`PARTS`' forwards' seconds to ``t``; returns the handles."""
    handles, starts = [], {}
    named = dict(model.named_modules())
    for path, part in PARTS.items():
        m = named[path]
        handles.append(m.register_forward_pre_hook(lambda _m, _i, p=part: starts.__setitem__(p, time.perf_counter())))
        handles.append(m.register_forward_hook(
            lambda _m, _i, _o, p=part: t.__setitem__(p, t[p] + time.perf_counter() - starts[p])))
    return handles


def step(run: Any, state: Any, batches: Any, t: dict[str, float]) -> int:
    """One step as the trainer runs it (the task's step under autocast, backward, optimiser), in timed parts;
    returns the images."""
    from moco.core.precision import autocast

    t0 = time.perf_counter()
    batch = next(batches)
    t["data (DetectionSource)"] += (t1 := time.perf_counter()) - t0
    with autocast(run.device, run.cfg.train.precision):
        loss, _ = run.task.step(state.model, batch, state.gen)
    t["forward (all)"] += (t2 := time.perf_counter()) - t1
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t["backward"] += (t3 := time.perf_counter()) - t2
    state.optimizer.step()
    t["optimiser"] += time.perf_counter() - t3
    return len(batch[0])


def family(name: str) -> str:
    n = name.lower()
    return next((f for frag, f in FAMILIES if frag in n), "other")


def rows_of(t: dict[str, float], total: float, steps: int) -> list[dict[str, Any]]:
    """The parts, with the exclusive remainders: trunk = backbone - FPN; the RPN's and RoI heads' own work."""
    t = dict(t)
    t["trunk (ResNet stages)"] = t[PARTS["detector.backbone"]] - t["FPN"]
    t["RPN proposals, sampling, loss"] = t["RPN (all)"] - t["RPN head (conv)"] - t["RPN anchors"]
    t["RoI sampling, loss (rest)"] = (t["RoI heads (all)"] - t["RoIAlign (forward)"] - t["box head (2 FC)"]
                                      - t["box predictor"])
    t["forward: rest (loss sum, hits)"] = t["forward (all)"] - sum(
        t[PARTS[p]] for p in ("detector.transform", "detector.backbone", "detector.rpn", "detector.roi_heads"))
    t["step: rest (outside the parts)"] = total - sum(
        t[k] for k in ("data (DetectionSource)", "forward (all)", "backward", "optimiser"))
    order = ["data (DetectionSource)", "transform (resize, normalise, pad)", "trunk (ResNet stages)", "FPN",
             "RPN head (conv)", "RPN anchors", "RPN proposals, sampling, loss", "RoIAlign (forward)", "box head (2 FC)",
             "box predictor", "RoI sampling, loss (rest)", "forward: rest (loss sum, hits)", "backward", "optimiser",
             "step: rest (outside the parts)"]
    return [{"part": k, "ms_per_step": round(1000 * t[k] / steps, 1), "share": round(t[k] / total, 4)} for k in order]


def main() -> None:
    from moco.core.distributed import SINGLE_PROCESS
    from moco.tasks.detect import resolve_job, set_up_detect

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "runs" / "pasted"), help="the pasted set (make_detection_set.py)")
    ap.add_argument("--checkpoint", help="the backbone (default: random init of cifar10-cpu's network)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "results" / "profile_detect.json"))
    a = ap.parse_args()
    data = Path(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        job = resolve_job(a.checkpoint, data / "train.json", data / "train", None, None, out,
                          "checkpoint" if a.checkpoint else "random", {}, a.set, None, None, None, False)
        run, state = set_up_detect(job, out, SINGLE_PROCESS, None, None, False, False, None, None)
        state.model.train()
        perm = torch.randperm(run.source.samples, generator=torch.Generator().manual_seed(0))
        batches = iter(run.source.epoch(perm, 0, 0, 0))
        t: dict[str, float] = defaultdict(float)
        hooks = timed_modules(state.model, t)
        for _ in range(a.warmup):
            step(run, state, batches, t)
        t.clear()
        start, images = time.perf_counter(), 0
        for _ in range(a.steps):
            images += step(run, state, batches, t)
        total = time.perf_counter() - start
        for h in hooks:
            h.remove()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step(run, state, batches, defaultdict(float))
        fam: dict[str, float] = defaultdict(float)
        for e in prof.key_averages():
            fam[family(e.key)] += e.self_cpu_time_total / 1e3 / 3  # ms per step
    rows = rows_of(t, total, a.steps)
    b = run.cfg.optim.batch_size
    print(f"moco detect {' '.join(a.set)}: batch {b}, {run.cfg.train.precision}, {1000 * total / a.steps:.0f} ms/step, "
          f"{images / total:.2f} images/s\n\n| part | ms / step | share |\n|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['ms_per_step']:.1f} | {100 * r['share']:.1f}% |")
    ops = sorted(({"family": k, "ms_per_step": round(v, 1)} for k, v in fam.items()), key=lambda r: -r["ms_per_step"])
    all_ms = sum(r["ms_per_step"] for r in ops)
    print("\n| op family (torch.profiler, self time) | ms / step | share |\n|---|---|---|")
    for r in ops:
        print(f"| {r['family']} | {r['ms_per_step']:.1f} | {100 * r['ms_per_step'] / all_ms:.1f}% |")
    write_results("profile_detect", {"settings": a.set, "batch_size": b, "precision": run.cfg.train.precision,
                                     "ms_per_step": round(1000 * total / a.steps, 1),
                                     "images_per_sec": round(images / total, 2), "parts": rows, "op_families": ops},
                  a.json)


if __name__ == "__main__":
    main()
