"""Run configuration: dataclasses, presets, YAML files and ``--set key=value`` overrides.

Resolution order: defaults < preset < YAML file < command-line flags < ``--set``.
Every error (unknown key, wrong type, out-of-range value) is a :class:`ConfigError`
with a one-line message; unknown keys get the nearest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value, reported to the user in one line."""


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # resnet18/34/50/101/152, wide_resnet50_2/101_2, vit_tiny/small/base
    width: int = 64  # ResNets: channels of the first stage; 64 is torchvision's
    cifar_stem: bool = False  # ResNets: 3x3 stride-1 conv1 and no max-pool (CIFAR demo)
    head: str = "linear"  # linear (v1), mlp (v2) or v3 (MLP with BN: 2 layers for ResNets, 3 for ViTs)
    dim: int = 128
    mlp_dim: int = 0  # hidden width of the MLP heads; 0 = the backbone's feature dim (v2), 4096 (v3)
    bn_splits: int = 1  # SplitBatchNorm groups for single-device shuffle BN; 1 = plain BN
    patch_size: int = 16  # ViTs
    stop_grad_conv1: bool = False  # ViTs: freeze the random patch projection (MoCo v3)


@dataclass
class MethodConfig:
    K: int = 65536
    m: float = 0.999
    T: float = 0.07
    symmetric: bool = False
    shuffle_bn: bool = True
    dictionary: str = "moco"  # moco (queue + momentum encoder), end_to_end (the batch), memory_bank (Wu et al.),
    # or v3 (MoCo v3: momentum encoder, the batch's keys, predictor, symmetric loss)
    m_schedule: str = "constant"  # constant, or cosine from m up to 1 (v3)
    bank_m: float = 0.5  # memory bank: v_i <- normalize(bank_m * v_i + (1 - bank_m) * q_i)


