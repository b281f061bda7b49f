"""The end-to-end dictionary (MoCo paper, Figure 2a): the keys are the other samples of the batch.

Queries and keys are both encoded by ``encoder_q`` and gradients flow through both, so the
dictionary is as consistent as it can be but only as large as the batch: K = N - 1. As in the
paper, the keys are encoded in shuffled order (shuffle BN) so that BN statistics cannot leak the
positive. Same InfoNCE as MoCo, positive first, so the training loop treats both alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moco.core.distributed import concat_all_gather, rank, world_size
from moco.methods.moco import batch_shuffle, batch_unshuffle
from moco.schema import Config


def batch_nce(q: torch.Tensor, k: torch.Tensor, T: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with in-batch negatives. ``q``: (N, C), ``k``: (M, C), both normalised, M >= N; the positive
    of ``q[i]`` is ``k[offset + i]`` and every other row of ``k`` is a negative.

    Returns the mean loss and the (N, M) logits rearranged positive first, like :func:`moco.methods.info_nce`,
    and like it in fp32 even under autocast.
    """
    n, m = q.shape[0], k.shape[0]
    with torch.autocast(q.device.type, enabled=False):
        sim = q.float() @ k.float().t()  # (N, M)
        pos = torch.zeros(n, m, dtype=torch.bool, device=q.device)
        pos[torch.arange(n), offset + torch.arange(n)] = True
        logits = torch.cat([sim[pos].view(n, 1), sim[~pos].view(n, m - 1)], dim=1) / T
        labels = torch.zeros(n, dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels), logits


class EndToEnd(nn.Module):
    """End-to-end contrastive learning with one encoder; negatives from the current (gathered) batch."""

    def __init__(self, encoder: nn.Module, T: float = 0.07, shuffle_bn: bool = True) -> None:
        super().__init__()
        self.T, self.shuffle_bn = T, shuffle_bn
        self.encoder_q = encoder

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        if self.shuffle_bn:  # with gradients: indexing is differentiable
            im_k, idx_unshuffle = batch_shuffle(im_k, generator)
            k = batch_unshuffle(F.normalize(self.encoder_q(im_k).float(), dim=1), idx_unshuffle)
        else:
            k = F.normalize(self.encoder_q(im_k).float(), dim=1)
        offset = 0
        if world_size() > 1:  # other processes' keys join as negatives (without gradients, as in MoCo v3)
            n, r = k.shape[0], rank()
            k_all = concat_all_gather(k.detach())
            k, offset = torch.cat([k_all[: r * n], k, k_all[(r + 1) * n :]]), r * n
        return batch_nce(q, k, self.T, offset)

    def set_momentum(self, m: float) -> None:
        """No key encoder: nothing follows a momentum."""


def build(cfg: Config, encoder: nn.Module, n_images: int) -> EndToEnd:
    return EndToEnd(encoder, cfg.method.T, cfg.method.shuffle_bn)


def describe(cfg: Config, n_images: int) -> str:
    return f"end-to-end, K={cfg.optim.batch_size - 1} (the batch)"
