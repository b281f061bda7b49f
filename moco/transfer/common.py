"""What ``moco finetune`` and ``moco detect`` share: the run's config from the pretrained network and a
recipe (or from the checkpoint a resume continues), and the record of the run that results.json carries."""

from __future__ import annotations

import copy
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.config import Config, from_dict, merge_dict, resolve
from moco.core.errors import ConfigError
from moco.export.backbone import load_backbone_and_config
from moco.models.generic import custom_name
from moco.training.checkpoint import TrainState, checkpoint_to_resume
from moco.training.run import Run
from moco.transfer.init import parse_init

log = logging.getLogger("moco")
RESULTS = "results.json"


@dataclass(frozen=True)
class Recipe:
    """A transfer task's defaults: its checkpoint kind (``task``), what the values are called in messages, the
    values over the network's own settings, and the task's own config sections (validation)."""

    task: str
    what: str
    values: dict[str, dict[str, Any]]
    sections: tuple[str, ...]


def transfer_config(source: Config, kind: str, ckpt: str, recipe: Recipe, flags: dict[str, Any] | None = None,
                    overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """A transfer run's config: the pretrained network's model and image settings (plain BatchNorm, a ViT's
    patch projection trainable), ``recipe`` over them, then a config file, flags and ``--set`` overrides,
    validated with the task's own sections. The pretraining method is kept as a record (unused)."""
    cfg = Config()
    cfg.model = copy.deepcopy(source.model)
    cfg.model.bn_splits = 1  # shuffle BN is pretraining's; transfer normalises over the whole batch
    cfg.model.stop_grad_conv1 = False  # a ViT's patch projection, frozen while pretraining (v3), is trained too
    cfg.method = copy.deepcopy(source.method)  # what the backbone was pretrained with: a record, unused here
    cfg.data.image_size, cfg.data.normalize = source.data.image_size, source.data.normalize
    cfg.data.workers, cfg.train.device = source.data.workers, source.train.device
    merge_dict(cfg, recipe.values, recipe.what)
    epochs = (flags or {}).get("optim.epochs")
    if epochs:  # the warm-up is a tenth of a short run
        cfg.optim.warmup_epochs = min(cfg.optim.warmup_epochs, epochs / 10)
    cfg.finetune.init, cfg.finetune.checkpoint = kind, ckpt
    return resolve(None, config_file, flags, overrides, base=cfg, sections=recipe.sections)


def length_flags(flags: dict[str, Any] | None, epochs: int | None, time_budget: float | None) -> dict[str, Any]:
    """``flags`` with the run's length: ``epochs`` or ``time_budget`` (seconds), refused in one line when both."""
    if epochs and time_budget:
        raise ConfigError("--time-budget and --epochs both set how long to train; give one of them")
    return {**(flags or {}), "optim.epochs": epochs, "optim.time_budget": time_budget}


def job_config(
    recipe: Recipe, out: Path, resume: str | None, init: str | None,
    checkpoint: str | Path | None, backbone: nn.Module | None, flags: dict[str, Any],
    overrides: list[str] | None, config_file: str | None, new_flags: dict[str, Any] | None = None,
) -> tuple[Config, str, str, dict[str, Any] | None]:
    """(the config, the init's kind, its checkpoint, the checkpoint resumed or None) of a run of ``recipe``'s
    task: a resumed run's own settings with what the call changes on top; else the pretrained network's settings
    (random init without a checkpoint: pretraining's default network) under ``recipe``, then the call's config
    file, ``flags`` and ``new_flags`` (a new run's only) and ``--set`` ``overrides``."""
    prev = checkpoint_to_resume(out, resume, recipe.task)
    if prev is not None:
        cfg = resolve(None, config_file, flags, overrides, base=from_dict(prev["config"]), sections=recipe.sections)
        return cfg, cfg.finetune.init, cfg.finetune.checkpoint, prev
    kind, ckpt = parse_init(init, checkpoint)
    if ckpt:  # the architecture and image settings come with the checkpoint (a copy: random init keeps its own)
        _, source = load_backbone_and_config(ckpt, copy.deepcopy(backbone))
    else:  # random init from nothing: the network pretraining's default trains, unless --set says otherwise
        source = resolve("cifar10-cpu")
    if backbone is not None:
        source.model.arch = custom_name(backbone)
    cfg = transfer_config(source, kind, ckpt, recipe, {**flags, **(new_flags or {})}, overrides, config_file)
    return cfg, kind, ckpt, None


def training_speed(epochs: list[dict[str, Any]]) -> float:
    """Training images per second over ``epochs``' records: all their images over all their training time (a
    short last epoch weighs by its time, not as much as a full one)."""
    seconds = sum(r["epoch_time"] for r in epochs)
    return sum(r["images_per_sec"] * r["epoch_time"] for r in epochs) / seconds if seconds > 0 else 0.0


def run_record(run: Run, state: TrainState) -> dict[str, Any]:
    """What results.json says of how a run trained: precision, device, mean images/s and training seconds over its
    epochs, the machine, torch, and the config."""
    epochs = [r for r in state.history if r.get("type") == "epoch"]
    return {"precision": run.cfg.train.precision, "device": str(run.device),
            "images_per_sec": round(training_speed(epochs), 2),
            "train_seconds": round(sum(r["epoch_time"] for r in epochs), 1),
            "cpu": {"machine": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": torch.get_num_threads()},
            "torch": torch.__version__, "config": run.cfg.to_dict()}


def write_results(out: Path, body: dict[str, Any]) -> None:
    """``out/results.json``, written whole or not at all."""
    tmp = out / f".{RESULTS}.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(out / RESULTS)