@dataclass
class DataConfig:
    image_size: int = 224
    train_size: int = 0  # side of the training views (0 = image_size); evaluation always uses image_size
    ramp_size: int = 0  # progressive resizing: training views start at this side (0 = off) and grow
    ramp_epochs: list[int] = field(default_factory=lambda: [0, 0])  # ... linearly from epoch [0] to [1] up to
    # view_size, in steps of 4 px (FFCV's low-res-first schedule: cheap early epochs, full size at the end)
    augmentation: str = "v1"  # v1, v2 (adds blur, jitter p=0.8), cifar (v2 without blur),
    # byol (v3: blur 1.0 / 0.1 and solarize 0 / 0.2 in the two views) or byol-cifar (byol without blur)
    crop_min_scale: float = 0.2
    pipeline: str = "cached"  # cached: decode once to uint8, batched tensor aug; per_image: PIL in workers;
    # device: workers read files, the training device decodes JPEGs (nvJPEG on CUDA) and augments the batch
    cache_size: int = 0  # side of cached images; 0 = image_size for <=64 px, else 1.15 * image_size
    cache_dir: str = ""  # default: $MOCO_CACHE or ~/.cache/momentum-contrast
    workers: int = 2
    max_images: int = 0  # 0 = all; else a deterministic subset
    strict: bool = False  # fail on the first unreadable image instead of skipping it

    @property
    def view_size(self) -> int:
        """Side of the training views: ``train_size``, or ``image_size`` when that is 0."""
        return self.train_size or self.image_size

    def view_size_at(self, epoch: int) -> int:
        """Side of the training views in (0-based) ``epoch``: ``view_size``, or with progressive resizing
        ``ramp_size`` until ``ramp_epochs[0]``, then linearly up to ``view_size`` at ``ramp_epochs[1]``,
        rounded down to a multiple of 4 px."""
        lo, (start, end) = self.ramp_size, self.ramp_epochs
        if not lo or epoch >= end:
            return self.view_size
        frac = max(epoch - start, 0) / max(end - start, 1)
        return max(lo, int(lo + frac * (self.view_size - lo)) // 4 * 4)


@dataclass
class OptimConfig:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step or cosine
    milestones: list[int] = field(default_factory=lambda: [120, 160])
    warmup_epochs: float = 0.0
    optimizer: str = "sgd"  # sgd, lars or adamw
    scale_lr: bool = False  # lr = optim.lr x batch_size / 256 (the v3 recipes)


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "bf16"  # bf16, fp16 (CUDA only) or fp32
    channels_last: bool = True
    compile: bool = False  # torch.compile the encoders (slow first steps; pays off on long runs)
    log_every: int = 20  # steps between metrics.jsonl records
    checkpoint_every: int = 10  # epochs between kept checkpoint_{epoch:04d}.pt files
    knn_every: int = 1  # epochs between kNN monitor runs (when labelled data is available)
    knn_k: int = 200
    knn_t: float = 0.1


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _v3_vit(arch: str) -> dict[str, Any]:
    """The authors' 300-epoch ViT recipe (the same for ViT-S/16 and ViT-B/16)."""
    return {
        "model": {"arch": arch, "patch_size": 16, "stop_grad_conv1": True, "head": "v3", "dim": 256, "mlp_dim": 4096},
        "method": {"dictionary": "v3", "m": 0.99, "m_schedule": "cosine", "T": 0.2},
        "data": {"image_size": 224, "augmentation": "byol", "crop_min_scale": 0.08, "pipeline": "per_image",
                 "workers": 8},
        "optim": {"epochs": 300, "batch_size": 4096, "lr": 1.5e-4, "scale_lr": True, "optimizer": "adamw",
                  "weight_decay": 0.1, "schedule": "cosine", "warmup_epochs": 40},
    }


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ImageNet recipe (v1): R50, fc head, K=65536, m=0.999, T=0.07, step lr.
    "imagenet-v1": {
        "model": {"arch": "resnet50", "head": "linear", "bn_splits": 1},
        "method": {"K": 65536, "m": 0.999, "T": 0.07},
        "data": {"image_size": 224, "augmentation": "v1", "pipeline": "per_image", "workers": 8},
        "optim": {"epochs": 200, "batch_size": 256, "lr": 0.03, "weight_decay": 1e-4,
                  "schedule": "step", "milestones": [120, 160]},
    },
    # MoCo v2: MLP head, blur, T=0.2, cosine lr.
    "imagenet-v2": {
        "model": {"arch": "resnet50", "head": "mlp", "bn_splits": 1},
        "method": {"K": 65536, "m": 0.999, "T": 0.2},
        "data": {"image_size": 224, "augmentation": "v2", "pipeline": "per_image", "workers": 8},
        "optim": {"epochs": 200, "batch_size": 256, "lr": 0.03, "weight_decay": 1e-4, "schedule": "cosine"},
    },
    # The authors' CIFAR-10 demo: R18 with CIFAR stem, K=4096, m=0.99, T=0.1, 8 BN splits.
    "cifar10-demo": {
        "model": {"arch": "resnet18", "width": 64, "cifar_stem": True, "head": "linear", "bn_splits": 8},
        "method": {"K": 4096, "m": 0.99, "T": 0.1},
        "data": {"image_size": 32, "augmentation": "cifar"},
        "optim": {"epochs": 200, "batch_size": 512, "lr": 0.06, "weight_decay": 5e-4, "schedule": "cosine"},
    },
    # Sized for a 2-core CPU: the demo recipe on a quarter-width R18 with the v2 MLP head (+2 kNN points
    # at 3 epochs in our runs), batch 256, 10 epochs of ~77 s. Changes measured over the full 10 epochs
    # (README, "The main job") all did no better: T 0.07, K 256/1024/16384, crop scale 0.08 or 0.5, 2 or 16
    # BN groups, lr 0.03 or 0.12, wd 1e-4, batch 128, cosine m, progressive resizing; m=0.95 collapses. 3-epoch
    # trials mislead here (seed spread 1.5 points; a smaller K or milder crop wins early and loses by
    # epoch 10); zero-init residual BNs lost 4 points at 3 epochs. 15 epochs give 53.7%.
    "cifar10-cpu": {
        "model": {"arch": "resnet18", "width": 16, "cifar_stem": True, "head": "mlp", "bn_splits": 8},
        "method": {"K": 4096, "m": 0.99, "T": 0.1},
        "data": {"image_size": 32, "augmentation": "cifar"},
        "optim": {"epochs": 10, "batch_size": 256, "lr": 0.06, "weight_decay": 5e-4, "schedule": "cosine"},
        "train": {"knn_every": 0},
    },
    # MoCo v3, ResNet-50 (the authors' 100-epoch recipe): LARS, lr 0.6 x batch / 256, wd 1e-6, T=1.0.
    "imagenet-v3-r50": {
        "model": {"arch": "resnet50", "head": "v3", "dim": 256, "mlp_dim": 4096, "bn_splits": 1},
        "method": {"dictionary": "v3", "m": 0.99, "m_schedule": "cosine", "T": 1.0},
        "data": {"image_size": 224, "augmentation": "byol", "crop_min_scale": 0.08, "pipeline": "per_image",
                 "workers": 8},
        "optim": {"epochs": 100, "batch_size": 4096, "lr": 0.6, "scale_lr": True, "optimizer": "lars",
                  "weight_decay": 1e-6, "schedule": "cosine", "warmup_epochs": 10},
    },
    # MoCo v3, ViT-Small/16 and ViT-Base/16 (300 epochs): AdamW, lr 1.5e-4 x batch / 256, wd 0.1, T=0.2,
    # frozen random patch projection.
    "imagenet-v3-vit-s": _v3_vit("vit_small"),
    "imagenet-v3-vit-b": _v3_vit("vit_base"),
    # MoCo v3 sized for a 2-core CPU: the cpu preset's quarter-width ResNet-18 (a ViT-Tiny/4, 12 blocks
    # of width 192 over 65 tokens, is far heavier per image), 2-layer BN projector and predictor,
    # symmetric loss, BYOL-style asymmetric augmentation without blur (as CIFAR recipes do).
    # LARS at lr 2.0 x batch/256: a large per-step update (trust ratio x lr) for a run of only ~1000
    # steps; 5 epochs of ~145 s fit 15 minutes (a v3 step encodes 4 views, twice a v2 step's work).
    "cifar10-v3-cpu": {
        "model": {"arch": "resnet18", "width": 16, "cifar_stem": True, "head": "v3", "dim": 128, "mlp_dim": 1024,
                  "bn_splits": 1},
        "method": {"dictionary": "v3", "m": 0.99, "m_schedule": "cosine", "T": 0.2},
        "data": {"image_size": 32, "augmentation": "byol-cifar", "crop_min_scale": 0.08},
        "optim": {"epochs": 5, "batch_size": 256, "lr": 2.0, "scale_lr": True, "optimizer": "lars",
                  "weight_decay": 1e-5, "schedule": "cosine", "warmup_epochs": 0.5},
        "train": {"knn_every": 0},
    },
}


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {f.name: f.type for f in dataclasses.fields(Config)}[section]
    cls = globals()[cls] if isinstance(cls, str) else cls
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
        if typ_s.startswith("list"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise TypeError
            return list(value)
    except TypeError:
        want = {"list[int]": "a list of integers", "int": "an integer", "float": "a number",
                "bool": "true or false", "str": "a string"}.get(typ_s, typ_s)
        raise ConfigError(f"config key {key!r} must be {want}, got {value!r}") from None
    raise ConfigError(f"config key {key!r} has unsupported type {typ_s}")


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.name`` on ``cfg`` with type checking."""
    if "." not in key:
        raise _unknown(key)
    section, name = key.split(".", 1)
    if section not in {f.name for f in dataclasses.fields(Config)}:
        raise _unknown(key)
    fields = _section_fields(section)
    if name not in fields:
        raise _unknown(key)
    setattr(getattr(cfg, section), name, _coerce(key, value, fields[name].type))


def merge_dict(cfg: Config, d: dict[str, Any], source: str = "config") -> None:
    """Apply a nested ``{section: {key: value}}`` mapping onto ``cfg``."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if not isinstance(values, dict):
            if section in {f.name for f in dataclasses.fields(Config)}:
                raise ConfigError(f"{source}: section {section!r} must be a mapping")
            raise _unknown(str(section))
        for name, value in values.items():
            set_value(cfg, f"{section}.{name}", value)


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
    cfg = Config()
    merge_dict(cfg, d)
    return cfg


def resolve(
    preset: str | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: Config | None = None,
) -> Config:
    """Build the run's config from preset, YAML file, flags and ``key=value`` overrides, then validate.

    ``base`` (e.g. a resumed checkpoint's config) replaces the defaults and the preset.
    """
    cfg = base if base is not None else Config()
    if preset and base is None:
        if preset not in PRESETS:
            near = difflib.get_close_matches(preset, PRESETS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown preset {preset!r}{hint}; presets: {', '.join(PRESETS)}")
        merge_dict(cfg, PRESETS[preset], f"preset {preset}")
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
    validate(cfg)
    return cfg


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Reject out-of-range values before any work starts."""
    from moco.models.resnet import ARCHS
    from moco.models.vit import VITS

    m, me, d, o, t = cfg.model, cfg.method, cfg.data, cfg.optim, cfg.train
    _check(m.arch in ARCHS or m.arch in VITS, f"model.arch must be one of {', '.join([*ARCHS, *VITS])}, got {m.arch!r}")
    _check(m.width >= 1, f"model.width must be >= 1, got {m.width}")
    _check(m.head in ("linear", "mlp", "v3"), f"model.head must be 'linear', 'mlp' or 'v3', got {m.head!r}")
    _check(m.dim >= 1, f"model.dim must be >= 1, got {m.dim}")
    _check(m.mlp_dim >= 0, f"model.mlp_dim must be >= 0 (0 = automatic), got {m.mlp_dim}")
    if m.arch in VITS:
        _check(m.patch_size >= 1 and d.image_size % m.patch_size == 0,
               f"data.image_size ({d.image_size}) must be a multiple of model.patch_size ({m.patch_size})")
        _check(d.train_size in (0, d.image_size) and d.ramp_size == 0, "data.train_size must equal "
               "data.image_size (or be 0) and data.ramp_size must be 0 for ViTs: their position embedding is "
               "built for image_size")
    _check((me.dictionary == "v3") == (m.head == "v3"),
           f"method.dictionary=v3 and model.head=v3 go together (got dictionary {me.dictionary!r}, head {m.head!r})")
    _check(me.m_schedule in ("constant", "cosine"),
           f"method.m_schedule must be 'constant' or 'cosine', got {me.m_schedule!r}")
    _check(o.optimizer in ("sgd", "lars", "adamw"), f"optim.optimizer must be sgd, lars or adamw, got {o.optimizer!r}")
    _check(m.bn_splits >= 1, f"model.bn_splits must be >= 1, got {m.bn_splits}")
    _check(0.0 <= me.m < 1.0, f"method.m must be in [0, 1), got {me.m}")
    _check(me.T > 0, f"method.T must be > 0, got {me.T}")
    _check(me.dictionary in ("moco", "end_to_end", "memory_bank", "v3"),
           f"method.dictionary must be moco, end_to_end, memory_bank or v3, got {me.dictionary!r}")
    _check(0.0 <= me.bank_m < 1.0, f"method.bank_m must be in [0, 1), got {me.bank_m}")
    _check(not me.symmetric or me.dictionary == "moco",
           f"method.symmetric needs method.dictionary=moco (got {me.dictionary!r})")
    _check(me.K >= 1, f"method.K must be >= 1, got {me.K}")
    keys_per_step = o.batch_size * (2 if me.symmetric else 1)
    _check(me.dictionary != "moco" or me.K >= keys_per_step,
           f"method.K ({me.K}) must be >= the keys enqueued per step ({keys_per_step}: batch size"
           f"{' x 2 for the symmetric loss' if me.symmetric else ''})")
    _check(d.image_size >= 8, f"data.image_size must be >= 8, got {d.image_size}")
    _check(d.train_size == 0 or d.train_size >= 8, f"data.train_size must be 0 (= image_size) or >= 8, "
           f"got {d.train_size}")
    _check(d.ramp_size == 0 or 8 <= d.ramp_size <= d.view_size,
           f"data.ramp_size must be 0 (off) or between 8 and the training view side ({d.view_size}), "
           f"got {d.ramp_size}")
    _check(len(d.ramp_epochs) == 2 and 0 <= d.ramp_epochs[0] <= d.ramp_epochs[1],
           f"data.ramp_epochs must be [start, end] with 0 <= start <= end, got {d.ramp_epochs}")
    _check(d.augmentation in ("v1", "v2", "cifar", "byol", "byol-cifar"),
           f"data.augmentation must be v1, v2, cifar, byol or byol-cifar, got {d.augmentation!r}")
    _check(0.0 < d.crop_min_scale <= 1.0, f"data.crop_min_scale must be in (0, 1], got {d.crop_min_scale}")
    _check(d.pipeline in ("cached", "per_image", "device"),
           f"data.pipeline must be 'cached', 'per_image' or 'device', got {d.pipeline!r}")
    _check(d.cache_size >= 0, f"data.cache_size must be >= 0, got {d.cache_size}")
    _check(d.workers >= 0, f"data.workers must be >= 0, got {d.workers}")
    _check(d.max_images >= 0, f"data.max_images must be >= 0, got {d.max_images}")
    _check(o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}")
    _check(o.batch_size >= 2, f"optim.batch_size must be >= 2, got {o.batch_size}")
    _check(o.batch_size >= m.bn_splits,
           f"optim.batch_size ({o.batch_size}) must be >= model.bn_splits ({m.bn_splits})")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.schedule in ("step", "cosine"), f"optim.schedule must be 'step' or 'cosine', got {o.schedule!r}")
    _check(0 <= o.warmup_epochs < o.epochs, f"optim.warmup_epochs must be in [0, epochs), got {o.warmup_epochs}")
    _check(t.precision in ("bf16", "fp16", "fp32"), f"train.precision must be bf16, fp16 or fp32, got {t.precision!r}")
    _check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _check(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    _check(t.knn_every >= 0, f"train.knn_every must be >= 0, got {t.knn_every}")
    _check(t.knn_k >= 1, f"train.knn_k must be >= 1, got {t.knn_k}")
    _check(t.knn_t > 0, f"train.knn_t must be > 0, got {t.knn_t}")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

