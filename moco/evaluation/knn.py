"""Weighted kNN evaluation (InstDisc style), as a monitor and as ``moco knn``.

The labelled train set's L2-normalised features form the memory: the backbone's
(by default) or the projection head's (``features="head"``, what the authors'
CIFAR-10 demo monitors). Each test image takes its ``k`` nearest neighbours by
cosine similarity, each voting for its class with weight ``exp(sim / t)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moco.core.precision import autocast
from moco.data.augment import eval_batch
from moco.data.cache import DecodedImages
from moco.data.folder import DataError
from moco.methods.encoder import FEATURES
from moco.schema import Config


def iterate_batches(data: DecodedImages, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(data.array), batch_size):
        yield torch.from_numpy(np.array(data.array[i : i + batch_size])).permute(0, 3, 1, 2)


@torch.no_grad()
def extract_feature_sets(
    model: nn.Module, data: DecodedImages, image_size: int, device: torch.device, features: tuple[str, ...],
    precision: str = "bf16", batch_size: int = 512, channels_last: bool = True, progress: bool = False,
    normalize: bool = True, norm: str = "imagenet",
) -> dict[str, torch.Tensor]:
    """For each name in ``features`` (``FEATURES``), the features of every image (L2-normalised unless
    ``normalize=False``), float32 on the CPU, from one forward pass per batch in eval mode. Inputs are
    normalised by ``NORMALIZATIONS[norm]``. ``head`` needs the model's projection head as ``fc``."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; choose from {', '.join(FEATURES)}")
    head = getattr(model, "fc", None)
    if "head" in features and (head is None or isinstance(head, nn.Identity)):
        raise DataError("head features need the projection head, and this model has none (fc is Identity)")
    was_training = model.training
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {f: [] for f in features}
    batches = iterate_batches(data, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=(len(data.array) + batch_size - 1) // batch_size, desc="features",
                       leave=False, unit="batch")
    try:
        for x in batches:
            x = eval_batch(x.to(device, non_blocking=True), image_size, norm)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                out = {"backbone": model.forward_features(x)}
                if "head" in features:
                    out["head"] = model.fc(out["backbone"])
            for name in features:
                f = out[name].float()
                feats[name].append((F.normalize(f, dim=1) if normalize else f).cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in feats.items()}


def extract_features(
    model: nn.Module, data: DecodedImages, image_size: int, device: torch.device,
    precision: str = "bf16", batch_size: int = 512, channels_last: bool = True, progress: bool = False,
    normalize: bool = True, norm: str = "imagenet", features: str = "backbone",
) -> torch.Tensor:
    """``model.forward_features`` (or the head's output, ``features="head"``), L2-normalised unless
    ``normalize=False``, of every image, in eval mode, as float32 on the CPU."""
    return extract_feature_sets(model, data, image_size, device, (features,), precision, batch_size, channels_last,
                                progress, normalize, norm)[features]


