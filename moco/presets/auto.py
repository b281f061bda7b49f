"""The recipe ``moco pretrain`` chooses when it is given data and no preset: a function from what the data is
(:class:`DataSummary`), what the machine is (:class:`Machine`) and how long there is (the time budget) to
settings, each with the reason it was chosen.

- **Small images** (a median shorter side under :data:`SMALL_SIDE`) get the ``cifar10-cpu`` recipe: 32-px
  views on the CIFAR ResNet-18. CIFAR-10 itself gets exactly that preset.
- **Photos** get MoCo v2's recipe (MLP head, blur augmentation, T = 0.2, cosine lr) at the largest view and
  network of :data:`LADDER` whose measured speed lets the budget show the data enough times to learn
  (:func:`enough_views`); the smallest rung when none does.
- **The queue** stays a quarter of the data set or less (:func:`queue_size`), so that no image's own older key
  is a negative of it; **the batch** fits the data (at least 8 steps an epoch) and the device's memory, and
  the lr follows it (linear scaling); **BatchNorm** is shuffled across processes, or split into groups on one
  device (:func:`bn_groups`).

The measured speed comes in as ``speed(rung)`` (images per second of a training step), so the choice itself is
pure and tested on fixed summaries; :mod:`moco.tasks.recipe` measures it on the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moco.presets import PRESETS

SMALL_SIDE = 64  # images with a median shorter side below this are CIFAR-sized: the 32-px recipe
SMALL_PRESET = "cifar10-cpu"
MIN_EPOCHS = 200  # "enough to learn": the budget must show every image this many times (the CIFAR demo's length;
# on 3,068 photos in 30 min, 389 epochs at 32 px beat 156 at 48 px by 1.7 kNN points) ...
MIN_VIEWS = 200_000  # ... and this many views in all (about 800 steps of 256), whichever is more
DEFAULT_BUDGET_S = 3600.0  # without --time-budget: the network sized for an hour here, its epochs stated
OVERHEAD = 0.9  # a run's images/s (augmentation, data, start-up and the final kNN included) against the probe's
# training steps alone on random views (moco.tasks.recipe.probe_speed): 0.9 to 1.0 on the photos
PHOTO_LR = 0.06  # at batch 256 (linear scaling): cifar10-cpu's measured lr, for runs of thousands of steps
MAX_BATCH = 256
CACHE_LIMIT_GB = 32.0  # decoded uint8 caches up to this size; larger sets are decoded per image in workers


@dataclass(frozen=True)
class Rung:
    """One step of the photo ladder: the training views' side and the ResNet (with the CIFAR stem: a 3x3
    stride-1 first conv and no max-pool, so that small views keep their detail through the network)."""

    view: int
    arch: str = "resnet18"
    width: int = 64
    cifar_stem: bool = False

    @property
    def name(self) -> str:
        return f"{self.arch} width {self.width}{' (CIFAR stem)' if self.cifar_stem else ''} at {self.view} px"

    @property
    def preset(self) -> str:
        """The recipe the rung's settings go on: the 32-px recipe's for the CIFAR stem, MoCo v2's above it."""
        return SMALL_PRESET if self.cifar_stem else "imagenet-v2"


LADDER: tuple[Rung, ...] = (
    Rung(32, "resnet18", 16, True), Rung(48, "resnet18", 16, True), Rung(64, "resnet18", 16, True),
    Rung(96, "resnet18", 16, True), Rung(128, "resnet18", 64), Rung(160, "resnet18", 64), Rung(224, "resnet18", 64),
    Rung(224, "resnet50", 64),
)
"""From the cheapest to the dearest. The first is the 32-px recipe itself; the CIFAR-stem rungs grow its views
(measured on CPUs: at 64 px the ImageNet stem, which divides the side by 4 at once, lost 9.7 kNN points to the
32-px recipe at equal time); from 128 px up, MoCo v2's ImageNet network and recipe (unmeasured: GPU sizes)."""

ACT_MB_224 = {"resnet18": 40.0, "resnet50": 100.0}
"""Training memory per image of a full-width network at 224 px in fp32 (activations kept for the backward
pass), scaled by width and area for the other rungs; halved in 16-bit. An estimate, for the batch's ceiling."""


@dataclass(frozen=True)
class DataSummary:
    """What the chooser knows of the training images: how many, and their median shorter side (from a sample
    of file headers; 0 when unknown)."""

    n_images: int
    median_side: int


@dataclass(frozen=True)
class Machine:
    """What the chooser knows of the machine: the training device, its memory, the cores, the precision that
    runs there and the number of training processes."""

    device: str = "cpu"  # cpu or cuda
    name: str = ""  # e.g. the GPU's model, or the CPU's capability
    memory_gb: float = 24.0  # the device's memory (the host's for the CPU)
    cores: int = 2
    half: bool = False  # bf16 / fp16 runs natively (activations take half the memory)
    processes: int = 1


