"""Run health: induce each failure on CIFAR-10 and see when its sign appears; healthy presets must show none.

Each case is the `cifar10-cpu` preset (its 10-epoch schedule) stopped after a few epochs, with the kNN monitor
after every epoch, and one setting changed to break it: the key encoder's momentum too low (m = 0.9), an lr of
about 0 (1e-6: the config refuses 0), shuffle BN off with one BatchNorm group (the positive leaks through the
batch statistics), an lr far too high (100x). The healthy cases are the shipped CPU presets as they are. The
signs are read off each run's metrics.jsonl by ``moco.evaluation.health.diagnose`` (the function the trainer
feeds while training), so new thresholds re-read the runs without training them again.

    python benchmarks/health_cpu.py                    # every case (about 25 minutes on 2 cores, bf16)
    python benchmarks/health_cpu.py --only m0.9 lr0    # some cases
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from common import DATA, ROOT, write_results

from moco.config import resolve
from moco.evaluation.health import Thresholds, diagnose, setting_for
from moco.tasks.pretrain import pretrain
from moco.training.logging import read_metrics

CASES = {  # name: (preset, overrides, epochs trained, the sign it should raise or None)
    "healthy-cifar10-cpu": ("cifar10-cpu", [], 3, None),
    "healthy-cifar10-v3-cpu": ("cifar10-v3-cpu", [], 2, None),
    "m0.9": ("cifar10-cpu", ["method.m=0.9"], 3, "stale_queue"),
    "lr0": ("cifar10-cpu", ["optim.lr=1e-6"], 2, "not_learning"),
    "no-shuffle-bn": ("cifar10-cpu", ["method.shuffle_bn=false", "model.bn_splits=1"], 3, "bn_leak"),
    "lr100x": ("cifar10-cpu", ["optim.lr=6.0"], 2, "collapse"),
}


def run_case(name: str, runs: Path) -> dict:
    preset, overrides, epochs, expected = CASES[name]
    cfg = resolve(preset, overrides=[*overrides, "train.eval_every=1", "train.checkpoint_every=0"])
    out = runs / name
    spe = 50_000 // cfg.optim.batch_size
    if not (out / "metrics.jsonl").is_file() or max(
            (r.get("step", 0) for r in read_metrics(out / "metrics.jsonl")), default=0) < epochs * spe:
        try:
            pretrain(cfg, DATA, out, progress=False, resume="auto", max_steps=epochs * spe)
        except Exception as e:  # noqa: BLE001 - a run that breaks (a non-finite loss) is a result too
            print(f"{name}: stopped: {e}")
    records = read_metrics(out / "metrics.jsonl")
    setting = setting_for(cfg, spe)
    signs = diagnose(records, setting)
    live = [r for r in records if r.get("type") == "health"]
    epochs_rec = [r for r in records if r.get("type") == "epoch"]
    steps = [r for r in records if r.get("type") == "step"]
    return {
        "margins": margins(steps, setting),
        "preset": preset, "overrides": overrides, "epochs": epochs, "expected": expected,
        "chance_loss": round(setting.chance_loss, 3), "steps": max((r["step"] for r in steps), default=0),
        "loss_at": {str(r["step"]): round(r["loss"], 3) for r in steps if r["step"] in (20, 60, 100, 200, 390, 585)},
        "epoch_records": [{"epoch": r["epoch"], "loss": round(r["loss"], 3),
                           "pretext_acc1": round(r.get("pretext_acc1", math.nan), 2),
                           "knn_top1": r.get("knn_top1")} for r in epochs_rec],
        "signs": [{"name": s.name, "step": s.step, "message": s.message} for s in signs],
        "signs_while_training": [{"name": r["sign"], "step": r["step"]} for r in live],
        "caught": (expected is None and not signs) or (expected is not None and expected in {s.name for s in signs}),
    }


def margins(steps: list[dict], setting) -> dict:
    """Where each case stands against each threshold: the smoothed loss over chance at the first judgement
    (warm-up + settling steps), the highest smoothed pretext accuracy within the cheating window, and the
    largest climb back towards chance as a share of the way from the lowest smoothed loss."""
    t, chance = Thresholds(), setting.chance_loss
    smooth = [(steps[i]["step"], sum(r["loss"] for r in steps[i - t.window + 1:i + 1]) / t.window,
               sum(r.get("pretext_acc1", 0.0) for r in steps[i - t.window + 1:i + 1]) / t.window)
              for i in range(t.window - 1, len(steps))]
    judged = [s for s in smooth if s[0] >= setting.warmup_steps + t.settle_steps]
    early = [s for s in smooth if s[0] <= t.cheat_epochs * setting.steps_per_epoch]
    climb, lowest = 0.0, math.inf
    for _, loss, _ in smooth:
        if lowest < chance:
            climb = max(climb, (loss - lowest) / (chance - lowest))
        lowest = min(lowest, loss)
    return {"loss_over_chance_when_first_judged": round(judged[0][1] / chance, 3) if judged else None,
            "first_judged_step": judged[0][0] if judged else None,
            "max_smoothed_acc_early": round(max((s[2] for s in early), default=0.0), 2),
            "max_climb": round(climb, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "health")
    args = ap.parse_args()
    results = {name: run_case(name, args.runs) for name in args.only}
    print(f"\n{'case':24s} {'chance':>6s} {'epoch losses':24s} {'pretext acc':22s} {'kNN':18s} signs (step)")
    for name, r in results.items():
        ep = r["epoch_records"]
        signs = ", ".join(f"{s['name']} ({s['step']})" for s in r["signs"]) or "none"
        print(f"{name:24s} {r['chance_loss']:6.2f} {' '.join(str(e['loss']) for e in ep):24s} "
              f"{' '.join(str(e['pretext_acc1']) for e in ep):22s} "
              f"{' '.join(str(round(e['knn_top1'], 1)) if e['knn_top1'] is not None else '-' for e in ep):18s} "
              f"{signs}{'' if r['caught'] else '   <- NOT AS EXPECTED'}")
    t = Thresholds()
    print(f"\nagainst the thresholds: loss/chance when first judged (not_learning >= {t.stuck}), highest pretext "
          f"acc in the first {t.cheat_epochs:g} epochs (cheating >= {t.cheat_acc:g}%), largest climb back "
          f"(collapse >= {t.climb})")
    for name, r in results.items():
        m = r["margins"]
        print(f"{name:24s} {m['loss_over_chance_when_first_judged']} at step {m['first_judged_step']}   "
              f"{m['max_smoothed_acc_early']}%   {m['max_climb']}")
    write_results("health_cpu", results)


if __name__ == "__main__":
    main()
