"""Contrastive methods: the contract every dictionary keeps, and the registry ``DICTIONARIES``.

Four dictionaries share one interface, ``model(im_q, im_k, generator=, index=) -> (loss, logits)`` with the
positive logit first, and all keep the trained backbone as ``encoder_q``: MoCo's queue and momentum encoder
(``moco``), the current batch (``end_to_end``), a memory bank (``memory_bank``) and MoCo v3 (``v3``).

Adding a dictionary takes one new file (the ``nn.Module``, a ``build(cfg, encoder, n_images)`` and a
``describe(cfg, n_images)``) and one line in ``DICTIONARIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from moco.methods import end_to_end, memory_bank, moco_v3
from moco.methods import moco as moco_queue
from moco.methods.encoder import HEADS, build_encoder, build_head, build_mlp, mlp_hidden
from moco.methods.end_to_end import EndToEnd, batch_nce
from moco.methods.memory_bank import MemoryBank, update_bank
from moco.methods.moco import MoCo, batch_shuffle, batch_unshuffle, info_nce, update_momentum
from moco.methods.moco_v3 import MoCoV3
from moco.schema import Config


@runtime_checkable
class ContrastiveMethod(Protocol):
    """What the training loop, the kNN monitor and the exports need of a dictionary (an ``nn.Module``)."""

    encoder_q: nn.Module  # the backbone being trained, its projection head as ``fc``

    def __call__(
        self, im_q: torch.Tensor, im_k: torch.Tensor, generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's forward on two views (and the images' dataset indices): the loss and the
        (N, 1 + negatives) logits, positive first. Updates the dictionary's own state (queue, key encoder)."""
        ...

    def set_momentum(self, m: float) -> None:
        """The key encoder's momentum from now on; dictionaries without a key encoder ignore it."""
        ...


@dataclass(frozen=True)
class Dictionary:
    """A registry entry: how to build the method from a config, and one line that describes it in logs."""

    build: Callable[[Config, nn.Module, int], ContrastiveMethod]  # (config, encoder, number of training images)
    describe: Callable[[Config, int], str]
    heads: tuple[str, ...] = ("linear", "mlp")  # the projection heads (``model.head``) it works with


DICTIONARIES: dict[str, Dictionary] = {
    "moco": Dictionary(moco_queue.build, moco_queue.describe),
    "end_to_end": Dictionary(end_to_end.build, end_to_end.describe),
    "memory_bank": Dictionary(memory_bank.build, memory_bank.describe),
    "v3": Dictionary(moco_v3.build, moco_v3.describe, heads=("v3",)),
}


def build_moco(cfg: Config, n_images: int = 0, backbone: nn.Module | None = None) -> ContrastiveMethod:
    """The model ``cfg.method.dictionary`` names, around ``backbone`` (default: the one ``cfg.model``
    describes); a memory bank needs ``n_images`` (one entry per image)."""
    return DICTIONARIES[cfg.method.dictionary].build(cfg, build_encoder(cfg, backbone), n_images)


def describe(cfg: Config, n_images: int = 0) -> str:
    """One line on the dictionary ``cfg`` asks for, e.g. ``K=4096, m=0.99``."""
    return DICTIONARIES[cfg.method.dictionary].describe(cfg, n_images)


__all__ = [
    "DICTIONARIES", "HEADS", "ContrastiveMethod", "Dictionary", "EndToEnd", "MemoryBank", "MoCo", "MoCoV3",
    "batch_nce", "batch_shuffle", "batch_unshuffle", "build_encoder", "build_head", "build_mlp", "build_moco",
    "describe", "info_nce", "mlp_hidden", "update_bank", "update_momentum",
]
