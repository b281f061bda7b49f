"""Embeddings of a folder (``moco embed``) and nearest-neighbour pictures (``moco neighbors``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moco.data.cache import DecodedImages, decode_square
from moco.data.folder import IMAGE_EXTENSIONS, DataError
from moco.evaluation.knn import extract_features


def save_embeddings(features: torch.Tensor, data: DecodedImages, out: str | Path) -> Path:
    """``.npz`` with float32 ``features``, relative ``paths`` and, for an ImageFolder, ``labels`` and ``classes``."""
    arrays = {"features": features.numpy().astype(np.float32), "paths": np.array(data.images.paths)}
    if data.images.labels is not None:
        arrays["labels"] = np.array(data.images.labels, dtype=np.int64)
        arrays["classes"] = np.array(data.images.classes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def query_images(query: str | Path, side: int) -> tuple[list[Path], torch.Tensor]:
    """Decode a query image, or every image in a query folder, to a (Q, 3, side, side) uint8 batch."""
    q = Path(query)
    if q.is_dir():
        paths = sorted(p for p in q.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif q.is_file():
        paths = [q]
    else:
        raise DataError(f"query not found: {q}")
    if not paths:
        raise DataError(f"no images found in {q}")
    arrs = []
    for p in paths:
        try:
            arrs.append(decode_square(str(p), side))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"unreadable query image: {p} ({type(e).__name__}: {e})") from None
    return paths, torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


def nearest(
    backbone: nn.Module, data: DecodedImages, queries: torch.Tensor, image_size: int, device: torch.device,
    k: int = 8, precision: str = "bf16", norm: str = "imagenet",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) of the ``k`` nearest images of ``data`` for each query, by cosine similarity
    (inputs normalised by ``NORMALIZATIONS[norm]``, as in training)."""
    feats = extract_features(backbone, data, image_size, device, precision, norm=norm)
    qdata = DecodedImages(queries.permute(0, 2, 3, 1).numpy(), data.images, [])
    qf = extract_features(backbone, qdata, image_size, device, precision, norm=norm)
    sim = F.normalize(qf, dim=1) @ feats.t()
    return sim.topk(min(k, feats.shape[0]), dim=1)


def neighbors_grid(
    query_paths: list[Path], queries: torch.Tensor, data: DecodedImages, sims: torch.Tensor, idx: torch.Tensor,
    out: str | Path,
) -> Path:
    """A PNG: one row per query, the query first, then its neighbours with similarity (and class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, k = idx.shape
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.8 * rows), squeeze=False)
    for r in range(rows):
        ax = axes[r][0]
        ax.imshow(queries[r].permute(1, 2, 0).numpy())
        ax.set_title(f"query\n{query_paths[r].name[:14]}", fontsize=7, color="C3")
        for c in range(k):
            j = int(idx[r, c])
            ax = axes[r][c + 1]
            ax.imshow(np.asarray(data.array[j]))
            label = ""
            if data.images.labels is not None and data.images.classes:
                label = f"\n{data.images.classes[data.images.labels[j]][:12]}"
            ax.set_title(f"{float(sims[r, c]):.3f}{label}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
