"""``moco detect``: the detection task. A backbone as the body of torchvision's Faster R-CNN (Mask R-CNN when
the annotations carry segmentations) on COCO-format data, scored with COCO AP (pycocotools), trained by
:mod:`moco.training` (run folder, checkpoints and exact resume, time budget, metrics.jsonl and curves,
progress bar, torchrun).

The initialisation is ``moco finetune``'s: the checkpoint's backbone, a supervised network's, or the same
network from scratch. The detector (:mod:`moco.transfer.detector`) puts a feature pyramid on the ResNet's
stages. By default BatchNorm is trained, with batch statistics (SyncBN across GPUs under torchrun), as the
authors' Detectron2 configs do (``NORM: SyncBN``, ``FREEZE_AT: 0``): MoCo's feature statistics differ from
those of the detection data, and a frozen BN would keep the pretext's. ``--set finetune.bn=frozen`` freezes it.

The recipe (:data:`RECIPE`, every value overridable with ``--set``) is measured in ``benchmarks/README.md``
("Detection"); the authors' GPU recipe for VOC and COCO is documented there with its command.
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

from moco.config import Config, user_value
from moco.core.distributed import DistInfo
from moco.core.errors import ConfigError, DataError
from moco.core.precision import autocast
from moco.data.augment import NORMALIZATIONS
from moco.data.coco import CocoImages, CocoSet, DetectionSource, eval_batches, in_own_size, read_coco
from moco.evaluation.coco_ap import COCO_PERSON_SIGMAS, coco_ap, detections_to_coco
from moco.models.vit import VITS
from moco.training.checkpoint import TrainState
from moco.training.harness import run_job, run_length
from moco.training.run import Run, augmentation_generator, open_run, start_state, training_parts
from moco.training.task import Stats, Task
from moco.transfer.common import Recipe, job_config, length_flags, run_record, transfer_config, write_results
from moco.transfer.detector import build_detector
from moco.transfer.init import dense_network
from moco.transfer.sizes import (
    DETECT_FACTOR,
    DETECT_LONG,
    DETECT_SHORT,
    capped,
    check_fits,
    fitted_side,
    step_memory_gb,
)

log = logging.getLogger("moco")

RECIPE: dict[str, dict[str, Any]] = {
    "optim": {"optimizer": "sgd", "nesterov": False, "momentum": 0.9, "lr": 0.02, "weight_decay": 1e-4,
              "schedule": "cosine", "warmup_epochs": 1.0, "batch_size": 8, "epochs": 12, "scale_lr": False,
              "time_budget": 0.0},
    "train": {"log_every": 10, "checkpoint_every": 1, "eval_every": 2},
    "detect": {"rois_per_image": 128, "roi_sampling": 1},
}
"""Detection's defaults over the network's own settings, sized for a CPU by AP per minute (``benchmarks/README.md``,
"Detection at a plain loop's speed"): 128 RoIs an image, not Detectron2's 512, and RoIAlign's backward, a third of
a step, at one sampling point a bin side, not torchvision's 2 x 2. :class:`~moco.schema.DetectConfig` keeps the
authors' values; the GPU commands there set them."""
DETECTION = Recipe("detect", "the detection recipe", RECIPE, ("finetune", "detect"))  # init, BN: finetune's


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
        d.update({k: v for k, v in m.items() if k.startswith(("mask_", "kp_"))})
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
    sized_by_data: bool = False  # detect.min_size was left to the data: lowered to fit the memory if need be


