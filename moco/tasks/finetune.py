"""``moco finetune``: the fine-tuning task. A backbone, with a new linear classifier, on a labelled ImageFolder
(or shards with labels), trained by :mod:`moco.training` (run folder, checkpoints and exact resume, time
budget, cached batches, metrics.jsonl and curves, progress bar).

The network is the checkpoint's backbone (``init="checkpoint"``: a MoCo checkpoint, the authors'
``.pth.tar`` or a torchvision state dict; ``"supervised"``: a network trained with labels, e.g. a
fine-tuning run's checkpoint), or the same architecture from scratch (``"random"``), with ``fc`` a new linear
classifier. :class:`~moco.transfer.classifier.Classifier` trains it with cross-entropy; the run's monitor is
the test set's top-1. ``RUN/results.json`` holds the outcome, ``RUN/labels.txt``
the images learnt from and ``RUN/classifier.pt`` the classifier; ``moco export`` turns the checkpoint's
network into a torchvision state dict.

The recipe (:data:`RECIPE`, every value overridable with ``--set``) is measured in
``benchmarks/README.md`` ("Fine-tuning"): SGD with Nesterov momentum, a cosine lr after a one-epoch
warm-up, flip and crop augmentation, BatchNorm trained with batch statistics as the paper (4.2) does,
because MoCo's feature statistics differ from those the network will see on the new task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.config import Config
from moco.core.distributed import DistInfo
from moco.core.errors import ConfigError, DataError
from moco.core.precision import memory_format
from moco.data import sets
from moco.data.cache import DecodedImages
from moco.data.folder import ImageList
from moco.data.pipelines import LabelledSource, decode_side
from moco.evaluation.knn import extract_feature_sets, time_per_image
from moco.training.checkpoint import TrainState
from moco.training.harness import run_job, run_length
from moco.training.run import Run, augmentation_generator, open_run, start_state, training_parts
from moco.training.task import Stats, Task
from moco.transfer.classifier import Classifier, hits
from moco.transfer.common import Recipe, job_config, length_flags, run_record, transfer_config, write_results
from moco.transfer.init import init_network
from moco.transfer.labels import balanced_subset, describe_labels, passes_per_epoch, read_labels, write_labels

log = logging.getLogger("moco")

RECIPE: dict[str, dict[str, Any]] = {
    "optim": {"optimizer": "sgd", "nesterov": True, "momentum": 0.9, "lr": 0.1, "weight_decay": 5e-4,
              "schedule": "cosine", "warmup_epochs": 1.0, "batch_size": 256, "epochs": 30, "scale_lr": False,
              "time_budget": 0.0},
    "train": {"log_every": 10, "checkpoint_every": 10, "eval_every": 5},
    "data": {"pipeline": "cached", "train_size": 0, "ramp_size": 0},
}
"""Fine-tuning's defaults over the network's own settings (``benchmarks/README.md``, "Fine-tuning")."""
FINETUNE = Recipe("finetune", "the fine-tuning recipe", RECIPE, ("finetune",))


@dataclass
class FinetuneResult:
    """How a fine-tuning run ended: its scores on the test set, the labels and init it used, and its cost."""

    out: Path
    top1: float | None  # on the test set (None without one)
    top5: float | None  # None with 5 classes or fewer, where it is always 100%
    labels: dict[str, Any]  # spec, images, per class, fraction, file
    init: str  # checkpoint, supervised or random
    checkpoint: str  # the backbone's source ('' for random init without one)
    epochs: int
    steps: int
    wall_s: float  # this call's wall time
    stopped: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's record

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d.pop("metrics")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def finetune_config(source: Config, kind: str, ckpt: str, flags: dict[str, Any] | None = None,
                    overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """The run's config: the network's own model and data settings (plain BatchNorm), :data:`RECIPE` over
    them, then a config file, flags and ``--set`` overrides."""
    return transfer_config(source, kind, ckpt, FINETUNE, flags, overrides, config_file)


def _labelled(data: sets.Data, what: str, strict: bool, warn: bool, progress: bool) -> ImageList:
    """The labelled listing of ``data`` (:func:`moco.data.sets.listing`); a folder without class sub-folders is
    refused in one line."""
    images = sets.listing(data, strict, warn, progress)
    if images.labels is None:
        raise DataError(f"{what} {data} has no class sub-folders: fine-tuning needs an ImageFolder "
                        "(one sub-folder per class)")
    return images


def map_test_labels(train: ImageList, test: ImageList) -> torch.Tensor:
    """The test images' labels as indices of the training classes; a test class that training lacks is an
    error."""
    assert train.classes is not None and test.classes is not None and test.labels is not None
    index = {c: i for i, c in enumerate(train.classes)}
    lacking = [c for c in test.classes if c not in index]
    if lacking:
        raise DataError(f"{test.root} has {len(lacking)} class(es) that {train.root} lacks "
                        f"({', '.join(lacking[:5])}): the classifier cannot predict them")
    return torch.tensor([index[test.classes[y]] for y in test.labels])


@dataclass
class Job:
    """What a fine-tuning call resolved before any work: the config, the init and its checkpoint, the labelled
    sets (folders or shards) and the labels file (None: draw ``finetune.labels``)."""

    cfg: Config
    kind: str
    ckpt: str
    train: sets.Data
    test: sets.Data | None
    labels_file: Path | None


def resolve_job(
    checkpoint: str | Path | None, data: str | Path | None, out: Path, labels: str | None, init: str | None,
    train_dir: str | Path | list[str] | None, test_dir: str | Path | list[str] | None,
    labels_file: str | Path | None,
    flags: dict[str, Any], overrides: list[str] | None, config_file: str | None, resume: str | None,
    backbone: nn.Module | None,
) -> Job:
    """The job a :func:`finetune` call describes; a resumed run's own settings, data and labels come from its
    checkpoint, with what the call changes on top."""
    cfg, kind, ckpt, prev = job_config(
        FINETUNE, out, resume, init, checkpoint, backbone, flags, overrides, config_file,
        {"finetune.labels": labels, "finetune.labels_file": str(labels_file) if labels_file else None})
    if prev is not None:
        train_dir = train_dir or prev["data"]["train"]
        test_dir = test_dir or prev["data"].get("test")
        labels_file = out / "labels.txt"
    if data is None and train_dir is None:
        raise ConfigError("fine-tuning needs --data (a folder with train/ and test/, or shards) or --train and --test")
    found = None
    if train_dir is None:
        train_dir, found = sets.split(data)
    train = sets.resolve(train_dir)
    test = sets.resolve(test_dir) if test_dir is not None else found
    labels_file = labels_file or cfg.finetune.labels_file or None
    return Job(cfg, kind, ckpt, train, test, Path(labels_file) if labels_file else None)


def _labelled_data(job: Job, cfg: Config, out: Path, main: bool, resumed: bool, device: torch.device,
                   progress: bool) -> tuple[ImageList, DecodedImages, TestMonitor | None, dict[str, Any]]:
    """(the training folder's listing, the chosen images decoded, the test monitor on rank 0, what the results
    say of the labels); rank 0 writes labels.txt (kept when resuming)."""
    d, f = cfg.data, cfg.finetune
    full = _labelled(job.train, "--train", d.strict, main, progress)
    chosen = read_labels(full, job.labels_file) if job.labels_file else balanced_subset(full, f.labels, f.labels_seed)
    spec = None if f.labels_file else f.labels
    if main and (not resumed or not (out / "labels.txt").is_file()):
        write_labels(chosen, out / "labels.txt", f"the images of {job.labels_file}" if spec is None else
                     f"{spec} of each class, seed {f.labels_seed}")
    side, cache = decode_side(d), d.cache_dir or None
    decoded = sets.decode(job.train, side, cache, d.workers, d.strict, progress, chosen, len(chosen) == len(full))
    monitor = None
    if job.test is not None and main:
        test = _labelled(job.test, "--test", d.strict, True, progress)
        map_test_labels(full, test)  # a class that training lacks: refused before decoding
        test_set = sets.decode(job.test, side, cache, d.workers, d.strict, progress, test)
        y_test = map_test_labels(full, test_set.images)  # of the test images that decoded
        monitor = TestMonitor(test_set, y_test, len(full.classes or []), cfg, device)
    elif main:
        log.warning("no test folder: the fine-tuned network is not scored (give --data DIR with test/, or --test)")
    return full, decoded, monitor, {"spec": spec, "file": str(out / "labels.txt"), **describe_labels(decoded.images,
                                                                                                    full)}


def classifier_step(model: nn.Module, batch: tuple, generator: torch.Generator,
                    fmt: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, Stats]:
    """A classifier's step on a batch of (images, labels, indices): cross-entropy, and the training accuracy."""
    images, labels, _ = batch
    loss, logits = model(images.contiguous(memory_format=fmt), labels)
    return loss, {"train_acc1": hits(logits.detach(), labels).float().mean() * 100}