@dataclass
class Recipe:
    """A chosen recipe: the preset it starts from, the settings chosen on top of it, and why each was chosen."""

    preset: str
    settings: dict[str, Any] = field(default_factory=dict)  # "section.key" -> value
    reasons: dict[str, str] = field(default_factory=dict)  # a setting (or a group of them) -> why
    summary: str = ""  # one line: what the data and the machine are

    def nested(self) -> dict[str, dict[str, Any]]:
        """The settings as ``{section: {key: value}}``, as a preset file holds them."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.settings.items():
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = value
        return out

    def lines(self) -> list[str]:
        """The choice in a few lines, each with its reason."""
        return [self.summary, *(f"  {k}: {why}" for k, why in self.reasons.items())]


def pow2_floor(x: float) -> int:
    """The largest power of two at most ``x`` (1 for anything below 2)."""
    p = 1
    while p * 2 <= x:
        p *= 2
    return p


def batch_size(n_images: int, per_image_mb: float, machine: Machine) -> tuple[int, str]:
    """The global batch: :data:`MAX_BATCH`, fewer when the data holds under 8 batches an epoch or the memory
    (half of it, for the activations) holds less."""
    by_data = pow2_floor(n_images / 8)
    by_memory = pow2_floor(0.5 * machine.memory_gb * 1024 * machine.processes / max(per_image_mb, 1e-3))
    b = max(2, min(MAX_BATCH, by_data, by_memory))
    if b == MAX_BATCH:
        return b, f"{b}, the recipe's"
    why = "so an epoch has at least 8 steps" if by_data <= by_memory else \
        f"what {machine.memory_gb:g} GB of {machine.device} memory holds (about {per_image_mb:.0f} MB an image)"
    return b, f"{b}, {why}"


def queue_size(n_images: int, keys_per_step: int, ceiling: int) -> tuple[int, str]:
    """MoCo's K: at most a quarter of the images (a power of two), so an image's own key from its last visit
    has left the queue before it comes again; at least one step's keys; at most the recipe's ``ceiling``."""
    k = max(keys_per_step, min(ceiling, pow2_floor(n_images / 4)))
    if k == ceiling:
        return k, f"{k}, the recipe's (well below the {n_images} images)"
    return k, f"{k}, at most a quarter of the {n_images} images (the CIFAR demo keeps 4096 for 50,000)"


def bn_groups(batch: int, machine: Machine) -> tuple[int, str]:
    """Shuffle BN: across processes when there are several (one BN group each), else SplitBatchNorm's groups on
    one device (8, as the CIFAR demo, fewer for small batches: at least 16 images a group)."""
    if machine.processes > 1:
        return 1, f"shuffle BN across the {machine.processes} processes"
    g = max(1, min(8, batch // 16))
    return g, f"{g} SplitBatchNorm groups on one device (shuffle BN within the batch)"


def per_image_mb(rung: Rung, machine: Machine) -> float:
    """Estimated training memory of one image at ``rung`` (:data:`ACT_MB_224`)."""
    side = rung.view * (4 if rung.cifar_stem else 1)  # the CIFAR stem keeps 4x the side after the stem
    mb = ACT_MB_224.get(rung.arch, 100.0) * (rung.width / 64) * (side / 224) ** 2
    return mb * (0.5 if machine.half else 1.0)


def enough_views(n_images: int) -> int:
    """The views a run must show to learn: :data:`MIN_EPOCHS` epochs and :data:`MIN_VIEWS`, whichever is more."""
    return max(MIN_EPOCHS * n_images, MIN_VIEWS)


def choose(data: DataSummary, machine: Machine, budget_s: float | None,
           speed: Callable[[Rung], float] | None = None, batch: int | None = None) -> Recipe:
    """The recipe for ``data`` on ``machine`` within ``budget_s`` seconds (None: no budget given). ``speed`` gives
    a rung's images per second on this machine (measured); it is asked about photo rungs only, cheapest first,
    and not beyond the first rung that does not fit. ``batch``: the batch the user set, which the queue and the
    BatchNorm groups then follow."""
    if data.median_side and data.median_side < SMALL_SIDE:
        return _small(data, machine, batch)
    assert speed is not None, "photos need the measured speed of the ladder's rungs"
    return _photos(data, machine, budget_s, speed, batch)


def _small(data: DataSummary, machine: Machine, batch: int | None = None) -> Recipe:
    base = PRESETS[SMALL_PRESET]
    r = Recipe(SMALL_PRESET, summary=f"{data.n_images} images of about {data.median_side} px: the {SMALL_PRESET} "
                                     "recipe (32-px views, CIFAR ResNet-18 at width 16)")
    b_pre, k_pre = base["optim"]["batch_size"], base["method"]["K"]
    b, why_b = batch_size(data.n_images, 0.0, machine)
    b = batch or min(b, b_pre)
    k, why_k = queue_size(data.n_images, b, k_pre)
    if b != b_pre and not batch:
        r.settings |= {"optim.batch_size": b, "optim.lr": base["optim"]["lr"] * b / b_pre}
        r.reasons["optim.batch_size"] = f"{why_b}; lr {r.settings['optim.lr']:g} (linear scaling)"
    if k != k_pre:
        r.settings["method.K"] = k
        r.reasons["method.K"] = why_k
    g, why_g = bn_groups(b, machine)
    if g != base["model"]["bn_splits"] and not batch:  # the user's batch keeps the preset's groups
        r.settings["model.bn_splits"] = g
        r.reasons["model.bn_splits"] = why_g
    return r


def preset_value(preset: dict[str, dict[str, Any]], key: str) -> Any:
    """What ``preset`` (or the defaults, where it says nothing) holds for ``key``."""
    from moco.schema import Config

    section, name = key.split(".", 1)
    return preset.get(section, {}).get(name, getattr(getattr(Config(), section), name))


def chosen_value(recipe: Recipe, key: str) -> Any:
    """The value ``recipe`` gives ``key``: its own setting, else its preset's."""
    return recipe.settings[key] if key in recipe.settings else preset_value(PRESETS[recipe.preset], key)


