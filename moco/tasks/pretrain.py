"""``pretrain``: the contrastive task. MoCo (or another dictionary) on unlabelled images, the kNN monitor on
labelled ones, trained by :mod:`moco.training`.

``pretrain(cfg, data, out)`` trains on an image folder or WebDataset shards and writes the run directory
(config.yaml, metrics.jsonl, tb/, checkpoints, curves.png). Stopping is safe at any time: SIGINT/SIGTERM
finish the current step and write ``checkpoint_last.pt``; ``resume="auto"`` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco.config import from_dict, resolve, validate
from moco.core.distributed import DistInfo
from moco.core.errors import ConfigError, DataError
from moco.core.precision import memory_format
from moco.data import sets
from moco.data.pipelines import BatchSource, decode_side
from moco.evaluation.health import health_monitor
from moco.evaluation.knn import KnnMonitor
from moco.methods import build_moco, describe
from moco.models.generic import custom_name
from moco.presets.auto import Recipe, chosen_value, queue_size
from moco.schedules import momentum_at
from moco.schema import Config
from moco.tasks.recipe import RECIPE_FILE, recipe_record
from moco.training.checkpoint import TrainState, checkpoint_to_resume
from moco.training.harness import run_job, run_length
from moco.training.run import Run, augmentation_generator, open_run, start_state, training_parts
from moco.training.task import Stats, Task

log = logging.getLogger("moco")
SECTIONS = ("method",)  # pretraining's own config section (moco.config.validate)
KNN_MEMORY_MAX = 200_000  # the most training samples from shards the kNN monitor decodes as its memory


def contrastive_step(model: nn.Module, batch: tuple, generator: torch.Generator,
                     fmt: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, Stats]:
    """A contrastive method's step on a batch of (two views, the images' indices): the loss, and how often the
    positive key (logit 0) scored highest."""
    im_q, im_k, index = batch
    loss, logits = model(im_q.contiguous(memory_format=fmt), im_k.contiguous(memory_format=fmt), generator=generator,
                         index=index)
    return loss, {"pretext_acc1": (logits.detach().argmax(1) == 0).float().mean() * 100}


def set_momentum(model: nn.Module, cfg: Config, t: float) -> None:
    """The key encoder's scheduled momentum at schedule epoch ``t`` (dictionaries without one ignore it)."""
    model.set_momentum(momentum_at(cfg, t))


def pretrain_task(cfg: Config) -> Task:
    """The contrastive task as the trainer runs it."""
    return Task("pretrain", partial(contrastive_step, fmt=memory_format(cfg.train.channels_last)),
                {"pretext_acc1": "pretext acc"},
                lambda c: f"learning rate too high (optim.lr={c.optim.lr}), temperature too low "
                          f"(method.T={c.method.T}) or low precision (train.precision={c.train.precision})",
                before_step=set_momentum, health=health_monitor)


@dataclass
class RunResult:
    """How a call to :func:`pretrain` ended: ``out`` (the run folder: config.yaml, metrics.jsonl, checkpoints,
    recipe.json when the recipe was chosen), ``epoch`` (completed epochs), ``step`` (global steps), ``stopped``
    (ended by a signal or ``max_steps`` before ``optim.epochs``: resume it) and ``metrics`` (the last completed
    epoch's record: loss, pretext_acc1, lr, images_per_sec, knn_top1 when the monitor ran; {} if none)."""

    out: Path
    epoch: int  # completed epochs
    step: int  # global steps
    stopped: bool  # ended by a signal or ``max_steps`` before ``optim.epochs``
    metrics: dict[str, Any]  # the last completed epoch's record ({} if none)

    def summary(self) -> dict[str, Any]:
        """The run folder, counters and last epoch's metrics, rounded, as the CLI prints them."""
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.metrics.items() if k != "type"}
        return {"out": str(self.out), "epoch": self.epoch, "step": self.step, **rounded}

