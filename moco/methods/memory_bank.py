"""The memory-bank dictionary (Wu et al. 2018; MoCo paper, Figure 2b), with MoCo's InfoNCE loss.

A bank holds one normalised feature per training image. A query's positive is its own image's
entry, and K entries drawn at random are the negatives (shared by the whole batch, as a queue's
are). After the step, the entries of this batch's images move towards the new query features:
v_i <- normalize(bank_m * v_i + (1 - bank_m) * q_i), bank_m = 0.5 as in Wu et al. So each entry
was written by the encoder of the last time its image was visited: the keys are inconsistent.
Only one view is encoded; the second (``im_k``) is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moco.core.distributed import concat_all_gather
from moco.methods.moco import info_nce
from moco.schema import Config


@torch.no_grad()
def update_bank(bank: torch.Tensor, index: torch.Tensor, q: torch.Tensor, bank_m: float) -> None:
    """v_i <- normalize(bank_m * v_i + (1 - bank_m) * q_i) for the rows ``index``, in place."""
    v = torch.lerp(q.to(bank.dtype), bank[index], bank_m)
    bank.index_copy_(0, index, F.normalize(v, dim=1))


class MemoryBank(nn.Module):
    """One encoder and a bank of ``n_images`` features; ``K`` random negatives per step."""

    def __init__(self, encoder: nn.Module, dim: int, n_images: int, K: int = 4096, T: float = 0.07,
                 bank_m: float = 0.5) -> None:
        super().__init__()
        if n_images < 1:
            raise ValueError("a memory bank needs the number of training images")
        self.K, self.T, self.bank_m = K, T, bank_m
        self.encoder_q = encoder
        self.register_buffer("bank", F.normalize(torch.randn(n_images, dim), dim=1))

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            raise ValueError("the memory bank needs the dataset index of every image in the batch")
        index = index.to(self.bank.device)
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        neg = torch.randint(self.bank.shape[0], (self.K,), generator=generator).to(self.bank.device)
        loss, logits = info_nce(q, self.bank[index], self.bank[neg], self.T)
        update_bank(self.bank, concat_all_gather(index), concat_all_gather(q.detach()), self.bank_m)
        return loss, logits

    def set_momentum(self, m: float) -> None:
        """No key encoder: the bank's own momentum is ``bank_m``, fixed."""


def build(cfg: Config, encoder: nn.Module, n_images: int) -> MemoryBank:
    """A bank of one entry per training image (MemoryBank refuses ``n_images`` < 1)."""
    me = cfg.method
    return MemoryBank(encoder, cfg.model.dim, n_images, me.K, me.T, me.bank_m)


def describe(cfg: Config, n_images: int) -> str:
    me = cfg.method
    return f"memory bank of {n_images}, K={me.K}, bank_m={me.bank_m}"
