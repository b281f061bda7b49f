"""Running an experiment: each setting a normal pretraining run, shared between experiments by a config hash.

Each setting's run is kept under ``runs/`` in a folder named by a hash of what defines it, so settings
shared between experiments run once, finished settings are skipped and an interrupted one resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from moco.config import resolve
from moco.core.errors import ConfigError, DataError
from moco.data.folder import find_split
from moco.experiments.base import BUDGETS, Budget, Setting
from moco.experiments.registry import EXPERIMENTS, RUNNERS
from moco.experiments.report import command_line, write_report
from moco.schema import Config
from moco.training.logging import read_metrics

log = logging.getLogger("moco")


def setting_config(budget: Budget, setting: Setting, extra: list[str]) -> Config:
    return resolve(budget.preset, overrides=[*budget.overrides, *extra, *setting.overrides])


def run_dir(runs: Path, cfg: Config, data: Path) -> Path:
    """Where a run lives: named by a hash of everything that defines it, so that experiments share runs.

    Only settings that differ from the defaults enter the hash, so a setting added to the config later
    (with a default that keeps the old behaviour) does not orphan finished runs."""
    default = Config().to_dict()
    diff = {f"{sec}.{k}": v for sec, d in cfg.to_dict().items() for k, v in d.items() if default[sec].get(k) != v}
    key = json.dumps({"config": diff, "data": str(data.resolve())}, sort_keys=True)
    return runs / hashlib.sha1(key.encode()).hexdigest()[:12]


def _summarise(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    epochs = [r for r in metrics if r.get("type") == "epoch"]
    if not epochs or "knn_top1" not in epochs[-1]:
        raise RuntimeError("run has no final kNN result")
    steps = [r["loss"] for r in metrics if r.get("type") == "step"]
    tail = steps[len(steps) // 2:] or [float("nan")]
    mean = sum(tail) / len(tail)
    last = epochs[-1]
    return {
        "knn_top1": last["knn_top1"], "loss": last["loss"], "pretext_acc1": last["pretext_acc1"],
        "train_time": sum(r["epoch_time"] for r in epochs), "epochs": last["epoch"],
        "loss_spread": math.sqrt(sum((x - mean) ** 2 for x in tail) / len(tail)),
    }


def run_setting(setting: Setting, cfg: Config, data: Path, runs: Path, progress: bool) -> dict[str, Any] | None:
    """Run (or resume, or skip) one setting; returns its summary, or None if it was interrupted."""
    from moco.tasks.pretrain import pretrain

    out = run_dir(runs, cfg, data)
    done = out / "result.json"
    if done.is_file():
        log.info("[done] %s (%s)", setting.name, out)
        res = json.loads(done.read_text())
    else:
        log.info("[run] %s -> %s", setting.name, out)
        train_dir, test_dir = find_split(data)
        if test_dir is None:
            raise DataError(f"{data} needs train/ and test/ (or val/) ImageFolders: the experiments are judged by kNN")
        r = pretrain(cfg, data, out, resume="auto", knn_train=train_dir, knn_test=test_dir, progress=progress)
        if r.stopped:
            return None
        n_images = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True).get("n_images", 0)
        res = {"setting": setting.name, "overrides": setting.overrides, "run": str(out), "n_images": n_images,
               **_summarise(read_metrics(out / "metrics.jsonl"))}
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(done)
    res["metrics"] = read_metrics(out / "metrics.jsonl")
    return res


def reproduce(name: str, data: Path, out: Path, runs: Path, budget: str = "small", extra: list[str] | None = None,
              progress: bool = True, dry_run: bool = False) -> Path | None:
    """Run experiment ``name`` (or ``all``, each into ``out/NAME``) and write its report; returns the report
    path (None if stopped)."""
    if name == "all":
        path = None
        for n in [*EXPERIMENTS, *RUNNERS]:
            path = reproduce(n, data, out / n, runs, budget, extra, progress, dry_run)
            if path is None and not dry_run:
                return None
        return path
    if name not in EXPERIMENTS and name not in RUNNERS:
        raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join([*EXPERIMENTS, *RUNNERS])} or all")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    if name in RUNNERS:
        return RUNNERS[name](data, out, runs, budget, extra, progress, dry_run)
    exp, b, extra = EXPERIMENTS[name], BUDGETS[budget], list(extra or [])
    base = resolve(b.preset, overrides=[*b.overrides, *extra])
    settings = exp.settings(base)
    cfgs = [setting_config(b, s, extra) for s in settings]  # every config is checked before anything runs
    if dry_run:
        for s, c in zip(settings, cfgs):
            print(f"{name:11s} {s.name:48s} {' '.join(s.overrides) or '(base)':60s} {run_dir(runs, c, data).name}")
        return None
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for i, (s, c) in enumerate(zip(settings, cfgs)):
        log.info("%s: setting %d/%d", name, i + 1, len(settings))
        r = run_setting(s, c, data, runs, progress)
        if r is None:
            log.warning("%s stopped during %r; rerun the same command to continue (finished settings are kept)",
                        name, s.name)
            return None
        # a shared run may have been made under another name
        results[s.name] = {**r, "setting": s.name, "K": c.method.K}
    n = results[settings[0].name].get("n_images", 0)
    path = write_report(name, exp, settings, results, out, command_line(name, data, out, runs, budget, extra),
                        budget, base, n)
    log.info("%s: report written to %s", name, path)
    return path