def finetune_task(cfg: Config) -> Task:
    """The fine-tuning task as the trainer runs it."""
    return Task("finetune", partial(classifier_step, fmt=memory_format(cfg.train.channels_last)),
                {"train_acc1": "train acc"},
                lambda c: f"learning rate too high (optim.lr={c.optim.lr}, the backbone's x "
                          f"{c.finetune.backbone_lr}) or low precision (train.precision={c.train.precision})")


@dataclass
class TestMonitor:
    """Fine-tuning's end-of-epoch evaluation: the classifier's top-1 and top-5 on ``test`` (centre crops, eval
    mode), whose labels are ``labels`` (indices of the training classes). Top-5 is left out with 5 classes or
    fewer, where it is always 100%."""

    test: DecodedImages
    labels: torch.Tensor
    num_classes: int
    cfg: Config
    device: torch.device

    def logits(self, model: nn.Module, data: DecodedImages | None = None) -> torch.Tensor:
        c = self.cfg
        out = extract_feature_sets(model.encoder_q, data or self.test, c.data.image_size, self.device, ("head",),
                                   c.train.precision, channels_last=c.train.channels_last, normalize=False,
                                   norm=c.data.normalize)["head"]
        model.train(model.training)  # the network's own modes again (frozen BatchNorm stays frozen)
        return out

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        top = self.logits(model).topk(min(5, self.num_classes), dim=1).indices
        right = top == self.labels.view(-1, 1)
        rec: dict[str, Any] = {"test_top1": 100.0 * right[:, 0].float().mean().item()}
        if self.num_classes > 5:
            rec["test_top5"] = 100.0 * right.any(1).float().mean().item()
        return rec

    def describe(self, rec: dict[str, Any]) -> str:
        top5 = f", top-5 {rec['test_top5']:.2f}%" if "test_top5" in rec else ""
        return f"  test top-1 {rec['test_top1']:.2f}%{top5}"

    def estimate_seconds(self, model: nn.Module) -> float:
        return time_per_image(lambda s: self.logits(model, s), self.test) * len(self.test.array) * 1.05 + 0.1