def knn_predict(
    test_feats: torch.Tensor, train_feats: torch.Tensor, train_labels: torch.Tensor,
    num_classes: int, k: int = 200, t: float = 0.1, chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (N_test, C) from the weighted vote of the ``k`` nearest train features."""
    k = min(k, train_feats.shape[0])
    scores = []
    for i in range(0, test_feats.shape[0], chunk):
        sim = test_feats[i : i + chunk] @ train_feats.t()
        w, idx = sim.topk(k, dim=1)
        w = (w / t).exp()
        votes = torch.zeros(w.shape[0], num_classes, dtype=w.dtype)
        scores.append(votes.scatter_add_(1, train_labels[idx], w))
    return torch.cat(scores)


def _unit(feats: torch.Tensor) -> torch.Tensor:
    """``feats`` with unit rows: as they are when they already are (so results do not move by a rounding)."""
    norms = feats.float().norm(dim=1)
    if feats.shape[0] == 0 or (norms - 1).abs().max() < 1e-3:
        return feats
    return F.normalize(feats, dim=1)


def knn_accuracy(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor,
    num_classes: int, k: int = 200, t: float = 0.1,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of the weighted kNN classifier (InstDisc's: each of the ``k`` nearest train
    features votes for its label with weight exp(cosine similarity / ``t``)).

    The similarity is a dot product, so the features must be L2-normalised; features that are not (the raw
    output of ``moco.load_backbone``, say) are normalised here first. ``train_labels`` and ``test_labels`` are
    class indices in [0, ``num_classes``)."""
    train_feats, test_feats = _unit(train_feats), _unit(test_feats)
    scores = knn_predict(test_feats, train_feats, train_labels, num_classes, k, t)
    top = scores.topk(min(5, num_classes), dim=1).indices
    correct = top == test_labels.view(-1, 1)
    return {
        "top1": 100.0 * correct[:, 0].float().mean().item(),
        "top5": 100.0 * correct.any(1).float().mean().item(),
    }


def evaluate_knn(
    model: nn.Module, train: DecodedImages, test: DecodedImages, image_size: int, device: torch.device,
    precision: str = "bf16", k: int = 200, t: float = 0.1, channels_last: bool = True, progress: bool = False,
    norm: str = "imagenet", features: str | tuple[str, ...] = "backbone",
) -> dict[str, Any]:
    """Full kNN evaluation of ``model``; returns top1/top5/k/t/n_train/n_test and ``features``, the source
    scored (``FEATURES``). Given several sources (one forward pass serves all), the first is reported as
    top1/top5 and each other one as ``{name}_top1`` / ``{name}_top5``."""
    if train.images.labels is None or test.images.labels is None:
        raise DataError("kNN evaluation needs labelled ImageFolders (class sub-folders) for train and test")
    if train.images.classes != test.images.classes:
        raise DataError(
            f"train and test folders have different classes: {train.images.classes} vs {test.images.classes}"
        )
    names = (features,) if isinstance(features, str) else tuple(features)
    ftr = extract_feature_sets(model, train, image_size, device, names, precision, channels_last=channels_last,
                               progress=progress, norm=norm)
    fte = extract_feature_sets(model, test, image_size, device, names, precision, channels_last=channels_last,
                               progress=progress, norm=norm)
    res: dict[str, Any] = {}
    for i, name in enumerate(names):
        r = knn_accuracy(ftr[name], torch.tensor(train.images.labels), fte[name], torch.tensor(test.images.labels),
                         len(train.images.classes or []), k, t)
        res.update(r if i == 0 else {f"{name}_{key}": v for key, v in r.items()})
    return {**res, "features": names[0], "k": k, "t": t, "n_train": len(train.array), "n_test": len(test.array)}


def time_per_image(run_features: Callable[[DecodedImages], object], test: DecodedImages) -> float:
    """Seconds per image of ``run_features``, timed on 1,024 of ``test``'s images after a warming batch of 256."""
    def timed(n: int) -> float:
        sample = DecodedImages(test.array[:n], test.images, [])
        t0 = time.perf_counter()
        run_features(sample)
        return (time.perf_counter() - t0) / len(sample.array)

    timed(256)
    return timed(1024)


@dataclass
class KnnMonitor:
    """Pretraining's end-of-epoch evaluation: weighted kNN of the features ``train.knn_features`` names, the
    labelled ``memory`` classifying ``test`` (the model's trained network as ``encoder_q``)."""

    memory: DecodedImages
    test: DecodedImages
    cfg: Config
    device: torch.device

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        c = self.cfg
        t = c.train
        res = evaluate_knn(model.encoder_q, self.memory, self.test, c.data.image_size, self.device, t.precision,
                           t.knn_k, t.knn_t, t.channels_last, norm=c.data.normalize, features=tuple(t.knn_features))
        rec = {"knn_top1": res["top1"], "knn_top5": res["top5"], "knn_features": res["features"]}
        for name in t.knn_features[1:]:
            rec.update({f"knn_{name}_top1": res[f"{name}_top1"], f"knn_{name}_top5": res[f"{name}_top5"]})
        return rec

    def describe(self, rec: dict[str, Any]) -> str:
        extra = "".join(f", {rec[f'knn_{n}_top1']:.2f}% ({n})" for n in self.cfg.train.knn_features[1:])
        return f"  knn top-1 {rec['knn_top1']:.2f}% ({rec['knn_features']}){extra}"

    def estimate_seconds(self, model: nn.Module) -> float:
        c = self.cfg

        def features(sample: DecodedImages) -> object:
            return extract_feature_sets(model.encoder_q, sample, c.data.image_size, self.device,
                                        tuple(c.train.knn_features), c.train.precision,
                                        channels_last=c.train.channels_last, norm=c.data.normalize)

        n = len(self.memory.array) + len(self.test.array)
        return time_per_image(features, self.test) * n * 1.05 + 0.1