def build_training(
    cfg: Config, device: torch.device, n_images: int = 0, backbone: nn.Module | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The contrastive method on ``device`` (channels_last if configured), its optimiser and the fp16 grad
    scaler. ``n_images`` sizes the memory bank, when ``method.dictionary`` is one; ``backbone`` replaces the one
    ``cfg.model`` describes."""
    model, optimizer, scaler = training_parts(cfg, build_moco(cfg, n_images, backbone), device)
    if cfg.train.compile:  # each part in place: parameter names (checkpoints, exports) stay the same
        for part in model.children():
            part.compile()
    return model, optimizer, scaler


def knn_monitor(
    cfg: Config, source: BatchSource, knn_train: str | Path | None, knn_test: str | Path | None,
    test_dir: Path | list[str] | None, progress: bool, device: torch.device,
) -> KnnMonitor | None:
    """The kNN monitor on its (memory, test) sets, or None when no labelled test data is available. The sets
    may be folders or WebDataset shards; a streamed training set is the memory only when its shards were
    counted and hold at most ``KNN_MEMORY_MAX`` samples (else give ``knn_train``)."""
    test = knn_test or test_dir
    if test is None:
        if knn_train:
            raise ConfigError("--knn-train needs --knn-test too")
        return None
    d = cfg.data
    side, cache = decode_side(d), d.cache_dir or None
    if knn_train:
        memory = sets.decode(knn_train, side, cache, d.workers, d.strict, progress)
    else:
        try:
            memory = sets.decode_source(source, side, cache, d.workers, d.strict, progress, KNN_MEMORY_MAX)
        except DataError as e:
            log.warning("kNN monitor off: %s; give --knn-train and --knn-test (labelled, small)", e)
            return None
    if memory.images.labels is None:
        log.warning("kNN monitor off: %s has no class sub-folders (labels)", memory.images.root)
        return None
    test_set = sets.decode(test, side, cache, d.workers, d.strict, progress)
    if test_set.images.classes != memory.images.classes:
        log.warning("kNN monitor off: %s and %s have different class folders", memory.images.root, test)
        return None
    return KnnMonitor(memory, test_set, cfg, device)


def pretrain_config(preset: str | None, config_file: str | None, flags: dict[str, Any],
                    overrides: list[str] | None, out: Path, resume: str | None,
                    recipe: dict[str, Any] | None = None) -> tuple[Config, bool]:
    """(the config a pretraining run trains with, whether it resumes one): a resumed run's own (its checkpoint's
    config, with the config file, ``flags`` and ``--set`` ``overrides`` on top), else ``preset``'s with the
    ``recipe`` chosen for the data (:mod:`moco.presets.auto`) and them."""
    previous = checkpoint_to_resume(out, resume, "pretrain")
    if previous is not None:
        return resolve(None, config_file, flags, overrides, base=from_dict(previous["config"]),
                       sections=SECTIONS), True
    return resolve(preset, config_file, flags, overrides, sections=SECTIONS, recipe=recipe), False


def resumes(out: Path, resume: str | None) -> bool:
    """Whether a pretraining run in ``out`` would continue from a checkpoint (``resume`` given and one found)."""
    return checkpoint_to_resume(out, resume, "pretrain") is not None


def pretrain(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    resume: str | None = None,
    overwrite: bool = False,
    knn_train: str | Path | None = None,
    knn_test: str | Path | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    knn: bool = True,
    backbone: torch.nn.Module | None = None,
    replay_plan: str | Path | None = None,
    started: float | None = None,
    recipe: Recipe | None = None,
) -> RunResult:
    """Pretrain MoCo on the images under ``data``, writing the run to ``out``.

    Under ``torchrun`` every process runs this function: each takes its slice of every global batch
    (``optim.batch_size`` is the global batch), shuffle BN and the queue span all processes, and
    rank 0 alone writes files and runs the kNN monitor. ``knn=False`` turns the monitor off.
    ``max_steps`` stops after that many global steps (with a checkpoint), as an interruption would.
    ``backbone`` (any module mapping images to features or feature maps) is trained instead of the one
    ``cfg.model`` describes; the run records it as ``model.arch = custom:MODULE.CLASS``.

    ``optim.time_budget`` (seconds) trains for that long instead of ``optim.epochs`` epochs, start-up and the
    final checkpoint and kNN included (:mod:`moco.training.budget`). ``replay_plan`` (a budgeted run's folder
    or checkpoint) follows that run's recorded plan without the clock: the same run, bit for bit. The budget
    counts from ``started`` (a :func:`time.perf_counter` time; default: the call), so a command can count
    its own start-up as well. ``recipe`` (the choice :func:`moco.tasks.recipe.auto_recipe` made, which ``cfg``
    holds) is printed with its reasons and kept in the run folder as recipe.json (``moco info`` shows it).
    """
    started = time.perf_counter() if started is None else started
    out = Path(out)
    if backbone is not None:
        cfg = copy.deepcopy(cfg)
        cfg.model.arch = custom_name(backbone)
    validate(cfg, *SECTIONS)
    train, test = sets.split(data)  # before any work: a bad --data is one line

    def set_up_run(dinfo: DistInfo, dist_device: torch.device | None) -> tuple[Run, TrainState]:
        return set_up(cfg, (train, test), out, dinfo, dist_device, resume=resume, overwrite=overwrite,
                      knn_train=knn_train, knn_test=knn_test, knn=knn, progress=progress and dinfo.is_main,
                      max_steps=max_steps, backbone=backbone)

    def announce(run: Run, state: TrainState) -> None:
        if recipe is not None:
            _record_recipe(run, recipe)
        _log_start(run, state)
        _warn_queue(run)

    def finish(run: Run, state: TrainState, stopped: bool) -> RunResult:
        return RunResult(run.out, state.epoch, state.step, stopped, state.last)

    return run_job(cfg, out, set_up_run, started, announce, finish, replay_plan)


def _log_start(run: Run, state: TrainState) -> None:
    cfg, d = run.cfg, run.cfg.data
    log.info("pretraining %s (width %d) on %d images from %s: %s, %s, T=%s, %s on %s; training views %d px "
             "(%s augmentation), evaluation %d px", cfg.model.arch, cfg.model.width, run.n_images, run.train_dir,
             run_length(run, state), describe(cfg, run.n_images), cfg.method.T, cfg.train.precision, run.device,
             d.view_size, d.augmentation, d.image_size)


def _warn_queue(run: Run) -> None:
    """One line when MoCo's queue holds half the data set or more: each image's own keys from earlier visits
    are then among its negatives."""
    k, n = run.cfg.method.K, run.n_images
    if run.cfg.method.dictionary == "moco" and n and k >= n / 2:
        log.warning("method.K=%d keys for %d images: each image's own older keys sit in the queue as its "
                    "negatives; --set method.K=%d (a quarter of the images, as a recipe chosen for the data takes)",
                    k, n, queue_size(n, run.cfg.optim.batch_size, k)[0])


def _record_recipe(run: Run, recipe: Recipe) -> None:
    """The chosen recipe in the log, each setting with its reason (a value the user set instead is named), and
    in RUN/recipe.json."""
    cfg = run.cfg.to_dict()
    log.info("recipe chosen for the data and this machine (any setting can be changed with --set):")
    for key, why in recipe.reasons.items():
        section, _, name = key.partition(".")
        mine = ""
        if name and name in cfg.get(section, {}) and cfg[section][name] != chosen_value(recipe, key):
            mine = f" [you set {cfg[section][name]}]"
        log.info("  %s: %s%s", key, why, mine)
    log.info("  (%s)", recipe.summary)
    (run.out / RECIPE_FILE).write_text(json.dumps(recipe_record(recipe), indent=2) + "\n")
    config = run.out / "config.yaml"  # its values say what ran; the comments on top, why
    head = "".join(f"# {line.strip()}\n" for line in ["recipe chosen for the data (recipe.json)", *recipe.lines()])
    config.write_text(head + config.read_text())


def set_up(
    cfg: Config, data: tuple[sets.Data, sets.Data | None], out: Path, dinfo: DistInfo,
    dist_device: torch.device | None, *, resume: str | None = None, overwrite: bool = False,
    knn_train: str | Path | None = None, knn_test: str | Path | None = None, knn: bool = True,
    progress: bool = True, max_steps: int | None = None, backbone: nn.Module | None = None,
) -> tuple[Run, TrainState]:
    """Check the folder and the checkpoint, open the training set of ``data`` (training and test sets, as
    :func:`moco.data.sets.split` finds them), build the model and restore the state."""
    task = pretrain_task(cfg)
    cfg, device, ckpt, ckpt_path = open_run(cfg, out, dinfo, dist_device, task, resume, overwrite)
    gen = augmentation_generator(cfg)
    b = cfg.optim.batch_size
    train, test = data
    source = sets.training_source(train, cfg.data, b, gen, device, dinfo, progress, cfg.train.seed,
                                  indexed=cfg.method.dictionary == "memory_bank")
    if source.steps_per_epoch() == 0:
        raise DataError(f"{sets.root(train)} has {source.samples} usable image(s), fewer than one batch of {b}; "
                        "lower --batch-size")
    main = dinfo.is_main
    monitor = knn_monitor(cfg, source, knn_train, knn_test, test, progress, device) if knn and main else None
    run = Run(cfg, out, sets.root(train), dinfo, device, source, monitor, progress, task, max_steps)
    return run, start_state(run, build_training(cfg, device, run.n_images, backbone), gen, ckpt, ckpt_path)
