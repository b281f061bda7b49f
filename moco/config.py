"""Resolving a run's configuration: presets, YAML files, ``--set key=value`` overrides, and validation.

Resolution order: defaults < preset < YAML file < command-line flags < ``--set``.
Every error (unknown key, wrong type, out-of-range value) is a :class:`ConfigError`
with a one-line message; unknown keys get the nearest valid key suggested. The schema is
:mod:`moco.schema`; the choices ``validate`` accepts come from the registries of the modules that
implement them.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from moco import schema
from moco.core.errors import ConfigError
from moco.core.precision import PRECISIONS
from moco.data.augment import AUGMENTATIONS, NORMALIZATIONS
from moco.data.pipelines import PIPELINES
from moco.methods import DICTIONARIES, HEADS
from moco.methods.encoder import FEATURES
from moco.models.resnet import ARCHS
from moco.models.vit import VITS
from moco.optim import OPTIMIZERS
from moco.presets import PRESETS
from moco.schema import (
    DataConfig,
    DetectConfig,
    FinetuneConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    SegmentConfig,
    TrainConfig,
)

log = logging.getLogger("moco")
MIN_BUDGET_S = 10.0  # the shortest time budget accepted: below it not even one step and the final kNN fit

__all__ = [
    "PRESETS", "Config", "ConfigError", "DataConfig", "DetectConfig", "FinetuneConfig", "MethodConfig", "ModelConfig",
    "OptimConfig", "SegmentConfig", "TrainConfig",
    "all_keys", "check_budget", "check_overrides", "dump_yaml", "from_dict", "load_yaml", "merge_dict", "resolve",
    "set_value", "user_value", "validate",
]
class Config(schema.Config):
    """A run's settings, one dataclass per section: ``model`` (the backbone and head), ``method`` (the contrastive
    method: dictionary, K, m, T), ``data`` (views, augmentation, pipeline), ``optim`` (length, batch, lr,
    schedule, time budget), ``train`` (seed, device, precision, logging, the kNN monitor), ``finetune`` (what
    transfer starts from and its labels), ``detect`` and ``segment`` (the dense tasks). Every setting, its default
    and its meaning: docs/settings.md (generated from :mod:`moco.schema`). ``cfg.to_dict()`` is what config.yaml
    holds; :meth:`from_preset` starts from a shipped recipe."""

    @classmethod
    def from_preset(cls, name: str, overrides: dict[str, Any] | list[str] | None = None) -> Config:
        """Preset ``name`` with ``overrides`` (``{"method.K": 8192}`` or ``["method.K=8192"]``), validated."""
        if isinstance(overrides, dict):
            return resolve(name, flags=overrides)
        return resolve(name, overrides=list(overrides or []))


_SECTIONS = {c.__name__: c for c in (ModelConfig, MethodConfig, DataConfig, OptimConfig, TrainConfig, FinetuneConfig,
                                         DetectConfig, SegmentConfig)}


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {f.name: f.type for f in dataclasses.fields(Config)}[section]
    cls = _SECTIONS[cls] if isinstance(cls, str) else cls
    return {f.name: f for f in dataclasses.fields(cls)}


def all_keys() -> list[str]:
    return [f"{s.name}.{k}" for s in dataclasses.fields(Config) for k in _section_fields(s.name)]


def _unknown(key: str) -> ConfigError:
    keys = all_keys()
    near = [k for k in keys if k.lower() == key.lower()]  # method.k -> method.K
    if not near:  # the last component alone, e.g. "K" -> "method.K"
        near = [k for k in keys if k.rsplit(".", 1)[-1].lower() == key.rsplit(".", 1)[-1].lower()][:1]
    if not near:
        near = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` (from YAML or a --set string) to the field's type, or raise ConfigError."""
    typ_s = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if isinstance(value, str) and typ_s != "str":
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    try:
        if typ_s == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if typ_s == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                raise TypeError
            return value
        if typ_s == "float":
            if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
                try:
                    value = float(value)
                except ValueError:
                    raise TypeError from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if typ_s == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if typ_s == "list[str]":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if typ_s in ("list[int]", "list[float]"):  # a number alone is a list of one
            number = (int, float) if typ_s == "list[float]" else int
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, number) and not isinstance(v, bool)
                                                      for v in value):
                raise TypeError
            return [float(v) for v in value] if typ_s == "list[float]" else list(value)
    except TypeError:
        want = {"list[int]": "a list of integers", "list[float]": "a list of numbers", "list[str]": "a list of names",
                "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(typ_s, typ_s)
        raise ConfigError(f"config key {key!r} must be {want}, got {value!r}") from None
    raise ConfigError(f"config key {key!r} has unsupported type {typ_s}")


ALIASES = {"train.knn_every": "train.eval_every"}
"""Old names of keys -> their names now: configs in the wild (and checkpoints) keep working."""
_warned: set[str] = set()


def set_value(cfg: Config, key: str, value: Any, warn: bool = True) -> None:
    """Set ``section.name`` on ``cfg`` with type checking; an old name (:data:`ALIASES`) sets the key it became,
    with a warning (once) when ``warn``."""
    if key in ALIASES:
        if warn and key not in _warned:
            _warned.add(key)
            log.warning("config key %s is now %s; the old name still works", key, ALIASES[key])
        key = ALIASES[key]
    if "." not in key:
        raise _unknown(key)
    section, name = key.split(".", 1)
    if section not in {f.name for f in dataclasses.fields(Config)}:
        raise _unknown(key)
    fields = _section_fields(section)
    if name not in fields:
        raise _unknown(key)
    setattr(getattr(cfg, section), name, _coerce(key, value, fields[name].type))


def merge_dict(cfg: Config, d: dict[str, Any], source: str = "config", warn: bool = True) -> None:
    """Apply a nested ``{section: {key: value}}`` mapping onto ``cfg`` (``warn``: say so when it uses an old
    key name)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if not isinstance(values, dict):
            if section in {f.name for f in dataclasses.fields(Config)}:
                raise ConfigError(f"{source}: section {section!r} must be a mapping")
            raise _unknown(str(section))
        for name, value in values.items():
            set_value(cfg, f"{section}.{name}", value, warn)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return data or {}


def from_dict(d: dict[str, Any]) -> Config:
    """A config from its dict (a checkpoint's, a config.yaml's), old key names taken silently."""
    cfg = Config()
    merge_dict(cfg, d, warn=False)
    return cfg


def resolve(
    preset: str | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: Config | None = None,
    sections: tuple[str, ...] = (),
    recipe: dict[str, Any] | None = None,
) -> Config:
    """Build the run's config from preset, YAML file, flags and ``key=value`` overrides, then validate the shared
    sections and the task's own ``sections`` (default: all; :func:`validate`).

    ``base`` (e.g. a resumed checkpoint's config) replaces the defaults and the preset. ``recipe`` (settings
    ``{"section.key": value}`` chosen for the data, :mod:`moco.presets.auto`) goes on the preset, under the file.
    """
    cfg = base if base is not None else Config()
    if preset and base is None:
        if preset not in PRESETS:
            near = difflib.get_close_matches(preset, PRESETS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown preset {preset!r}{hint}; presets: {', '.join(PRESETS)}")
        merge_dict(cfg, PRESETS[preset], f"preset {preset}")
    for key, value in (recipe or {}).items():
        set_value(cfg, key, value)
    if config_file:
        merge_dict(cfg, load_yaml(config_file), config_file)
    for key, value in (flags or {}).items():
        if value is not None:
            set_value(cfg, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    validate(cfg, *sections)
    return cfg


def user_value(key: str, flags: dict[str, Any] | None, overrides: list[str] | None) -> str | None:
    """What the user gave ``key`` on the command line (a flag, or the last ``--set key=value``, as text), or None:
    for choices that hold only where the user chose nothing."""
    given = (flags or {}).get(key)
    sets = [v.strip() for k, _, v in (o.partition("=") for o in overrides or []) if k.strip() == key]
    return sets[-1] if sets else None if given is None else str(given)


def check_overrides(overrides: list[str] | None) -> None:
    """Each ``--set key=value`` names a setting and gives it a value of its type (ranges are :func:`validate`'s):
    refused in one line before any work, such as reading the data to choose a recipe."""
    scratch = Config()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        set_value(scratch, key.strip(), value.strip(), warn=False)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _choice(key: str, value: str, choices: Any) -> None:
    """``value`` must be one of a registry's names."""
    names = list(choices)
    _check(value in names, f"{key} must be one of {', '.join(names)}, got {value!r}")


def _check_arch(arch: str) -> None:
    """One of our ResNets or ViTs, ``torchvision:NAME`` (a classification model), ``timm:NAME`` (timm
    installed) or ``custom:NAME`` (a backbone given to ``pretrain``)."""
    source, _, name = arch.partition(":")
    if not name:
        _check(arch in ARCHS or arch in VITS, f"model.arch must be one of {', '.join([*ARCHS, *VITS])}, "
               f"torchvision:NAME or timm:NAME, got {arch!r}")
    elif source == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        near = difflib.get_close_matches(name, known, n=1)
        _check(name in known, f"model.arch {arch!r}: torchvision.models has no classification model {name!r}"
               + (f" (did you mean 'torchvision:{near[0]}'?)" if near else ""))
    elif source == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError(f"model.arch {arch!r} needs timm: pip install 'momentum-contrast[timm]'") from None
        _check(timm.is_model(name), f"model.arch {arch!r}: timm has no model {name!r}")
    else:
        _check(source == "custom" and "." in name, f"model.arch {arch!r}: use torchvision:NAME, timm:NAME or "
               "custom:MODULE.CLASS (an importable network class that takes no arguments)")


def validate(cfg: Config, *sections: str) -> None:
    """Reject out-of-range values before any work starts: the shared sections (model, data, optim, train) and the
    task's own ``sections`` (:data:`SECTION_CHECKS`: ``method`` for pretraining, ``finetune`` for fine-tuning,
    ``finetune`` and ``detect`` for detection); all of them when none is named."""
    _validate_model(cfg)
    _validate_data(cfg.data)
    _validate_optim(cfg)
    _validate_train(cfg.train)
    for name in sections or tuple(SECTION_CHECKS):
        SECTION_CHECKS[name](cfg)


def _validate_model(cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    _check_arch(m.arch)
    _check(m.width >= 1, f"model.width must be >= 1, got {m.width}")
    _choice("model.head", m.head, HEADS)
    _check(m.dim >= 1, f"model.dim must be >= 1, got {m.dim}")
    _check(m.mlp_dim >= 0, f"model.mlp_dim must be >= 0 (0 = automatic), got {m.mlp_dim}")
    _check(m.bn_splits >= 1, f"model.bn_splits must be >= 1, got {m.bn_splits}")
    if m.arch in VITS:
        _check(m.patch_size >= 1 and d.image_size % m.patch_size == 0,
               f"data.image_size ({d.image_size}) must be a multiple of model.patch_size ({m.patch_size})")
        _check(d.train_size in (0, d.image_size) and d.ramp_size == 0, "data.train_size must equal "
               "data.image_size (or be 0) and data.ramp_size must be 0 for ViTs: their position embedding is "
               "built for image_size")


def validate_method(cfg: Config) -> None:
    """Pretraining's own section: the contrastive method (its dictionary, the head it takes, K, m, T)."""
    m, me, o = cfg.model, cfg.method, cfg.optim
    _choice("method.dictionary", me.dictionary, DICTIONARIES)
    heads = DICTIONARIES[me.dictionary].heads
    _check(m.head in heads, f"method.dictionary={me.dictionary} and model.head={m.head} do not go together "
           f"(that dictionary takes head {' or '.join(heads)})")
    _check(me.m_schedule in ("constant", "cosine"),
           f"method.m_schedule must be 'constant' or 'cosine', got {me.m_schedule!r}")
    _check(0.0 <= me.m < 1.0, f"method.m must be in [0, 1), got {me.m}")
    _check(me.T > 0, f"method.T must be > 0, got {me.T}")
    _check(0.0 <= me.bank_m < 1.0, f"method.bank_m must be in [0, 1), got {me.bank_m}")
    _check(not me.symmetric or me.dictionary == "moco",
           f"method.symmetric needs method.dictionary=moco (got {me.dictionary!r})")
    _check(me.K >= 1, f"method.K must be >= 1, got {me.K}")
    keys_per_step = o.batch_size * (2 if me.symmetric else 1)
    _check(me.dictionary != "moco" or me.K >= keys_per_step,
           f"method.K ({me.K}) must be >= the keys enqueued per step ({keys_per_step}: batch size"
           f"{' x 2 for the symmetric loss' if me.symmetric else ''})")


def _validate_data(d: DataConfig) -> None:
    _check(d.image_size >= 8, f"data.image_size must be >= 8, got {d.image_size}")
    _check(d.train_size == 0 or d.train_size >= 8, f"data.train_size must be 0 (= image_size) or >= 8, "
           f"got {d.train_size}")
    _check(d.ramp_size == 0 or 8 <= d.ramp_size <= d.view_size,
           f"data.ramp_size must be 0 (off) or between 8 and the training view side ({d.view_size}), "
           f"got {d.ramp_size}")
    _check(len(d.ramp_epochs) == 2 and 0 <= d.ramp_epochs[0] <= d.ramp_epochs[1],
           f"data.ramp_epochs must be [start, end] with 0 <= start <= end, got {d.ramp_epochs}")
    _choice("data.augmentation", d.augmentation, AUGMENTATIONS)
    _choice("data.normalize", d.normalize, NORMALIZATIONS)
    _check(0.0 < d.crop_min_scale <= 1.0, f"data.crop_min_scale must be in (0, 1], got {d.crop_min_scale}")
    _choice("data.pipeline", d.pipeline, PIPELINES)
    _check(d.cache_size >= 0, f"data.cache_size must be >= 0, got {d.cache_size}")
    _check(d.workers >= 0, f"data.workers must be >= 0, got {d.workers}")
    _check(d.max_images >= 0, f"data.max_images must be >= 0, got {d.max_images}")
    _check(d.samples_per_epoch >= 0, f"data.samples_per_epoch must be >= 0 (0: count the shards), got "
           f"{d.samples_per_epoch}")
    _check(d.shuffle_buffer >= 1, f"data.shuffle_buffer must be >= 1, got {d.shuffle_buffer}")


def _validate_optim(cfg: Config) -> None:
    o = cfg.optim
    _choice("optim.optimizer", o.optimizer, OPTIMIZERS)
    _check(o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}")
    _check(o.batch_size >= 2, f"optim.batch_size must be >= 2, got {o.batch_size}")
    _check(o.batch_size >= cfg.model.bn_splits,
           f"optim.batch_size ({o.batch_size}) must be >= model.bn_splits ({cfg.model.bn_splits})")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
    _check(0 <= o.warmup_epochs < o.epochs, f"optim.warmup_epochs must be in [0, epochs), got {o.warmup_epochs}")
    check_budget(o.time_budget)


def check_budget(seconds: float) -> None:
    """A time budget is 0 (off) or at least :data:`MIN_BUDGET_S`."""
    _check(seconds == 0 or seconds >= MIN_BUDGET_S,
           f"optim.time_budget must be 0 (off) or at least {MIN_BUDGET_S:.0f} s, time for start-up, one step, the "
           f"checkpoint and the kNN; got {seconds:g} s")


def _validate_train(t: TrainConfig) -> None:
    _check(t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    _check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _check(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    _check(t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}")
    _check(t.knn_k >= 1, f"train.knn_k must be >= 1, got {t.knn_k}")
    _check(t.knn_t > 0, f"train.knn_t must be > 0, got {t.knn_t}")
    feats = t.knn_features
    _check(bool(feats) and len(set(feats)) == len(feats),
           f"train.knn_features must list backbone and/or head once each, got {feats}")
    for f in feats:
        _choice("train.knn_features", f, FEATURES)


FINETUNE_INITS = ("checkpoint", "supervised", "random")
FINETUNE_BN = ("train", "frozen")


def parse_labels(spec: str) -> tuple[str, float]:
    """``finetune.labels``: ("fraction", f) for ``10%`` (0 < f <= 1), or ("per_class", n) for ``50``."""
    s = str(spec).strip()
    try:
        if s.endswith("%"):
            f = float(s[:-1]) / 100
            if 0 < f <= 1:
                return "fraction", f
        elif s.isdigit() and int(s) >= 1:
            return "per_class", float(int(s))
    except ValueError:
        pass
    raise ConfigError(f"--labels takes a percentage of each class (1%, 10%, 100%) or a number of images per "
                      f"class (50), got {spec!r}")


def validate_finetune(cfg: Config) -> None:
    """Fine-tuning's own section (detection shares its init, BatchNorm and backbone lr)."""
    f = cfg.finetune
    parse_labels(f.labels)
    _choice("finetune.init", f.init, FINETUNE_INITS)
    _choice("finetune.bn", f.bn, FINETUNE_BN)
    _check(f.backbone_lr >= 0, f"finetune.backbone_lr must be >= 0 (a fraction of optim.lr), got {f.backbone_lr}")
    _check(0 <= f.label_smoothing < 1, f"finetune.label_smoothing must be in [0, 1), got {f.label_smoothing}")
    _check(f.min_epoch_steps >= 1, f"finetune.min_epoch_steps must be >= 1, got {f.min_epoch_steps}")


DETECT_MASKS = ("auto", "off")
SEGMENT_HEADS = ("deeplabv3", "fcn")
SCHEDULES = ("step", "cosine", "poly")


def validate_segment(cfg: Config) -> None:
    """Segmentation's own section: the head, its stride and rates, the classes and the training crops."""
    s = cfg.segment
    _choice("segment.head", s.head, SEGMENT_HEADS)
    _check(s.output_stride in (8, 16, 32), f"segment.output_stride must be 8, 16 or 32, got {s.output_stride}")
    _check(bool(s.atrous_rates) and all(r >= 1 for r in s.atrous_rates),
           f"segment.atrous_rates must be a non-empty list of rates >= 1, got {s.atrous_rates}")
    _check(0 <= s.num_classes <= 255, f"segment.num_classes must be 0 (from the data) to 255, got {s.num_classes}")
    _check(0 <= s.ignore_index <= 255, f"segment.ignore_index must be in [0, 255], got {s.ignore_index}")
    _check(s.num_classes == 0 or s.ignore_index >= s.num_classes,
           f"segment.ignore_index ({s.ignore_index}) must not be a class (num_classes {s.num_classes})")
    _check(s.base_size >= 0 and s.crop_size >= 0,
           f"segment.base_size and crop_size must be >= 0 (0: from the data), got {s.base_size}, {s.crop_size}")
    _check(len(s.scale) == 2 and 0 < s.scale[0] <= s.scale[1],
           f"segment.scale must be [min, max] with 0 < min <= max, got {s.scale}")
    _check(0 <= s.flip <= 1, f"segment.flip must be in [0, 1], got {s.flip}")
    _check(s.cache_mb >= 0, f"segment.cache_mb must be >= 0 (0: read the files every epoch), got {s.cache_mb}")


def validate_detect(cfg: Config) -> None:
    """Detection's own section: the detector's sizes, pyramid, anchors, RoIs and masks."""
    d = cfg.detect
    _check(all(s >= 16 for s in d.min_size), f"detect.min_size must list sides of 16 px or more, got {d.min_size}")
    _check(d.max_size == 0 or d.max_size >= max(d.min_size or [0]),
           f"detect.max_size ({d.max_size}) must be 0 (auto) or at least the largest detect.min_size")
    _check(all(1 <= s <= 4 for s in d.levels) and len(set(d.levels)) == len(d.levels),
           f"detect.levels must list ResNet stages 1-4 once each, got {d.levels}")
    _check(d.fpn_channels >= 0, f"detect.fpn_channels must be >= 0 (0: auto), got {d.fpn_channels}")
    _check(d.anchor_scale > 0, f"detect.anchor_scale must be > 0, got {d.anchor_scale}")
    _check(d.rois_per_image >= 1, f"detect.rois_per_image must be >= 1, got {d.rois_per_image}")
    _check(d.rpn_per_image >= 1, f"detect.rpn_per_image must be >= 1, got {d.rpn_per_image}")
    _check(d.rpn_post_nms >= 1, f"detect.rpn_post_nms must be >= 1, got {d.rpn_post_nms}")
    _check(d.roi_sampling >= 0, f"detect.roi_sampling must be >= 0 (0: adaptive), got {d.roi_sampling}")
    _check(bool(d.anchor_ratios) and all(r > 0 for r in d.anchor_ratios),
           f"detect.anchor_ratios must be a non-empty list of positive height/width ratios, got {d.anchor_ratios}")
    _check(d.box_head_dim >= 0, f"detect.box_head_dim must be >= 0 (0: auto), got {d.box_head_dim}")
    _choice("detect.masks", d.masks, DETECT_MASKS)
    _choice("detect.keypoints", d.keypoints, DETECT_MASKS)
    _check(bool(d.keypoint_head) and all(c >= 1 for c in d.keypoint_head),
           f"detect.keypoint_head must list conv widths >= 1, got {d.keypoint_head}")
    _check(all(v > 0 for v in d.oks_sigmas), f"detect.oks_sigmas must be positive, got {d.oks_sigmas}")
    _check(0 <= d.flip <= 1, f"detect.flip must be in [0, 1], got {d.flip}")
    _check(d.cache_mb >= 0, f"detect.cache_mb must be >= 0 (0: read the files every epoch), got {d.cache_mb}")


SECTION_CHECKS: dict[str, Callable[[Config], None]] = {
    "method": validate_method, "finetune": validate_finetune, "detect": validate_detect, "segment": validate_segment,
}
"""A task's own section -> its checks; the task names its sections (pretraining ``method``, fine-tuning
``finetune``, detection ``finetune`` and ``detect``)."""


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

