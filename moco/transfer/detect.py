"""``moco detect``: fine-tune a backbone as the body of torchvision's Faster R-CNN (Mask R-CNN when the
annotations carry segmentations) on COCO-format data, and score it with COCO AP (pycocotools), through the
same machinery as pretraining and fine-tuning (run folder, checkpoints and exact resume, time budget,
metrics.jsonl and curves, progress bar, torchrun).

The initialisation is ``moco finetune``'s: the checkpoint's backbone, a supervised network's, or the same
network from scratch. The detector (:mod:`moco.methods.detector`) puts a feature pyramid on the ResNet's
stages. By default BatchNorm is trained, with batch statistics (SyncBN across GPUs under torchrun), as the
authors' Detectron2 configs do (``NORM: SyncBN``, ``FREEZE_AT: 0``): MoCo's feature statistics differ from
those of the detection data, and a frozen BN would keep the pretext's. ``--set finetune.bn=frozen`` freezes it.

The recipe (:data:`RECIPE`, every value overridable with ``--set``) is measured in ``benchmarks/README.md``
("Detection"); the authors' GPU recipe for VOC and COCO is documented there with its command.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.config import Config, from_dict, resolve
from moco.core.distributed import DistInfo, check_global_batch, cleanup, init_distributed
from moco.core.errors import ConfigError, DataError
from moco.core.precision import memory_format
from moco.core.run_lock import lock_run_folder
from moco.data.augment import NORMALIZATIONS
from moco.data.coco import CocoSet, DetectionSource, read_coco
from moco.export.backbone import load_backbone_and_config
from moco.methods.detector import build_detector
from moco.models.generic import custom_name
from moco.models.vit import VITS
from moco.optim import OPTIMIZERS
from moco.schedules import base_lr
from moco.training.checkpoint import TrainState
from moco.training.pretrain import run_length
from moco.training.run import Run, open_run, start_state
from moco.training.tasks import TASKS, DetectionMonitor
from moco.transfer.common import (
    length_flags,
    previous_checkpoint,
    run_record,
    train_to_end,
    transfer_config,
    write_results,
)
from moco.transfer.finetune import build_network, load_backbone_into, parse_init

log = logging.getLogger("moco")

RECIPE: dict[str, dict[str, Any]] = {
    "optim": {"optimizer": "sgd", "nesterov": False, "momentum": 0.9, "lr": 0.02, "weight_decay": 1e-4,
              "schedule": "cosine", "warmup_epochs": 1.0, "batch_size": 8, "epochs": 12, "scale_lr": False,
              "time_budget": 0.0},
    "train": {"log_every": 10, "checkpoint_every": 1, "knn_every": 2},
}
"""Detection's defaults over the network's own settings (``benchmarks/README.md``, "Detection")."""

@dataclass
class DetectResult:
    """How a detection run ended: COCO AP on the validation set (None without one), the init, and its cost."""

    out: Path
    AP: float | None  # noqa: N815 - COCO's names
    AP50: float | None  # noqa: N815
    AP75: float | None  # noqa: N815
    init: str  # checkpoint, supervised or random
    checkpoint: str  # the backbone's source ('' for random init without one)
    epochs: int
    steps: int
    wall_s: float  # this call's wall time
    stopped: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's record (APs, APm, APl, mask AP...)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        m = d.pop("metrics")
        d.update({k: m[k] for k in ("APs", "APm", "APl") if k in m})
        d.update({k: v for k, v in m.items() if k.startswith("mask_")})
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


@dataclass
class DetectJob:
    """What a detection call resolved before any work: the config, the init and its checkpoint, the training
    annotations (read and checked), and the validation set's files (read on rank 0 only)."""

    cfg: Config
    kind: str
    ckpt: str
    train: CocoSet
    val_ann: Path | None
    val_images: Path | None