def detect_config(source: Config, kind: str, ckpt: str, flags: dict[str, Any] | None = None,
                  overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """The run's config: the network's model and normalisation (plain BatchNorm), :data:`RECIPE` over them,
    then a config file, flags and ``--set`` overrides."""
    return transfer_config(source, kind, ckpt, DETECTION, flags, overrides, config_file)


def _sizes(cfg: Config, train: CocoSet) -> bool:
    """Fill in ``detect.min_size`` (the training images' median shorter side, at most torchvision's 800 px) and
    ``detect.max_size`` (1333/800 of the largest min_size) when they are left to the data, so that config.yaml
    records what ran. Returns whether the data gave min_size."""
    d = cfg.detect
    derived = not d.min_size
    if derived:
        d.min_size = [max(16, capped(train.median_short_side(), DETECT_SHORT, "detection trains and tests",
                                     "detect.min_size"))]
    if not d.max_size:
        d.max_size = round(max(d.min_size) * DETECT_LONG / DETECT_SHORT)
    return derived


CAMERA_IMAGES = 2
"""Images a process trains on per step at torchvision's 800-px ceiling (its references' 2 per GPU): the recipe's
batch of 8 is sized for small canvases (at 800 x 1333 px it does not fit 8 GB; benchmarks/README.md)."""


def _batch_given(flags: dict[str, Any], overrides: list[str] | None, config_file: str | None) -> bool:
    """Whether the user chose the batch (a flag, a --set, or a config file, which may)."""
    return bool(config_file) or user_value("optim.batch_size", flags, overrides) is not None


def _camera_batch(cfg: Config) -> None:
    """At the 800-px ceiling (camera photos) train :data:`CAMERA_IMAGES` images a process per step, the lr scaled
    with the batch (linear scaling), said in one line."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    b, o = CAMERA_IMAGES * world, cfg.optim
    if max(cfg.detect.min_size) < DETECT_SHORT or o.batch_size <= b:
        return
    log.warning("camera-sized photos: %d image(s) a step (torchvision's %d per device at 800 px), lr %g -> %g; "
                "--batch-size to choose", b, CAMERA_IMAGES, o.lr, o.lr * b / o.batch_size)
    o.lr, o.batch_size = o.lr * b / o.batch_size, b


def decode_sizes(cfg: Config) -> tuple[int, int]:
    """The largest shorter side and the longer side's cap the detector resizes to: JPEGs larger than that are
    decoded at a reduced scale (:class:`moco.data.coco.CocoImages`)."""
    return (max(cfg.detect.min_size), cfg.detect.max_size) if cfg.detect.min_size else (0, 0)


def _fit_memory(cfg: Config, device: torch.device, per_process: int, derived: bool) -> None:
    """Estimate a step's memory at the detector's largest input before the first step: a size the data gave is
    lowered until it fits (one line), a size the user set that cannot fit is refused (what to lower)."""
    d, m = cfg.detect, cfg.model
    half = cfg.train.precision in ("bf16", "fp16")
    side = max(d.min_size)

    def need(s: int) -> float:
        return step_memory_gb(m.arch, m.width, s * s * d.max_size / side, per_process, half, DETECT_FACTOR,
                              m.cifar_stem)

    if not derived:
        check_fits(need(side), device, f"--batch-size (now {cfg.optim.batch_size}) or detect.min_size (now "
                                       f"{d.min_size})")
        return
    fit = fitted_side(side, need(side), device)
    if fit < side:
        log.warning("a step at %d px would need about %.1f GB: detection trains and tests at %d px to fit the "
                    "memory (--batch-size or --set detect.min_size=... to choose)", side, need(side), fit)
        d.min_size, d.max_size = [fit], round(fit * DETECT_LONG / DETECT_SHORT)
        check_fits(need(fit), device, f"--batch-size (now {cfg.optim.batch_size})")


def resolve_job(
    checkpoint: str | Path | None, train_ann: str | Path | None, train_images: str | Path | None,
    val_ann: str | Path | None, val_images: str | Path | None, out: Path, init: str | None,
    flags: dict[str, Any], overrides: list[str] | None, config_file: str | None, resume: str | None,
    backbone: nn.Module | None, warn: bool,
) -> DetectJob:
    """The job a :func:`detect` call describes; a resumed run's settings and data come from its checkpoint."""
    cfg, kind, ckpt, prev = job_config(DETECTION, out, resume, init, checkpoint, backbone, flags, overrides,
                                       config_file)
    if prev is not None:
        files = prev["data"]
        train_ann, train_images = train_ann or files["train_ann"], train_images or files["train_images"]
        val_ann, val_images = val_ann or files.get("val_ann"), val_images or files.get("val_images")
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
    derived = _sizes(cfg, train)
    if derived and prev is None and not _batch_given(flags, overrides, config_file):
        _camera_batch(cfg)
    return DetectJob(cfg, kind, ckpt, train, Path(val_ann).expanduser() if val_ann else None,
                     Path(val_images).expanduser() if val_images else None, derived)


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


def detection_step(model: nn.Module, batch: tuple, generator: torch.Generator) -> tuple[torch.Tensor, Stats]:
    """A detector's step on a batch of (images, targets, indices): the sum of its losses, and how many of the
    RoIs it sampled the box classifier got right."""
    images, targets, _ = batch
    loss, right = model(images, targets)
    return loss, {"box_acc1": right.float().mean() * 100}


def _causes(c: Config) -> str:
    """What to check when a detector's loss stops being finite."""
    budget = (f" of optim.epochs={c.optim.epochs}: under --time-budget, that share of the planned steps"
              if c.optim.time_budget else "")
    return (f"learning rate too high for the batch (optim.lr={c.optim.lr} at optim.batch_size={c.optim.batch_size}, "
            f"the backbone's x {c.finetune.backbone_lr}), a warm-up too short (optim.warmup_epochs="
            f"{c.optim.warmup_epochs}{budget}) or low precision (train.precision={c.train.precision})")


DETECT = Task("detect", detection_step, {"box_acc1": "box acc"}, _causes, unused_parameters=True)
"""The detection task as the trainer runs it: a step's images keep their own sizes (no memory format)."""


@dataclass
class DetectionMonitor:
    """Detection's end-of-epoch evaluation: COCO AP of the detector's boxes (and masks or keypoints, when it
    predicts them; keypoints by OKS with ``sigmas``) on ``val``, by pycocotools, in batches of ``batch_size``
    images; the detector's class i is ``category_ids[i - 1]``."""

    val: CocoSet
    category_ids: list[int]
    batch_size: int
    cfg: Config
    device: torch.device
    masks: bool = False
    sigmas: list[float] | None = None  # the keypoints' OKS sigmas, when the detector predicts keypoints
    cost_follows_model: bool = True  # an untrained detector boxes more, and is slower to score, than a trained one
    images: CocoImages | None = None  # the validation images, made on the first evaluation (and kept decoded from
    # then on when they fit detect.cache_mb)

    def detections(self, model: nn.Module, limit: int | None = None,
                   marks: list[float] | None = None) -> list[dict[str, Any]]:
        """The COCO result entries of the first ``limit`` (default all) validation images; ``marks`` gets the
        clock after each batch."""
        ids, cats = self.val.ids, self.category_ids
        res: list[dict[str, Any]] = []
        seen = 0
        if self.images is None:
            self.images = CocoImages(self.val, False, False, self.cfg.detect.cache_mb, sizes=decode_sizes(self.cfg))
        for images, idx in eval_batches(self.images, self.batch_size, self.cfg.data.workers, self.device):
            with autocast(self.device, self.cfg.train.precision):
                outs = model.detect(images)
            outs = [in_own_size(o, x, self.val.sizes[k]) for o, x, k in zip(outs, images, idx)]
            res += detections_to_coco(outs, [ids[k] for k in idx], cats)
            seen += len(idx)
            if marks is not None:
                marks.append(time.perf_counter())
            if limit is not None and seen >= limit:
                break
        return res

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        found = self.detections(model)
        rec: dict[str, Any] = coco_ap(self.val.gt, found, "bbox")
        if self.masks:
            rec.update({f"mask_{k}": v for k, v in coco_ap(self.val.gt, found, "segm").items()})
        if self.sigmas is not None:
            rec.update({f"kp_{k}": v for k, v in coco_ap(self.val.gt, found, "keypoints", self.sigmas).items()})
        rec["detections"] = len(found)
        return rec

    def describe(self, rec: dict[str, Any]) -> str:
        mask = f", mask AP {rec['mask_AP']:.2f}" if rec.get("mask_AP") is not None else ""
        kp = f", keypoint AP {rec['kp_AP']:.2f}" if rec.get("kp_AP") is not None else ""
        return f"  box AP {rec['AP']:.2f}, AP50 {rec['AP50']:.2f}{mask}{kp}"

    def estimate_seconds(self, model: nn.Module) -> float:
        """A full evaluation's seconds, from one pass over three batches: the loader's start and the first batch
        as they took, the rest at the pace of the later batches (the start, forking workers, would count once
        per batch if timed per image), and pycocotools' time, which grows with the detections."""
        n, b = len(self.val.ids), self.batch_size
        marks = [time.perf_counter()]
        found = self.detections(model, min(n, 3 * b), marks)
        if len(marks) < 3:  # a set of one batch: the timing is the whole evaluation
            return (marks[-1] - marks[0]) * 1.1 + 1.0
        pace = (marks[-1] - marks[1]) / (len(marks) - 2)  # seconds per batch after the first
        batches = -(-n // b)
        boxes = len(found) * n / min(n, 3 * b)
        return marks[1] - marks[0] + pace * (batches - 1) * 1.1 + 1.5 + COCOEVAL_S_PER_BOX * boxes


COCOEVAL_S_PER_BOX = 1.5e-5
"""pycocotools' seconds per detection to score, measured on 400 pasted canvases: 1.75 s for 7,857 boxes, 2.1 s
for 40,000 (a fixed part of 1.5 s, counted apart)."""


def oks_sigmas(given: list[float], train: CocoSet) -> list[float]:
    """The keypoints' OKS sigmas: ``detect.oks_sigmas``, else the annotation file's, else COCO's person sigmas
    for 17 keypoints; refused in one line when none fits."""
    k = len(train.keypoint_names)
    sigmas = list(given) or train.sigmas or (list(COCO_PERSON_SIGMAS) if k == 17 else None)
    if sigmas is None:
        raise ConfigError(f"{train.ann_file}: keypoint AP needs an OKS sigma for each of the {k} keypoints "
                          f"({', '.join(train.keypoint_names[:5])}...); give them with --set detect.oks_sigmas=[...] "
                          "or as the category's 'sigmas'")
    if len(sigmas) != k:
        raise ConfigError(f"detect.oks_sigmas has {len(sigmas)} values for {k} keypoints")
    return sigmas


def set_up_detect(
    job: DetectJob, out: Path, dinfo: DistInfo, dist_device: torch.device | None, resume: str | None,
    overwrite: bool, progress: bool, max_steps: int | None, backbone: nn.Module | None,
) -> tuple[Run, TrainState]:
    """The detection run and its state: folder and resume (``open_run``), the detector on the initialised
    backbone, its optimiser with the backbone's lr share, the batches and the COCO AP monitor."""
    cfg, device, ck, ck_path = open_run(job.cfg, out, dinfo, dist_device, DETECT, resume, overwrite)
    train = job.train
    val = _val_set(job, cfg.data.strict) if dinfo.is_main else None
    b = cfg.optim.batch_size
    if len(train.ids) < b:
        raise DataError(f"{train.ann_file} has {len(train.ids)} usable image(s), fewer than one batch of {b}; "
                        "lower --batch-size")
    _fit_memory(cfg, device, max(1, b // dinfo.world_size), job.sized_by_data and ck is None)
    d = cfg.detect
    n_kp = len(train.keypoint_names) if d.keypoints == "auto" and train.keypoints is not None else 0
    masks = d.masks == "auto" and train.segmentations is not None and not n_kp
    if n_kp and train.segmentations is not None and d.masks == "auto":
        log.warning("%s carries keypoints and segmentations: training Keypoint R-CNN (torchvision has no model of "
                    "both); --set detect.keypoints=off trains Mask R-CNN", train.ann_file)
    sigmas = oks_sigmas(d.oks_sigmas, train) if n_kp else None
    network = dense_network(cfg, job.kind, job.ckpt, backbone)
    if dinfo.enabled and device.type == "cuda" and cfg.finetune.bn == "train":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)  # the authors' SyncBN, across processes
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    try:
        model = build_detector(network, train.num_classes, d, d.min_size, d.max_size, mean, std, masks,
                               cfg.finetune.bn, n_kp)
    except ValueError as e:
        raise ConfigError(f"moco detect: {e}") from None
    parts = training_parts(cfg, model, device, lambda m: m.param_groups(cfg.finetune.backbone_lr))
    gen = augmentation_generator(cfg)  # flips, the same on every rank
    source = DetectionSource(train, masks, d.flip, cfg.data.workers, b, gen, device, dinfo, cfg.data.strict,
                             d.cache_mb, bool(n_kp), decode_sizes(cfg))
    cat_ids = [c["id"] for c in train.categories]
    monitor = DetectionMonitor(val, cat_ids, max(1, b // dinfo.world_size), cfg, device, masks,
                               sigmas) if val else None
    extra = {"categories": train.categories, "init": job.kind, "source": job.ckpt, "masks": masks,
             "keypoints": train.keypoint_names if n_kp else [],
             "data": {"train_ann": str(train.ann_file.resolve()), "train_images": str(train.images.root.resolve()),
                      "val_ann": str(job.val_ann.resolve()) if job.val_ann else None,
                      "val_images": str(job.val_images.resolve()) if job.val_images else None}}
    run = Run(cfg, out, train.images.root, dinfo, device, source, monitor, progress, DETECT, max_steps,
              checkpoint_extra=extra)
    return run, start_state(run, parts, gen, ck, ck_path)


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
    job = resolve_job(checkpoint, train_ann, train_images, val_ann, val_images, out, init,
                      length_flags(flags, epochs, time_budget), overrides, config_file, resume, backbone,
                      warn=int(os.environ.get("RANK", "0")) == 0)

    def set_up(dinfo: DistInfo, dist_device: torch.device | None) -> tuple[Run, TrainState]:
        return set_up_detect(job, out, dinfo, dist_device, resume, overwrite, progress and dinfo.is_main, max_steps,
                             backbone)

    def finish(run: Run, state: TrainState, stopped: bool) -> DetectResult:
        last = state.last
        result = DetectResult(out, last.get("AP"), last.get("AP50"), last.get("AP75"), job.kind, job.ckpt,
                              state.epoch, state.step, time.perf_counter() - t_start, stopped, last)
        if run.main and not stopped:
            _write_results(run, state, result)
        return result

    return run_job(job.cfg, out, set_up, t_start if started is None else started,
                   lambda run, state: _log_start(run, state, job), finish)


def _log_start(run: Run, state: TrainState, job: DetectJob) -> None:
    cfg, t, d = run.cfg, job.train, run.cfg.detect
    kind = ("Keypoint R-CNN" if run.checkpoint_extra.get("keypoints") else
            "Mask R-CNN" if run.checkpoint_extra["masks"] else "Faster R-CNN")
    log.info("detection: %s on %s (%s init%s), %d images with %d boxes of %d categories from %s, shorter side %s "
             "(longer at most %d): %s, backbone lr x %g, BatchNorm %s, %s on %s", kind, cfg.model.arch, job.kind,
             f" from {job.ckpt}" if job.ckpt else "", len(t.ids), t.n_boxes, t.num_classes, t.ann_file,
             "/".join(map(str, d.min_size)), d.max_size, run_length(run, state), cfg.finetune.backbone_lr,
             cfg.finetune.bn, cfg.train.precision, run.device)


def _write_results(run: Run, state: TrainState, result: DetectResult) -> None:
    """results.json: COCO AP and its kin, the init, the categories, the cost, the machine, the config."""
    write_results(run.out, {**result.summary(), "detections": state.last.get("detections"),
                            "categories": run.checkpoint_extra["categories"], **run_record(run, state)})
