"""torch.distributed helpers: process-group set-up from torchrun's environment, gathers, agreement checks.

The launcher is PyTorch's own ``torchrun`` (or ``moco pretrain --nproc N``, which calls it). NCCL on
GPUs, gloo on CPUs. With a single process every helper is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import traceback
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from moco.core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def lost_peer(exc: BaseException) -> str | None:
    """When ``exc`` is a collective's failure in a process of a multi-process job (another process died, and
    gloo or NCCL saw its connection close), its first line, else None: the launcher then names the process
    that died, and this one stops with a line instead of a traceback."""
    if env_world_size() < 2 or not isinstance(exc, RuntimeError):  # torch's DistError is a RuntimeError
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if not any(f"torch{os.sep}distributed{os.sep}" in f.filename for f in frames[-3:]):
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[/path/to/pair.cc:561] " source location
    return first.split(". ")[0][:300]


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device | None]:
    """Join the process group torchrun describes (if any). Returns the info and the device to use (or None)."""
    world = env_world_size()
    if world <= 1:
        return DistInfo(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda") or device_pref.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return DistInfo(rank, world, local), device


def check_global_batch(batch_size: int) -> None:
    """Before joining the process group: ``batch_size`` is the global batch, split evenly over the processes
    torchrun started, so it must divide by their number."""
    world = env_world_size()
    if batch_size % world:
        raise ConfigError(f"optim.batch_size ({batch_size}) is the global batch and must divide by the number of "
                          f"processes ({world})")


def rank_slice(batch_size: int, dinfo: DistInfo) -> slice:
    """This process's part of a global batch of ``batch_size`` items: rank r of n takes the r-th of n equal
    parts (the batch divides, :func:`check_global_batch`). Every pipeline slices its batches and draws so."""
    b = batch_size // dinfo.world_size
    return slice(dinfo.rank * b, (dinfo.rank + 1) * b)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' ``x`` concatenated along dim 0, in rank order (no gradient)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def broadcast_int(value: int | None, device: torch.device) -> int | None:
    """Rank 0's ``value`` (an int >= 0, or None) on every rank."""
    if world_size() == 1:
        return value
    t = torch.tensor([-1 if value is None else value], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return None if t.item() < 0 else int(t.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (used to stop all ranks at the same step)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def check_same_config(cfg_dict: dict[str, Any], device: torch.device) -> None:
    """Raise ConfigError on every rank if the ranks were started with different configs."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(json.dumps(cfg_dict, sort_keys=True).encode()).digest()[:7]
    mine = torch.tensor([int.from_bytes(digest, "big")], dtype=torch.long, device=device)
    all_ = concat_all_gather(mine).tolist()
    if len(set(all_)) > 1:
        bad = [r for r, h in enumerate(all_) if h != all_[0]]
        raise ConfigError(f"ranks {bad} were started with a different config than rank 0; "
                          "launch every process with the same flags and config file")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


SINGLE_PROCESS = DistInfo()
