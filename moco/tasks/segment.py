"""``moco segment``: the semantic segmentation task. A backbone under torchvision's DeepLabV3 (or FCN) head, on
images paired with label maps (or COCO annotations painted into class maps), scored by mIoU, trained by
:mod:`moco.training` (run folder, checkpoints and exact resume, time budget, metrics.jsonl and curves, progress
bar, torchrun).

The initialisation is ``moco finetune``'s: the checkpoint's backbone, a supervised network's, or the same network
from scratch. The recipe is torchvision's ``references/segmentation``: random scale 0.5-2.0 of the base size, a
square crop padded with ignored pixels, flips, cross-entropy with the ignore index, SGD with a poly schedule.
BatchNorm is trained with batch statistics (SyncBN under torchrun), as ``moco detect`` does.

Validation scores whole images, neither cropped nor resized (batched by size): mIoU and pixel accuracy from a
confusion matrix over the whole set, per-class IoU in results.json.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.config import Config
from moco.core.distributed import DistInfo
from moco.core.errors import ConfigError, DataError
from moco.core.precision import autocast
from moco.data.augment import NORMALIZATIONS
from moco.data.coco import read_coco
from moco.data.segmentation import (
    ClassMap,
    SegImages,
    SegmentationSource,
    SegSet,
    paint_coco,
    pair_folders,
    read_class_map,
    whole_images,
)
from moco.evaluation.segmentation import confusion_matrix, segmentation_scores
from moco.models.vit import VITS
from moco.training.checkpoint import TrainState
from moco.training.harness import run_job, run_length
from moco.training.run import Run, open_run, start_state, training_parts
from moco.training.task import Stats, Task
from moco.transfer.common import Recipe, job_config, length_flags, run_record, write_results
from moco.transfer.init import dense_network
from moco.transfer.segmenter import build_segmenter
from moco.transfer.sizes import SEGMENT_BASE, SEGMENT_CROP, SEGMENT_FACTOR, capped, check_fits, step_memory_gb

log = logging.getLogger("moco")

RECIPE: dict[str, dict[str, Any]] = {
    "optim": {"optimizer": "sgd", "nesterov": False, "momentum": 0.9, "lr": 0.02, "weight_decay": 1e-4,
              "schedule": "poly", "warmup_epochs": 1.0, "batch_size": 8, "epochs": 30, "scale_lr": False,
              "time_budget": 0.0},
    "train": {"log_every": 10, "checkpoint_every": 5, "eval_every": 5},
    "segment": {"atrous_rates": [2, 4, 6]},
}
"""Segmentation's defaults over the network's own settings: torchvision's reference recipe (SGD, momentum 0.9,
weight decay 1e-4, poly), batch 8 and lr 0.02 (its 0.02 at batch 32, measured on the CPU set), a one-epoch
warm-up, and ASPP rates for small images: DeepLabV3's 12/24/36 suit a 65-px feature map (a 513-px crop at stride
8); a 96-px crop's 12-px map takes them in the same proportion, 2/4/6. :class:`~moco.schema.SegmentConfig`
keeps DeepLabV3's; the GPU commands in benchmarks/README set them back."""
SEGMENTATION = Recipe("segment", "the segmentation recipe", RECIPE, ("finetune", "segment"))


@dataclass
class SegmentResult:
    """How a segmentation run ended: mIoU and pixel accuracy on the validation set (None without one), the init,
    and its cost."""

    out: Path
    mIoU: float | None  # noqa: N815 - the field's name
    pixel_acc: float | None
    init: str
    checkpoint: str
    epochs: int
    steps: int
    wall_s: float
    stopped: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's record (per-class IoU...)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["iou"] = d.pop("metrics").get("iou")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


@dataclass(frozen=True)
class SegFiles:
    """Where a split is: images with a folder of label maps (and an optional list file), or with COCO
    annotations."""

    images: str
    masks: str | None = None
    ann: str | None = None
    listing: str | None = None

    def describe(self) -> str:
        return self.ann or self.masks or self.images


@dataclass
class SegmentJob:
    """What a segmentation call resolved before any work: the config, the init and its checkpoint, the training
    set (read and checked), the validation files (read on rank 0) and the class mapping."""

    cfg: Config
    kind: str
    ckpt: str
    train: SegSet
    train_files: SegFiles
    val_files: SegFiles | None
    class_map: ClassMap | None
    classes_file: str | None


