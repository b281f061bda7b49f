"""MoCo v3 (Chen, Xie and He, ICCV 2021): no queue; the keys of the (gathered) batch are the dictionary.

``encoder_q`` is the backbone with its projector as ``fc``; a ``predictor`` follows it on the query
side only; ``encoder_k`` is a momentum copy of ``encoder_q`` (backbone + projector, no predictor).
Both views are queries and keys (the symmetric loss), and each InfoNCE term is scaled by 2T as in
the authors' code. The momentum ``m`` is set by the training loop each step (cosine from m0 to 1).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from moco.core.distributed import concat_all_gather, rank, world_size
from moco.methods.encoder import build_mlp, mlp_hidden
from moco.methods.end_to_end import batch_nce
from moco.methods.moco import update_momentum
from moco.schema import Config


class MoCoV3(nn.Module):
    """MoCo v3 around ``encoder`` (a backbone whose ``fc`` is the projector) with a query-side ``predictor``;
    the keys are the (gathered) batch's, and the loss is symmetric, each term scaled by 2T."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module, T: float = 1.0, m: float = 0.99) -> None:
        super().__init__()
        self.T, self.m = T, m
        self.encoder_q = encoder
        self.predictor = predictor
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad = False

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2T x InfoNCE of ``q`` against the keys of every process; the positive of q[i] is this process's k[i]."""
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
        offset = rank() * k.shape[0] if world_size() > 1 else 0
        loss, logits = batch_nce(q, concat_all_gather(k), self.T, offset)
        return loss * (2 * self.T), logits

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q1 = self.predictor(self.encoder_q(im_q))
        q2 = self.predictor(self.encoder_q(im_k))
        with torch.no_grad():
            update_momentum(self.encoder_k, self.encoder_q, self.m)
            k1, k2 = self.encoder_k(im_q), self.encoder_k(im_k)
        loss_12, logits = self.contrastive_loss(q1, k2)
        loss_21, _ = self.contrastive_loss(q2, k1)
        return loss_12 + loss_21, logits

    def set_momentum(self, m: float) -> None:
        """The key encoder's momentum for the next steps (cosine from m0 up to 1 in the v3 recipes)."""
        self.m = m


def build(cfg: Config, encoder: nn.Module, n_images: int) -> MoCoV3:
    """MoCo v3 around ``encoder`` with the authors' predictor: 2 layers, no BN after the last."""
    me = cfg.method
    return MoCoV3(encoder, build_mlp(2, cfg.model.dim, mlp_hidden(cfg), cfg.model.dim, False),
                  me.T, me.m)


def describe(cfg: Config, n_images: int) -> str:
    me = cfg.method
    return f"MoCo v3, keys of the batch, m={me.m}{' -> 1 (cosine)' * (me.m_schedule == 'cosine')}"
