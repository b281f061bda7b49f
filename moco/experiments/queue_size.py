"""Queue size K (paper, Figure 3; the CIFAR-10 demo: the queue saturates at K=4096)."""

from __future__ import annotations

from pathlib import Path

from moco.experiments import base as ex
from moco.experiments.base import BASELINE, Experiment, Results, Setting
from moco.schema import Config

KS = (256, 1024, 4096, 16384, 49152)


def settings(base: Config) -> list[Setting]:
    return [Setting(f"MoCo K={k}", [f"method.K={k}"], x=k, role=BASELINE if k == base.method.K else "")
            for k in KS] + [ex.seed_repeat(base)]


def verdicts(settings: list[Setting], results: Results) -> list[str]:
    by = {s.x: ex.knn(results, s) for s in settings if s.group != "seed"}
    yardstick = ex.noise(settings, results)
    kb = ex.with_role(settings, BASELINE).x
    ks = sorted(by)
    return [f"Seed-to-seed difference of the same setting: {yardstick:.2f} points.",
            "kNN top-1 by K: " + ", ".join(f"{k:g}: {by[k]:.2f}" for k in ks) + ".",
            f"K={kb:g} to K={ks[-1]:g}: {by[ks[-1]] - by[kb]:+.2f} ({ex.within(by[ks[-1]] - by[kb], yardstick)} noise; "
            "the CIFAR demo reports that the queue saturates at K=4096).",
            f"K={ks[0]:g} to K={kb:g}: {by[kb] - by[ks[0]]:+.2f} ({ex.within(by[kb] - by[ks[0]], yardstick)} noise)."]


def plot(settings: list[Setting], results: Results, out: Path) -> None:
    ex.plot_vs_x(settings, results, out / "knn_vs_K.png", "K (queue size)", True, "kNN top-1 against queue size")


EXPERIMENT = Experiment(
    "Queue size K",
    "Paper, Figure 3: MoCo improves with K up to 65536 on ImageNet. The authors' CIFAR-10 demo: the queue "
    "saturates at K=4096.",
    settings, verdicts, plot,
    ["K=49152 is about the whole training set: the queue then holds keys of nearly every image."],
)
