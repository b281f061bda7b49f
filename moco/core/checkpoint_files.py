"""Checkpoint files: atomic writes, safe loads, and clear errors for anything that is not ours.

A checkpoint is a plain dict of tensors and Python values (loadable with
``torch.load(weights_only=True)``, so opening one never runs code):
``format``, ``config``, ``epoch`` (completed epochs), ``step`` (global step),
``epoch_step`` (steps done in an unfinished epoch), ``model`` (both encoders,
queue and queue pointer), ``optimizer``, ``rng``, ``metrics`` and ``history``.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from moco.core.errors import CheckpointError

FORMAT = "momentum-contrast/1"
log = logging.getLogger("moco")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``.

    A crash or a full disk at any moment leaves either the old file or the new
    one, never a torn file; on failure the error names the path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} holds Python objects that a safe load refuses to run; only plain tensor "
                "checkpoints are loaded"
            ) from None
        raise CheckpointError(
            f"not a readable PyTorch checkpoint (truncated or another format): {path} [{first[:120]}]"
        ) from None
    except Exception as e:  # noqa: BLE001 - unpickling errors of many kinds
        raise CheckpointError(f"not a readable PyTorch checkpoint: {path} [{type(e).__name__}]") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a momentum-contrast checkpoint (holds a {type(obj).__name__})")
    return obj


def require_moco_checkpoint(obj: dict[str, Any], path: str | Path) -> dict[str, Any]:
    if obj.get("format") != FORMAT or "model" not in obj or "config" not in obj:
        raise CheckpointError(f"{path} is not a momentum-contrast checkpoint (no {FORMAT!r} format tag)")
    return obj


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with a short summary instead of a key dump on mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        parts = []
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatch(es), e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise CheckpointError(f"{path}: the {what} does not match this model ({'; '.join(parts)})")
    module.load_state_dict(state, strict=True)


def resume_candidates(out: str | Path) -> list[Path]:
    """The checkpoints a run in ``out`` could resume from, newest first: ``checkpoint_last.pt``, then the kept
    ``checkpoint_NNNN.pt`` from the highest epoch down."""
    out = Path(out)
    last = [out / "checkpoint_last.pt"] if (out / "checkpoint_last.pt").is_file() else []
    return last + sorted(out.glob("checkpoint_[0-9][0-9][0-9][0-9].pt"), reverse=True)


def load_newest_intact(out: str | Path, warn: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint of ``out`` that loads (None when it has none). A damaged newer one (a copy cut
    short, a full disk) is passed over with one warning that names both files and the epochs lost; when none
    loads, :class:`CheckpointError` names the newest and why."""
    tried: list[tuple[Path, str]] = []
    for path in resume_candidates(out):
        try:
            ck = require_moco_checkpoint(load_checkpoint(path), path)
        except CheckpointError as e:
            tried.append((path, str(e)))
            continue
        if tried and warn:
            newest = tried[0][0]
            lost = ""
            m = re.fullmatch(r"checkpoint_(\d{4})\.pt", newest.name)
            if m:
                lost = f", epochs {ck.get('epoch', 0) + 1}-{int(m.group(1))} lost"
            log.warning("%s cannot be read (%s); resuming from %s instead (epoch %s%s)", newest.name,
                        tried[0][1], path.name, ck.get("epoch"), lost or ", the steps after it lost")
        return ck, path
    if tried:
        raise CheckpointError(f"no checkpoint in {Path(out)} can be read: {tried[0][1]}"
                              + (f" (and {len(tried) - 1} older one(s))" if len(tried) > 1 else ""))
    return None


def latest_checkpoint(out: str | Path) -> Path | None:
    """``checkpoint_last.pt`` in ``out``, else the newest ``checkpoint_NNNN.pt``, else None."""
    out = Path(out)
    last = out / "checkpoint_last.pt"
    if last.is_file():
        return last
    numbered = sorted(out.glob("checkpoint_[0-9][0-9][0-9][0-9].pt"))
    return numbered[-1] if numbered else None
