"""A 2-D map of a backbone's features (``moco map``): one point per image, coloured by class, with thumbnails.

The layout is openTSNE's t-SNE (FFT-accelerated, cosine distances on the L2-normalised features), a maintained
implementation installed with the optional extra ``momentum-contrast[map]``. Thumbnails are the images nearest
the centres of a grid laid over the map, so they show what each region holds; images of one class that sit
together mean the backbone groups them without having seen a label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moco.core.errors import ConfigError
from moco.data.cache import DecodedImages

EXTRA = "moco map needs the optional extra: pip install 'momentum-contrast[map]' (openTSNE)"


@dataclass(frozen=True)
class FeatureMap:
    """The 2-D coordinates (N, 2) of the images mapped, their indices in the data, and the thumbnails' indices
    (into ``coords``)."""

    coords: np.ndarray
    index: np.ndarray
    thumbnails: np.ndarray


def sample(n: int, most: int, seed: int = 0) -> np.ndarray:
    """At most ``most`` of ``n`` indices, drawn without replacement by ``seed``, in order."""
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def embed_2d(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0, threads: int = 0) -> np.ndarray:
    """t-SNE of ``features`` (N, D) into (N, 2), cosine distances, openTSNE's defaults otherwise."""
    try:
        from openTSNE import TSNE
    except ImportError:
        raise ConfigError(EXTRA) from None
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy().astype(np.float64)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))  # t-SNE needs 3 x perplexity neighbours
    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", random_state=seed,
                n_jobs=threads or torch.get_num_threads(), verbose=False)
    logging.getLogger("openTSNE").setLevel(logging.WARNING)  # not its INFO line on the method it picked
    return np.asarray(tsne.fit(x))


def pick_thumbnails(coords: np.ndarray, grid: int) -> np.ndarray:
    """Indices of the points nearest the centres of a ``grid`` x ``grid`` lattice over the map's extent, one per
    cell that holds a point, none twice."""
    lo, hi = coords.min(0), coords.max(0)
    span = np.maximum(hi - lo, 1e-9)
    cell = np.floor((coords - lo) / span * grid).clip(0, grid - 1).astype(int)
    picked = []
    for cx in range(grid):
        for cy in range(grid):
            inside = np.flatnonzero((cell[:, 0] == cx) & (cell[:, 1] == cy))
            if len(inside):
                centre = lo + (np.array([cx, cy]) + 0.5) / grid * span
                picked.append(inside[np.argmin(((coords[inside] - centre) ** 2).sum(1))])
    return np.array(sorted(set(picked)), dtype=int)


def draw_map(fmap: FeatureMap, data: DecodedImages, out: str | Path, title: str, thumb_zoom: float = 1.0) -> Path:
    """The map as a PNG: points coloured by class (a legend of the class names) or grey without classes, and the
    thumbnails framed in their class's colour at their points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    labels = data.images.labels
    classes = data.images.classes or []
    fig, ax = plt.subplots(figsize=(12, 10), dpi=120)
    xy = fmap.coords
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colour = (lambda c: cmap(c % cmap.N)) if labels is not None else (lambda c: (0.4, 0.4, 0.4, 1.0))
    if labels is not None:
        y = np.asarray(labels)[fmap.index]
        for c in np.unique(y):
            sel = y == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=colour(int(c)), alpha=0.75, linewidths=0,
                       label=classes[c] if c < len(classes) else str(c))
        ax.legend(markerscale=4, fontsize=9, loc="upper right", framealpha=0.85, ncol=1 + len(classes) // 21)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=7, color=colour(0), alpha=0.75, linewidths=0)
    side = data.array.shape[1]
    zoom = thumb_zoom * 40.0 / side  # about 40 screen pixels a thumbnail whatever the decoded side
    for i in fmap.thumbnails:
        img = data.array[fmap.index[i]]
        edge = colour(int(labels[fmap.index[i]])) if labels is not None else "white"
        box = AnnotationBbox(OffsetImage(img, zoom=zoom), (xy[i, 0], xy[i, 1]), frameon=True, pad=0.15,
                             bboxprops={"edgecolor": edge, "linewidth": 1.5})
        ax.add_artist(box)
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def feature_map(features: torch.Tensor, most: int = 5000, grid: int = 6, seed: int = 0) -> FeatureMap:
    """Map at most ``most`` of the images (a seeded draw) and pick thumbnails on a ``grid`` x ``grid`` lattice."""
    index = sample(features.shape[0], most, seed)
    if len(index) < 5:
        raise ConfigError(f"a map needs at least 5 images, got {len(index)}")
    coords = embed_2d(features[torch.from_numpy(index)], seed)
    return FeatureMap(coords, index, pick_thumbnails(coords, grid) if grid else np.array([], dtype=int))