def _differs(preset: dict[str, dict[str, Any]], key: str, value: Any) -> bool:
    """Whether ``value`` changes what ``preset`` holds for ``key`` (only changes are kept as settings)."""
    return preset_value(preset, key) != value


def _photos(data: DataSummary, machine: Machine, budget_s: float | None, speed: Callable[[Rung], float],
            batch: int | None = None) -> Recipe:
    n = data.n_images
    seconds = budget_s or DEFAULT_BUDGET_S
    need = enough_views(n)
    fits = [r for r in LADDER if not data.median_side or r.view <= data.median_side] or [LADDER[0]]
    rung, views, rate, nxt = fits[0], 0.0, 0.0, ""
    for cand in fits:
        r_s = speed(cand)
        if cand is not fits[0] and r_s * OVERHEAD * seconds < need:
            nxt = f"; the next, {cand.name}, would show them {r_s * OVERHEAD * seconds / max(n, 1):.0f} times"
            break
        rung, views, rate = cand, r_s * OVERHEAD * seconds, r_s
    epochs = max(1, min(800, round(views / max(n, 1))))
    mb = per_image_mb(rung, machine)
    b, why_b = batch_size(n, mb, machine)
    b, why_b = (batch, f"{batch}, yours") if batch else (b, why_b)
    k, why_k = queue_size(n, b, 65536)
    g, why_g = bn_groups(b, machine)
    cache_gb = n * (round(rung.view * 1.15)) ** 2 * 3 / 1e9
    pipeline = "cached" if cache_gb <= CACHE_LIMIT_GB else "per_image"
    workers = max(1, min(machine.cores, 8))
    side = f"about {data.median_side} px" if data.median_side else "of unknown size"
    base = PRESETS[rung.preset]
    recipe = "the 32-px recipe's network and augmentation (v2's without blur)" if rung.cifar_stem else \
        "MoCo v2's photo recipe (MLP head, blur augmentation, T=0.2, cosine lr)"
    r = Recipe(rung.preset, summary=f"{n} images {side}: {recipe} on {rung.name}, on {machine.name or machine.device}")
    lr = round(PHOTO_LR * b / 256, 6)
    r.settings = {
        "model.arch": rung.arch, "model.width": rung.width, "model.cifar_stem": rung.cifar_stem, "model.bn_splits": g,
        "data.image_size": rung.view, "data.pipeline": pipeline, "data.workers": workers,
        "method.K": k, "method.m": 0.99,
        "optim.batch_size": b, "optim.lr": lr, "optim.weight_decay": 5e-4,
        "optim.epochs": epochs,
        "train.eval_every": 0 if budget_s else max(1, epochs // 10), "train.knn_features": ["backbone"],
    }
    r.settings = {k: v for k, v in r.settings.items() if _differs(base, k, v)}
    budget = f"{budget_s / 60:.0f} min budget" if budget_s else \
        f"no --time-budget: sized for {DEFAULT_BUDGET_S / 3600:g} h here"
    ok = views >= need
    r.reasons = {
        "view and network": f"{rung.name}: the largest rung whose measured {rate:.0f} img/s shows the "
                            f"{n} images {views / max(n, 1):.0f} times in the {budget} (it needs {MIN_EPOCHS}+ "
                            f"epochs and {MIN_VIEWS:,}+ views to learn{nxt})" if ok else
                            f"{rung.name}, the smallest rung: even it shows the images only {views / max(n, 1):.0f} "
                            f"times in the {budget} (a longer budget learns more)",
        "optim.epochs": f"{epochs}, what the {budget} holds at that speed"
                        + ("" if budget_s else " (give --time-budget or --epochs to change it)"),
        "optim.batch_size": f"{why_b}; lr {lr:g} (0.06 x batch / 256, linear scaling), "
                            "weight decay 5e-4 (the CIFAR demo's, for data far smaller than ImageNet)",
        "method.K": why_k,
        "method.m": "0.99, the CIFAR demo's: runs of thousands of steps, not ImageNet's hundreds of thousands",
        "model.bn_splits": why_g,
        "data.pipeline": f"{pipeline}: the decoded set is about {cache_gb:.1f} GB"
                         + (" (decoded once)" if pipeline == "cached" else f" (over {CACHE_LIMIT_GB:g} GB)")
                         + f"; {workers} workers for {machine.cores} cores",
    }
    return r