def set_up_finetune(
    job: Job, out: Path, dinfo: DistInfo, dist_device: torch.device | None, resume: str | None, overwrite: bool,
    progress: bool, max_steps: int | None, backbone: nn.Module | None,
) -> tuple[Run, TrainState]:
    """The fine-tuning run and its state: folder and resume (``open_run``), labelled data, the network and its
    init, the classifier's optimiser with the backbone's lr share, then ``start_state``."""
    task = finetune_task(job.cfg)
    cfg, device, ck, ck_path = open_run(job.cfg, out, dinfo, dist_device, task, resume, overwrite)
    full, decoded, monitor, label_info = _labelled_data(job, cfg, out, dinfo.is_main, ck is not None, device,
                                                         progress)
    network = init_network(cfg, job.kind, job.ckpt, len(full.classes or []), backbone)
    if dinfo.enabled and device.type == "cuda" and cfg.finetune.bn == "train":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)  # the authors' SyncBN, across processes
    parts = training_parts(cfg, Classifier(network, cfg.finetune.bn, cfg.finetune.label_smoothing), device,
                           lambda m: m.param_groups(cfg.finetune.backbone_lr))
    gen = augmentation_generator(cfg)
    b = cfg.optim.batch_size
    extra = {"classes": full.classes, "labels": label_info, "init": job.kind, "source": job.ckpt,
             "data": {"train": sets.record(job.train), "test": sets.record(job.test)}}
    run = Run(cfg, out, decoded.images.root, dinfo, device, LabelledSource(decoded, cfg.data, b, gen, device, dinfo),
              monitor, progress, task, max_steps,
              passes=passes_per_epoch(len(decoded.images), b, cfg.finetune.min_epoch_steps), checkpoint_extra=extra)
    return run, start_state(run, parts, gen, ck, ck_path)


