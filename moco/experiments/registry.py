"""The experiments ``moco reproduce`` knows, in report order: one module each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moco.experiments import mechanisms, momentum, queue_size, shuffle_bn, symmetric, transfer
from moco.experiments.base import Experiment

EXPERIMENTS: dict[str, Experiment] = {
    "mechanisms": mechanisms.EXPERIMENT,
    "momentum": momentum.EXPERIMENT,
    "queue-size": queue_size.EXPERIMENT,
    "shuffle-bn": shuffle_bn.EXPERIMENT,
    "symmetric": symmetric.EXPERIMENT,
}

RUNNERS: dict[str, Callable[..., Path | None]] = {
    "transfer": transfer.reproduce_transfer,
}
"""Experiments that are not a set of pretraining runs judged by kNN, and run their own kinds of run:
name -> ``run(data, out, runs, budget, extra, progress, dry_run)``, returning the report's path."""