def read_split(files: SegFiles, cfg: Config, class_map: ClassMap | None, num_classes: int,
               classes: list[str] | None, warn: bool) -> SegSet:
    """A split's images and class maps: painted from COCO annotations, or paired with a folder of maps."""
    s = cfg.segment
    if files.ann is not None:
        return paint_coco(read_coco(files.ann, files.images, cfg.data.strict, warn), s.ignore_index, s.cache_mb)
    assert files.masks is not None
    return pair_folders(files.images, files.masks, s.ignore_index, num_classes, class_map, files.listing,
                        s.image_suffix, s.mask_suffix, s.cache_mb, classes)


def split_files(images: str | Path | None, masks: str | Path | None, ann: str | Path | None,
                listing: str | Path | None, what: str) -> SegFiles | None:
    """A split's files from the command's flags, checked for a complete set (None: no flag given)."""
    if images is None and masks is None and ann is None:
        return None
    if images is None:
        raise ConfigError(f"--{what}-images is needed with --{what}-masks or --{what}-ann")
    if (masks is None) == (ann is None):
        raise ConfigError(f"--{what}-images pairs with one of --{what}-masks (a folder of label maps) or "
                          f"--{what}-ann (COCO annotations)")
    if ann is not None and listing is not None:
        raise ConfigError(f"--{what}-list chooses label maps; COCO annotations (--{what}-ann) list their images")
    return SegFiles(str(images), str(masks) if masks else None, str(ann) if ann else None,
                    str(listing) if listing else None)


def _sizes(cfg: Config, train: SegSet) -> None:
    """Fill in ``segment.base_size`` (the training images' median shorter side) and ``crop_size`` (the base size)
    when they are left to the data, so that config.yaml records what ran."""
    s = cfg.segment
    if not s.base_size:
        median = train.median_short_side()
        s.base_size = capped(median, SEGMENT_BASE, "segmentation's random scale is relative to", "segment.base_size")
        if median > SEGMENT_BASE and not s.crop_size:
            s.crop_size = SEGMENT_CROP
    s.crop_size = s.crop_size or s.base_size


def resolve_job(checkpoint: str | Path | None, train: SegFiles | None, val: SegFiles | None,
                classes_file: str | Path | None, out: Path, init: str | None, flags: dict[str, Any],
                overrides: list[str] | None, config_file: str | None, resume: str | None,
                backbone: nn.Module | None, warn: bool) -> SegmentJob:
    """The job a :func:`segment` call describes; a resumed run's settings and data come from its checkpoint."""
    cfg, kind, ckpt, prev = job_config(SEGMENTATION, out, resume, init, checkpoint, backbone, flags, overrides,
                                       config_file)
    if prev is not None:
        files = prev["data"]
        train = train or SegFiles(**files["train"])
        val = val or (SegFiles(**files["val"]) if files.get("val") else None)
        classes_file = classes_file or files.get("classes_file")
    if cfg.model.arch in VITS:
        raise ConfigError(f"moco segment dilates ResNet stages under its head; {cfg.model.arch} is a ViT "
                          "(use a ResNet checkpoint: our resnet*, torchvision:resnet*, or the authors' R50)")
    if train is None:
        raise ConfigError("segmentation needs --train-images with --train-masks (label maps) or --train-ann (COCO)")
    s = cfg.segment
    class_map = read_class_map(classes_file, s.ignore_index) if classes_file else None
    data = read_split(train, cfg, class_map, s.num_classes, None, warn)
    s.num_classes = data.num_classes
    _sizes(cfg, data)
    return SegmentJob(cfg, kind, ckpt, data, train, val, class_map, str(classes_file) if classes_file else None)


def segmentation_step(model: nn.Module, batch: tuple, generator: torch.Generator) -> tuple[torch.Tensor, Stats]:
    """A segmenter's step on (images, maps, indices): the pixels' cross-entropy, and the accuracy of the pixels
    that are not ignored."""
    images, masks, _ = batch
    loss, logits = model(images, masks)
    keep = masks != model.ignore_index
    right = (logits.detach().argmax(1) == masks) & keep
    return loss, {"train_pixel_acc": right.sum() * 100.0 / keep.sum().clamp(min=1)}