def detect_config(source: Config, kind: str, ckpt: str, flags: dict[str, Any] | None = None,
                  overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """The run's config: the network's model and normalisation (plain BatchNorm), :data:`RECIPE` over them,
    then a config file, flags and ``--set`` overrides."""
    return transfer_config(source, kind, ckpt, RECIPE, "the detection recipe", flags, overrides, config_file)


def _sizes(cfg: Config, train: CocoSet) -> None:
    """Fill in ``detect.min_size`` (the training images' median shorter side) and ``detect.max_size`` (1333/800
    of the largest min_size) when they are left to the data, so that config.yaml records what ran."""
    d = cfg.detect
    if not d.min_size:
        d.min_size = [max(16, train.median_short_side())]
    if not d.max_size:
        d.max_size = round(max(d.min_size) * 1333 / 800)


def resolve_job(
    checkpoint: str | Path | None, train_ann: str | Path | None, train_images: str | Path | None,
    val_ann: str | Path | None, val_images: str | Path | None, out: Path, init: str | None,
    flags: dict[str, Any], overrides: list[str] | None, config_file: str | None, resume: str | None,
    backbone: nn.Module | None, warn: bool,
) -> DetectJob:
    """The job a :func:`detect` call describes; a resumed run's settings and data come from its checkpoint."""
    prev = previous_checkpoint(out, resume, "detect")
    if prev is not None:
        cfg = resolve(None, config_file, flags, overrides, base=from_dict(prev["config"]))
        kind, ckpt = cfg.finetune.init, cfg.finetune.checkpoint
        files = prev["data"]
        train_ann, train_images = train_ann or files["train_ann"], train_images or files["train_images"]
        val_ann, val_images = val_ann or files.get("val_ann"), val_images or files.get("val_images")
    else:
        kind, ckpt = parse_init(init, checkpoint)
        if ckpt:
            _, source = load_backbone_and_config(ckpt, copy.deepcopy(backbone))
        else:
            source = resolve("cifar10-cpu")
        if backbone is not None:
            source.model.arch = custom_name(backbone)
        cfg = detect_config(source, kind, ckpt, flags, overrides, config_file)
    if cfg.model.arch in VITS:
        raise ConfigError(f"moco detect builds its feature pyramid on ResNet stages; {cfg.model.arch} is a ViT "
                          "(use a ResNet checkpoint: our resnet*, torchvision:resnet*, or the authors' R50)")
    if train_ann is None or train_images is None:
        raise ConfigError("detection needs --train-ann and --train-images (COCO annotations and their images)")
    if (val_ann is None) != (val_images is None):
        raise ConfigError("--val-ann and --val-images go together")
    train = read_coco(train_ann, train_images, cfg.data.strict, warn)
    if not train.ids:
        raise DataError(f"{train.ann_file}: no usable image")
    _sizes(cfg, train)
    return DetectJob(cfg, kind, ckpt, train, Path(val_ann).expanduser() if val_ann else None,
                     Path(val_images).expanduser() if val_images else None)


def _val_set(job: DetectJob, strict: bool) -> CocoSet | None:
    """The validation set (rank 0), checked against the training categories."""
    if job.val_ann is None or job.val_images is None:
        log.warning("no --val-ann: the detector is not scored")
        return None
    val = read_coco(job.val_ann, job.val_images, strict, True)
    known = {c["id"] for c in job.train.categories}
    lacking = [c for c in val.categories if c["id"] not in known and any(
        a["category_id"] == c["id"] for a in val.gt["annotations"])]
    if lacking:
        names = ", ".join(f"{c['id']} ({c['name']})" for c in lacking[:5])
        raise DataError(f"{job.val_ann} has boxes of {len(lacking)} category id(s) that {job.train.ann_file} lacks "
                        f"({names}): the detector cannot predict them")
    return val


def _network(cfg: Config, kind: str, ckpt: str, backbone: nn.Module | None) -> nn.Module:
    """The backbone network (``fc`` = Identity): built from ``cfg`` (random init from ``train.seed``), then,
    unless ``kind`` is random, the checkpoint's backbone loaded into it."""
    net = build_network(cfg, 1, backbone)
    if kind != "random":
        source, _ = load_backbone_and_config(ckpt, copy.deepcopy(backbone))
        load_backbone_into(net, source, ckpt)
    net.fc = nn.Identity()
    return net


def set_up_detect(
    job: DetectJob, out: Path, dinfo: DistInfo, dist_device: torch.device | None, resume: str | None,
    overwrite: bool, progress: bool, max_steps: int | None, backbone: nn.Module | None,
) -> tuple[Run, TrainState]:
    """The detection run and its state: folder and resume (``open_run``), the detector on the initialised
    backbone, its optimiser with the backbone's lr share, the batches and the COCO AP monitor."""
    cfg, device, ck, ck_path = open_run(job.cfg, out, dinfo, dist_device, TASKS["detect"], resume, overwrite)
    train = job.train
    val = _val_set(job, cfg.data.strict) if dinfo.is_main else None
    b = cfg.optim.batch_size
    if len(train.ids) < b:
        raise DataError(f"{train.ann_file} has {len(train.ids)} usable image(s), fewer than one batch of {b}; "
                        "lower --batch-size")
    d = cfg.detect
    masks = d.masks == "auto" and train.segmentations is not None
    network = _network(cfg, job.kind, job.ckpt, backbone)
    if dinfo.enabled and device.type == "cuda" and cfg.finetune.bn == "train":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)  # the authors' SyncBN, across processes
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    try:
        model = build_detector(network, train.num_classes, d, d.min_size, d.max_size, mean, std, masks,
                               cfg.finetune.bn)
    except ValueError as e:
        raise ConfigError(f"moco detect: {e}") from None
    model = model.to(device, memory_format=memory_format(cfg.train.channels_last))
    optimizer = OPTIMIZERS[cfg.optim.optimizer](model.param_groups(cfg.finetune.backbone_lr), base_lr(cfg), cfg.optim)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16")
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)  # flips, the same on every rank
    source = DetectionSource(train, masks, d.flip, cfg.data.workers, b, gen, device, dinfo, cfg.data.strict)
    cat_ids = [c["id"] for c in train.categories]
    monitor = DetectionMonitor(val, cat_ids, max(1, b // dinfo.world_size), cfg, device, masks) if val else None
    extra = {"categories": train.categories, "init": job.kind, "source": job.ckpt, "masks": masks,
             "data": {"train_ann": str(train.ann_file.resolve()), "train_images": str(train.images.root.resolve()),
                      "val_ann": str(job.val_ann.resolve()) if job.val_ann else None,
                      "val_images": str(job.val_images.resolve()) if job.val_images else None}}
    run = Run(cfg, out, train.images.root, dinfo, device, source, monitor, progress, max_steps, task=TASKS["detect"],
              checkpoint_extra=extra)
    return run, start_state(run, (model, optimizer, scaler), gen, ck, ck_path)


def detect(
    checkpoint: str | Path | None = None,
    train_ann: str | Path | None = None,
    train_images: str | Path | None = None,
    val_ann: str | Path | None = None,
    val_images: str | Path | None = None,
    out: str | Path = "runs/detect",
    init: str | None = None,
    *,
    epochs: int | None = None,
    time_budget: float | None = None,
    overrides: list[str] | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    backbone: nn.Module | None = None,
    started: float | None = None,
) -> DetectResult:
    """Train a detector on ``checkpoint``'s backbone (``init="random"``: the same network from scratch) with the
    COCO annotations ``train_ann`` of the images in ``train_images``, scored with COCO AP on ``val_ann`` /
    ``val_images``. Writes the run folder ``out`` (results.json, checkpoints, metrics.jsonl, curves.png) and
    returns a :class:`DetectResult`.

    ``epochs`` or ``time_budget`` (seconds) set the length; ``overrides`` are ``--set`` strings
    (``"detect.min_size=[480, 512]"``, ``"finetune.bn=frozen"``); ``resume="auto"`` continues an interrupted run
    (the other arguments may then be left out). ``backbone`` is a fresh instance of a network given to
    ``moco.pretrain(backbone=...)``. The time budget counts from ``started`` (default: the call).
    """
    t_start = time.perf_counter()
    out = Path(out)
    flags = length_flags(flags, epochs, time_budget)
    dinfo, dist_device = None, None
    lock = None
    try:
        job = resolve_job(checkpoint, train_ann, train_images, val_ann, val_images, out, init, flags, overrides,
                          config_file, resume, backbone, warn=int(os.environ.get("RANK", "0")) == 0)
        check_global_batch(job.cfg.optim.batch_size)
        dinfo, dist_device = init_distributed(job.cfg.train.device)
        lock = lock_run_folder(out) if dinfo.is_main else None
        run, state = set_up_detect(job, out, dinfo, dist_device, resume, overwrite, progress and dinfo.is_main,
                                   max_steps, backbone)
        stopped = train_to_end(run, state, t_start if started is None else started,
                               lambda: _log_start(run, state, job))
        last = state.last
        result = DetectResult(out, last.get("AP"), last.get("AP50"), last.get("AP75"), job.kind, job.ckpt,
                              state.epoch, state.step, time.perf_counter() - t_start, stopped, last)
        if run.main and not stopped:
            _write_results(run, state, result)
        return result
    finally:
        if lock is not None:
            lock.release()
        if dinfo is not None:
            cleanup()


def _log_start(run: Run, state: TrainState, job: DetectJob) -> None:
    cfg, t, d = run.cfg, job.train, run.cfg.detect
    kind = "Mask R-CNN" if run.checkpoint_extra["masks"] else "Faster R-CNN"
    log.info("detection: %s on %s (%s init%s), %d images with %d boxes of %d categories from %s, shorter side %s "
             "(longer at most %d): %s, backbone lr x %g, BatchNorm %s, %s on %s", kind, cfg.model.arch, job.kind,
             f" from {job.ckpt}" if job.ckpt else "", len(t.ids), t.n_boxes, t.num_classes, t.ann_file,
             "/".join(map(str, d.min_size)), d.max_size, run_length(run, state), cfg.finetune.backbone_lr,
             cfg.finetune.bn, cfg.train.precision, run.device)


def _write_results(run: Run, state: TrainState, result: DetectResult) -> None:
    """results.json: COCO AP and its kin, the init, the categories, the cost, the machine, the config."""
    write_results(run.out, {**result.summary(), "detections": state.last.get("detections"),
                            "categories": run.checkpoint_extra["categories"], **run_record(run, state)})
