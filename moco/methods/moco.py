"""Momentum Contrast (He et al., CVPR 2020), readable against the paper.

Two encoders, ``encoder_q`` (trained by back-propagation) and ``encoder_k``
(an exponential moving average of it, never receiving gradients), a FIFO
``queue`` of ``K`` normalised keys, and InfoNCE with temperature ``T`` as a
(K+1)-way cross-entropy whose positive sits at index 0.

BatchNorm running statistics are buffers, not parameters: the key encoder keeps
its own, accumulated from the key batches it encodes in train mode, exactly as
the authors' code does. Only parameters follow the momentum update.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from moco.core.distributed import concat_all_gather, world_size
from moco.methods.encoder import build_head
from moco.models.generic import Encoder, infer_feature_dim, split_batchnorm
from moco.schema import Config


@torch.no_grad()
def update_momentum(model_k: nn.Module, model_q: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q, for every parameter (one fused call)."""
    params_k = [p for p in model_k.parameters()]
    params_q = [p.detach() for p in model_q.parameters()]
    torch._foreach_lerp_(params_k, params_q, 1.0 - m)


def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly permute a batch; return it with the index that undoes the permutation."""
    idx_shuffle = torch.randperm(x.shape[0], generator=generator).to(x.device)
    idx_unshuffle = torch.argsort(idx_shuffle)
    return x[idx_shuffle], idx_unshuffle


def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`batch_shuffle`."""
    return x[idx_unshuffle]


@torch.no_grad()
def batch_shuffle_ddp(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle BN across processes (the authors' version): gather the key batch of every process,
    permute it with rank 0's permutation, and give each process its slice. Returns the slice and the
    index that undoes the permutation."""
    x_all = concat_all_gather(x)
    idx_shuffle = torch.randperm(x_all.shape[0], generator=generator).to(x.device)
    dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    return x_all[idx_shuffle.view(dist.get_world_size(), -1)[dist.get_rank()]], idx_unshuffle


@torch.no_grad()
def batch_unshuffle_ddp(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`batch_shuffle_ddp`: this process's keys, back in its original order."""
    x_all = concat_all_gather(x)
    return x_all[idx_unshuffle.view(dist.get_world_size(), -1)[dist.get_rank()]]


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE loss. ``q``, ``k``: (N, C) normalised; ``queue``: (K, C) negatives.

    Returns the mean loss and the (N, 1+K) logits, positive first. Similarities and cross-entropy are
    computed in fp32 even under autocast, as in the authors' code: a bf16 similarity is off by ~1e-3,
    which is 0.01 in a logit at T = 0.1, and it reaches the gradient of q.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = q.float(), k.float(), queue.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        l_neg = q @ queue.t()  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels), logits


class MoCo(nn.Module):
    """MoCo v1/v2. ``encoder`` is a backbone whose ``fc`` is the projection head."""

    def __init__(
        self,
        encoder: nn.Module,
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.07,
        symmetric: bool = False,
        shuffle_bn: bool = True,
    ) -> None:
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.symmetric, self.shuffle_bn = symmetric, shuffle_bn
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)  # theta_k starts as a copy of theta_q
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (of every process) over the oldest entries, wrapping around the end of the queue."""
        keys = concat_all_gather(keys)
        n = keys.shape[0]
        if n >= self.K:  # only the newest K survive
            keys, n = keys[-self.K :], self.K
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.K
        self.queue.index_copy_(0, idx, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % self.K)

    @torch.no_grad()
    def _keys(self, im_k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """k+ = normalize(f_k(x_k)), encoded in shuffled order when shuffle BN is on."""
        if not self.shuffle_bn:
            return F.normalize(self.encoder_k(im_k).float(), dim=1)
        ddp = world_size() > 1
        im_k, idx_unshuffle = (batch_shuffle_ddp if ddp else batch_shuffle)(im_k, generator)
        k = F.normalize(self.encoder_k(im_k).float(), dim=1)
        return (batch_unshuffle_ddp if ddp else batch_unshuffle)(k, idx_unshuffle)

    def _loss(self, im_q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        return info_nce(q, k, queue, self.T)

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One MoCo step's forward: returns (loss, logits) and updates encoder_k and the queue.
        (``index``, the images' dataset indices, is part of the shared interface; MoCo does not need it.)

        As in the authors' code, the key encoder is momentum-updated *before* it
        encodes this batch's keys, and the keys are enqueued after the logits are formed.
        """
        with torch.no_grad():
            update_momentum(self.encoder_k, self.encoder_q, self.m)
        queue = self.queue.clone()  # the loss must see the queue before this step's enqueue
        if self.symmetric:  # L(x1 -> x2) + L(x2 -> x1); both key sets are enqueued
            k1, k2 = self._keys(im_q, generator), self._keys(im_k, generator)
            loss_12, logits = self._loss(im_q, k2, queue)
            loss_21, _ = self._loss(im_k, k1, queue)
            loss, keys = loss_12 + loss_21, torch.cat([k1, k2])
        else:
            keys = self._keys(im_k, generator)
            loss, logits = self._loss(im_q, keys, queue)
        self._dequeue_and_enqueue(keys)
        return loss, logits

    def set_momentum(self, m: float) -> None:
        """The key encoder's momentum for the next steps (the training loop follows ``method.m_schedule``)."""
        self.m = m

    @classmethod
    def from_backbone(
        cls, backbone: nn.Module, dim: int = 128, mlp: bool = True, feature_dim: int | None = None,
        image_size: int = 224, bn_splits: int = 1, **kw: Any,
    ) -> MoCo:
        """MoCo around any ``backbone`` that maps images to features (or feature maps, which are pooled):
        a projection head to ``dim`` (v2's MLP, or v1's linear layer with ``mlp=False``) is added, and the
        backbone's width is ``feature_dim`` or found by one forward pass at ``image_size``. ``kw``: K, m, T,
        symmetric, shuffle_bn.

        ``bn_splits``: on one device, give 8 (the CIFAR demo's SplitBatchNorm): every ``BatchNorm2d`` of the
        backbone then normalises each eighth of the batch on its own statistics, and shuffle BN (the key batch
        shuffled across the groups) stops the positive key from leaking through the batch statistics (paper,
        3.3). With 1 (plain BN) on one device the shuffle changes nothing and the model can cheat; under
        torchrun keep 1: the key batch is shuffled across processes instead."""
        backbone = split_batchnorm(backbone, bn_splits)
        width = feature_dim or infer_feature_dim(backbone, image_size)
        return cls(Encoder(backbone, build_head(width, dim, mlp)), dim, **kw)


def build(cfg: Config, encoder: nn.Module, n_images: int) -> MoCo:
    """MoCo as ``cfg`` describes it around ``encoder`` (``n_images`` is not needed: the queue does not depend
    on the data)."""
    me = cfg.method
    return MoCo(encoder, cfg.model.dim, me.K, me.m, me.T, me.symmetric, me.shuffle_bn)


def describe(cfg: Config, n_images: int) -> str:
    return f"K={cfg.method.K}, m={cfg.method.m}"