def _causes(c: Config) -> str:
    return (f"learning rate too high for the batch (optim.lr={c.optim.lr} at optim.batch_size={c.optim.batch_size}, "
            f"the backbone's x {c.finetune.backbone_lr}), a warm-up too short (optim.warmup_epochs="
            f"{c.optim.warmup_epochs}) or low precision (train.precision={c.train.precision})")


SEGMENT = Task("segment", segmentation_step, {"train_pixel_acc": "train pixel acc"}, _causes)
"""The segmentation task as the trainer runs it."""


@dataclass
class SegmentationMonitor:
    """Segmentation's end-of-epoch evaluation: the segmenter's mIoU, pixel accuracy and per-class IoU on the whole
    images of ``val``, batched by size."""

    val: SegImages
    cfg: Config
    device: torch.device

    def matrix(self, model: nn.Module, limit: int | None = None) -> torch.Tensor:
        s, n = self.cfg.segment, self.cfg.segment.num_classes
        cm = torch.zeros(n, n, dtype=torch.int64)
        seen = 0
        for images, masks in whole_images(self.val, self.cfg.optim.batch_size, self.cfg.data.workers, self.device):
            with autocast(self.device, self.cfg.train.precision):
                pred = model.predict(images)
            cm += confusion_matrix(pred, masks, n, s.ignore_index)
            seen += len(images)
            if limit is not None and seen >= limit:
                break
        return cm

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return segmentation_scores(self.matrix(model), self.val.data.classes)

    def describe(self, rec: dict[str, Any]) -> str:
        return f"  mIoU {rec['mIoU']:.2f}, pixel acc {rec['pixel_acc']:.2f}%"

    def estimate_seconds(self, model: nn.Module) -> float:
        n = min(len(self.val), 2 * self.cfg.optim.batch_size)
        self.matrix(model, n // 2)  # warm
        t = time.perf_counter()
        self.matrix(model, n)
        return (time.perf_counter() - t) / n * len(self.val) * 1.1 + 0.2


def _val_set(job: SegmentJob) -> SegSet | None:
    """The validation set (rank 0), with the training set's classes."""
    if job.val_files is None:
        log.warning("no --val-images: the segmenter is not scored")
        return None
    train = job.train
    val = read_split(job.val_files, job.cfg, job.class_map, train.num_classes, train.classes, True)
    if val.num_classes != train.num_classes:
        raise DataError(f"{job.val_files.describe()} has {val.num_classes} classes, {job.train_files.describe()} "
                        f"{train.num_classes}: give both the same categories")
    return val


def set_up_segment(job: SegmentJob, out: Path, dinfo: DistInfo, dist_device: torch.device | None,
                   resume: str | None, overwrite: bool, progress: bool, max_steps: int | None,
                   backbone: nn.Module | None) -> tuple[Run, TrainState]:
    """The segmentation run and its state: folder and resume (``open_run``), the segmenter on the initialised
    backbone, its optimiser with the backbone's lr share, the training views and the mIoU monitor."""
    cfg, device, ck, ck_path = open_run(job.cfg, out, dinfo, dist_device, SEGMENT, resume, overwrite)
    s, b = cfg.segment, cfg.optim.batch_size
    check_fits(step_memory_gb(cfg.model.arch, cfg.model.width, s.crop_size**2, max(1, b // dinfo.world_size),
                              cfg.train.precision in ("bf16", "fp16"), SEGMENT_FACTOR), device,
               f"--batch-size (now {b}) or segment.crop_size (now {s.crop_size})")
    train = job.train
    if len(train) < b:
        raise DataError(f"{job.train_files.describe()} has {len(train)} image(s), fewer than one batch of {b}; "
                        "lower --batch-size")
    val = _val_set(job) if dinfo.is_main else None
    network = dense_network(cfg, job.kind, job.ckpt, backbone)
    if dinfo.enabled and device.type == "cuda" and cfg.finetune.bn == "train":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)  # the authors' SyncBN, across processes
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    try:
        model, stride = build_segmenter(network, s.num_classes, s.head, s.output_stride, s.atrous_rates, mean, std,
                                        s.ignore_index, cfg.finetune.bn)
    except ValueError as e:
        raise ConfigError(f"moco segment: {e}") from None
    parts = training_parts(cfg, model, device, lambda m: m.param_groups(cfg.finetune.backbone_lr))
    source = SegmentationSource(train, s.base_size, (s.scale[0], s.scale[1]), s.crop_size, s.flip,
                                cfg.data.workers, b, device, dinfo, s.cache_mb)
    monitor = SegmentationMonitor(SegImages(val, s.cache_mb), cfg, device) if val is not None else None
    extra = {"classes": train.classes, "init": job.kind, "source": job.ckpt, "stride": stride,
             "data": {"train": asdict(job.train_files), "val": asdict(job.val_files) if job.val_files else None,
                      "classes_file": job.classes_file}}
    run = Run(cfg, out, train.root, dinfo, device, source, monitor, progress, SEGMENT, max_steps,
              checkpoint_extra=extra)
    return run, start_state(run, parts, torch.Generator().manual_seed(cfg.train.seed + 1), ck, ck_path)


def segment(
    checkpoint: str | Path | None = None,
    train_images: str | Path | None = None,
    train_masks: str | Path | None = None,
    val_images: str | Path | None = None,
    val_masks: str | Path | None = None,
    out: str | Path = "runs/segment",
    init: str | None = None,
    *,
    train_ann: str | Path | None = None,
    val_ann: str | Path | None = None,
    train_list: str | Path | None = None,
    val_list: str | Path | None = None,
    classes: str | Path | None = None,
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
) -> SegmentResult:
    """Train a segmenter on ``checkpoint``'s backbone (``init="random"``: the same network from scratch) with the
    images of ``train_images`` and the label maps of ``train_masks`` (or the COCO annotations ``train_ann``,
    painted), scored by mIoU on ``val_images`` with ``val_masks`` (or ``val_ann``). ``*_list`` files choose the
    images (VOC's ImageSets); ``classes`` is a mapping file (``VALUE CLASS [NAME]`` lines). Writes the run folder
    ``out`` (results.json, checkpoints, metrics.jsonl, curves.png) and returns a :class:`SegmentResult`.

    ``epochs`` or ``time_budget`` (seconds) set the length; ``overrides`` are ``--set`` strings
    (``"segment.head=fcn"``); ``resume="auto"`` continues an interrupted run. The time budget counts from
    ``started`` (default: the call).
    """
    t_start = time.perf_counter()
    out = Path(out)
    job = resolve_job(checkpoint, split_files(train_images, train_masks, train_ann, train_list, "train"),
                      split_files(val_images, val_masks, val_ann, val_list, "val"), classes, out, init,
                      length_flags(flags, epochs, time_budget), overrides, config_file, resume, backbone,
                      warn=int(os.environ.get("RANK", "0")) == 0)

    def set_up(dinfo: DistInfo, dist_device: torch.device | None) -> tuple[Run, TrainState]:
        return set_up_segment(job, out, dinfo, dist_device, resume, overwrite, progress and dinfo.is_main,
                              max_steps, backbone)

    def finish(run: Run, state: TrainState, stopped: bool) -> SegmentResult:
        last = state.last
        result = SegmentResult(out, last.get("mIoU"), last.get("pixel_acc"), job.kind, job.ckpt, state.epoch,
                               state.step, time.perf_counter() - t_start, stopped, last)
        if run.main and not stopped:
            write_results(run.out, {**result.summary(), "classes": run.checkpoint_extra["classes"],
                                    "output_stride": run.checkpoint_extra["stride"], **run_record(run, state)})
        return result

    return run_job(job.cfg, out, set_up, t_start if started is None else started,
                   lambda run, state: _log_start(run, state, job), finish)


def _log_start(run: Run, state: TrainState, job: SegmentJob) -> None:
    cfg, s, t = run.cfg, run.cfg.segment, job.train
    log.info("segmentation: %s head on %s at output stride %d (%s init%s), %d images of %d classes from %s, "
             "crops of %d px from a base of %d x %s: %s, backbone lr x %g, BatchNorm %s, %s on %s", s.head,
             cfg.model.arch, run.checkpoint_extra["stride"], job.kind, f" from {job.ckpt}" if job.ckpt else "",
             len(t), t.num_classes, job.train_files.describe(), s.crop_size, s.base_size, s.scale,
             run_length(run, state), cfg.finetune.backbone_lr, cfg.finetune.bn, cfg.train.precision, run.device)