def finetune(
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path = "runs/finetune",
    labels: str | None = None,
    init: str | None = None,
    *,
    train_dir: str | Path | list[str] | None = None,
    test_dir: str | Path | list[str] | None = None,
    labels_file: str | Path | None = None,
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
) -> FinetuneResult:
    """Fine-tune ``checkpoint``'s backbone (or, ``init="random"``, the same network from scratch) with a new
    linear classifier on ``data`` (a folder with ``train/`` and ``test/`` ImageFolders, or WebDataset shards with
    ``.cls`` labels, e.g. ``moco shards``'s train-*.tar and test-*.tar; or ``train_dir`` and ``test_dir``, each
    a folder or shards), using ``labels`` of each class (``"10%"``, ``"50"``; default all) or the images a
    ``labels_file`` lists. Writes the run folder ``out`` and returns a :class:`FinetuneResult`.

    ``epochs`` or ``time_budget`` (seconds) set the length; ``overrides`` are ``--set`` strings
    (``"optim.lr=0.05"``, ``"finetune.bn=frozen"``); ``flags`` a ``{"optim.lr": 0.05}`` mapping. ``resume="auto"``
    continues an interrupted run (the other arguments may then be left out: the run's checkpoint knows them).
    ``backbone`` is a fresh instance of a network given to ``moco.pretrain(backbone=...)``. The time budget counts
    from ``started`` (a :func:`time.perf_counter` time; default: the call).
    """
    t_start = time.perf_counter()
    out = Path(out)
    job = resolve_job(checkpoint, data, out, labels, init, train_dir, test_dir, labels_file,
                      length_flags(flags, epochs, time_budget), overrides, config_file, resume, backbone)

    def set_up(dinfo: DistInfo, dist_device: torch.device | None) -> tuple[Run, TrainState]:
        return set_up_finetune(job, out, dinfo, dist_device, resume, overwrite, progress, max_steps, backbone)

    def finish(run: Run, state: TrainState, stopped: bool) -> FinetuneResult:
        last = state.last
        result = FinetuneResult(out, last.get("test_top1"), last.get("test_top5"), run.checkpoint_extra["labels"],
                                job.kind, job.ckpt, state.epoch, state.step, time.perf_counter() - t_start, stopped,
                                last)
        if run.main and not stopped:
            _write_outputs(run, state, result)
        return result

    return run_job(job.cfg, out, set_up, t_start if started is None else started,
                   lambda run, state: _log_start(run, state, job), finish)


def _log_start(run: Run, state: TrainState, job: Job) -> None:
    cfg, lab = run.cfg, run.checkpoint_extra["labels"]
    spec = f"{lab['spec']} of each class" if lab["spec"] else f"the images of {job.labels_file}"
    log.info("fine-tuning %s (%s init%s) on %d labelled images of %d classes from %s (%s), %d px: %s%s, backbone "
             "lr x %g, BatchNorm %s, %s on %s", cfg.model.arch, job.kind, f" from {job.ckpt}" if job.ckpt else "",
             lab["images"], len(run.checkpoint_extra["classes"] or []), run.train_dir, spec, cfg.data.image_size,
             run_length(run, state), f" ({run.passes} passes an epoch)" if run.passes > 1 else "",
             cfg.finetune.backbone_lr, cfg.finetune.bn, cfg.train.precision, run.device)


def _write_outputs(run: Run, state: TrainState, result: FinetuneResult) -> None:
    """results.json (the result, the precision, the machine), classifier.pt (weight, bias, classes)."""
    fc = state.model.encoder_q.fc
    torch.save({"weight": fc.weight.detach().cpu().clone(), "bias": fc.bias.detach().cpu().clone(),
                "classes": run.checkpoint_extra["classes"], "test_top1": result.top1}, run.out / "classifier.pt")
    write_results(run.out, {**result.summary(), **run_record(run, state)})
