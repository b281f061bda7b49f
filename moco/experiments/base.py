"""What an experiment is made of: settings with roles, budgets, and helpers its verdicts and plots share.

An experiment is a list of settings (config overrides on one base recipe, the budget), a verdict
function that turns their results into sentences, and a plot. Verdicts find settings by ``role``
(``baseline``, ``seed``, ...), never by display name or position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from moco.schema import Config

BASELINE, SEED = "baseline", "seed"


@dataclass
class Setting:
    """One run of an experiment: a row of its table and a point of its plot."""

    name: str
    overrides: list[str]
    group: str = "MoCo"  # plot series
    x: float | None = None  # plot position (K or m)
    paper: str = ""  # the paper's figure for this setting, where there is one
    role: str = ""  # what the verdict uses it for: BASELINE (the budget's recipe), SEED (its repeat), ...


@dataclass
class Budget:
    preset: str
    overrides: list[str]
    about: str


BUDGETS = {
    "small": Budget("cifar10-cpu", ["model.head=mlp", "model.bn_splits=8", "method.K=4096", "method.m=0.99",
                                    "method.T=0.1", "optim.batch_size=256", "optim.lr=0.06", "optim.epochs=2",
                                    "train.eval_every=1", "train.log_every=10"],
                    "the `cifar10-cpu` recipe (ResNet-18 at width 16, CIFAR stem, MLP head, batch 256, K=4096, "
                    "m=0.99, T=0.1, cosine lr 0.06) for 2 epochs over all training images, kNN every epoch"),
    "paper": Budget("cifar10-demo", ["optim.epochs=200", "train.eval_every=10", "train.log_every=50"],
                    "the authors' CIFAR-10 demo recipe (ResNet-18, CIFAR stem, batch 512, K=4096, m=0.99, "
                    "T=0.1, cosine lr 0.06) for 200 epochs, kNN every 10 epochs"),
}

Results = dict[str, dict]


@dataclass
class Experiment:
    title: str
    claim: str  # what the paper reports
    settings: Callable[[Config], list[Setting]]
    verdicts: Callable[[list[Setting], Results], list[str]]
    plot: Callable[[list[Setting], Results, Path], None]
    notes: list[str] = field(default_factory=list)


def seed_repeat(base: Config) -> Setting:
    """The budget's recipe again with the next seed: the yardstick of noise."""
    return Setting(f"MoCo K={base.method.K}, seed {base.train.seed + 1} (noise yardstick)",
                   [f"train.seed={base.train.seed + 1}"], group="seed", role=SEED)


def knn(results: Results, s: Setting) -> float:
    return results[s.name]["knn_top1"]


def with_role(settings: list[Setting], role: str) -> Setting:
    return next(s for s in settings if s.role == role)


def result_of(settings: list[Setting], results: Results, role: str) -> dict:
    """The results of the setting that plays ``role``."""
    return results[with_role(settings, role).name]


def noise(settings: list[Setting], results: Results) -> float:
    """Seed-to-seed difference: the baseline against its repeat with another seed."""
    return abs(result_of(settings, results, SEED)["knn_top1"] - result_of(settings, results, BASELINE)["knn_top1"])


def within(d: float, noise: float) -> str:
    return "within" if abs(d) <= max(noise, 0.3) else "beyond"


# ---- plots ------------------------------------------------------------------------------------


def plt() -> ModuleType:  # matplotlib.pyplot, imported only when a report is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt().close(fig)


def plot_vs_x(settings: list[Setting], results: Results, path: Path, xlabel: str, logx: bool, title: str) -> None:
    """kNN top-1 against each setting's ``x``, one line per group."""
    fig, ax = plt().subplots(figsize=(6, 4))
    groups = dict.fromkeys(s.group for s in settings if s.x is not None)
    for g in groups:
        pts = sorted((s.x, knn(results, s)) for s in settings if s.group == g and s.x is not None)
        xs = [max(x, 1e-5) if logx else x for x, _ in pts]
        ax.plot(xs, [y for _, y in pts], "o-", label=g)
    if logx:
        ax.set_xscale("log", base=2 if xlabel.startswith("K") else 10)
    ax.set(xlabel=xlabel, ylabel="kNN top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def curves(results: Results, name: str, key: str) -> tuple[list[float], list[float]]:
    """A run's step records of ``key`` against the fractional epoch."""
    steps = [r for r in results[name]["metrics"] if r.get("type") == "step" and key in r]
    return [r["epoch_float"] for r in steps], [r[key] for r in steps]
