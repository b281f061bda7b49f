"""The experiments ``moco reproduce`` knows, in report order: one module each."""

from __future__ import annotations

from moco.experiments import mechanisms, momentum, queue_size, shuffle_bn, symmetric
from moco.experiments.base import Experiment

EXPERIMENTS: dict[str, Experiment] = {
    "mechanisms": mechanisms.EXPERIMENT,
    "momentum": momentum.EXPERIMENT,
    "queue-size": queue_size.EXPERIMENT,
    "shuffle-bn": shuffle_bn.EXPERIMENT,
    "symmetric": symmetric.EXPERIMENT,
}
