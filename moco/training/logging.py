"""Run logging: ``metrics.jsonl``, TensorBoard events, experiment trackers (:mod:`moco.training.trackers`)
and a PNG of the curves.

TensorBoard is optional at run time: if the package is missing, metrics still go
to ``metrics.jsonl`` and the plot.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from moco.training.trackers import Tracker, scalars

log = logging.getLogger("moco")


class MetricsLogger:
    """Appends one JSON record per call to ``metrics.jsonl`` and mirrors scalars to TensorBoard and to the
    run's experiment trackers."""

    def __init__(self, out: Path, tensorboard: bool = True, trackers: list[Tracker] | None = None) -> None:
        self.path = out / "metrics.jsonl"
        self.trackers = trackers or []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; writing metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in scalars(record).items():
                self.writer.add_scalar(k, v, record.get("step", 0))
            self.writer.flush()
        for t in self.trackers:
            t.log(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
    return out


CURVES = {"pretext_acc1": "instance-discrimination acc@1 (%)", "train_acc1": "training top-1 (%)",
          "knn_top1": "kNN top-1 (%)", "test_top1": "test top-1 (%)"}
"""The accuracies ``plot_curves`` draws, whichever a run records: pretraining's or fine-tuning's."""


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    """Loss, training accuracy and evaluation top-1 (kNN, or the test set when fine-tuning) against epoch,
    written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in metrics if r.get("type") == "step"]
    epochs = [r for r in metrics if r.get("type") == "epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    if steps:
        ax.plot([r["epoch_float"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="step")
    if epochs:
        ax.plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], "o-", label="epoch mean")
    ax.set(title="cross-entropy loss" if any("train_acc1" in r for r in epochs) else "InfoNCE loss", xlabel="epoch")
    ax.legend()
    panels = ((axes[1], ("pretext_acc1", "train_acc1"), "C0"), (axes[2], ("knn_top1", "test_top1"), "C2"))
    for ax, keys, color in panels:
        key = next((k for k in keys if any(k in r for r in epochs)), keys[0])
        pts = [r for r in epochs if key in r]
        if pts:
            ax.plot([r["epoch"] for r in pts], [r[key] for r in pts], "o-", color=color)
        ax.set(title=CURVES[key], xlabel="epoch")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
