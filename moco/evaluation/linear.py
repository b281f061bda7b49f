"""Linear classification protocol: a linear classifier on the frozen backbone's pooled features.

The paper's protocol: the backbone runs in eval mode (BN statistics frozen too), SGD with momentum 0.9,
weight decay 0, batch 256, 100 epochs, lr x0.1 at 60 and 80 (or cosine); top-1 on a center crop. The
paper's lr 30 suits ResNet-50 features on ImageNet only: the scale of the features decides the best lr.
So by default (``feature_norm="bn"``) a parameter-free BatchNorm (affine=False) standardises the frozen
features before the linear layer, as MAE's linear probing does; it is linear too, and folds into the
classifier's weights. Then one lr (``LINEAR_LR``) serves every backbone. ``feature_norm="none"`` with
``lr=30`` is the paper's protocol as it was.

With augmentation off (the default) the features are computed once and cached, which makes the 100
epochs take seconds; with ``augment=True`` every epoch re-encodes augmented images
(flip + 4-px pad-crop for images of 64 px or less, random resized crop + flip above).
A sanity check proves afterwards that the backbone's weights are bit-identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moco.core.errors import ConfigError
from moco.core.precision import autocast
from moco.data.augment import crop_flip
from moco.data.cache import DecodedImages
from moco.data.folder import DataError
from moco.evaluation.knn import extract_features
from moco.schedules import scheduled_lr

LINEAR_LR = {"bn": 0.1, "none": 30.0}
"""The default lr for each ``feature_norm``: with standardised features (bn) measured on the cpu preset's backbone
(benchmarks/README.md, "Linear protocol"); without (none), the paper's 30."""


@dataclass
class LinearConfig:
    epochs: int = 100
    lr: float = LINEAR_LR["bn"]
    feature_norm: str = "bn"  # bn: BatchNorm1d(affine=False) on the features before the linear layer; none
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    schedule: str = "step"  # step (x0.1 at milestones) or cosine
    milestones: list[int] = field(default_factory=lambda: [60, 80])
    augment: bool = False
    cached_views: int = 0  # with augment: encode this many augmented passes once and cycle them; 0 = every epoch
    seed: int = 0

    def lr_at(self, epoch: int) -> float:
        return scheduled_lr(self.lr, epoch, self.epochs, self.schedule, self.milestones)

    @classmethod
    def checked(cls, epochs: int, lr: float | None, feature_norm: str, weight_decay: float, batch_size: int,
                schedule: str, augment: bool, cached_views: int) -> LinearConfig:
        """The protocol ``moco linear``'s options describe (``lr`` None: :data:`LINEAR_LR`'s for the feature
        norm; the step schedule's milestones at 60% and 80% of the epochs), refused in one line when out of
        range."""
        lr = LINEAR_LR[feature_norm] if lr is None else lr
        if epochs < 1 or lr <= 0 or batch_size < 1 or weight_decay < 0 or cached_views < 0:
            raise ConfigError("--epochs and --batch-size must be >= 1, --lr > 0, --weight-decay >= 0 and "
                              "--cached-views >= 0")
        if cached_views and not augment:
            raise ConfigError("--cached-views needs --augment (without it the center-crop features are cached)")
        return cls(epochs=epochs, lr=lr, feature_norm=feature_norm, weight_decay=weight_decay,
                   batch_size=batch_size, schedule=schedule, milestones=[round(epochs * 0.6), round(epochs * 0.8)],
                   augment=augment, cached_views=cached_views)


class LinearClassifier(nn.Sequential):
    """``norm`` (a BatchNorm1d without affine parameters, or Identity) then ``fc``, the linear layer."""

    def __init__(self, dim: int, num_classes: int, feature_norm: str = "bn") -> None:
        if feature_norm not in LINEAR_LR:
            raise ValueError(f"feature_norm must be one of {', '.join(LINEAR_LR)}, got {feature_norm!r}")
        norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if feature_norm == "bn" else nn.Identity()
        super().__init__()
        self.norm, self.fc = norm, nn.Linear(dim, num_classes)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one linear map this is in eval mode, the BatchNorm folded in: the logits of
        raw features ``f`` are ``f @ weight.T + bias``."""
        w, b = self.fc.weight.detach().cpu(), self.fc.bias.detach().cpu()
        if isinstance(self.norm, nn.BatchNorm1d):
            scale = (self.norm.running_var.cpu() + self.norm.eps).rsqrt()
            w, b = w * scale, b - (w * scale) @ self.norm.running_mean.cpu()
        return w.clone(), b.clone()


def train_augment(images: torch.Tensor, size: int, generator: torch.Generator, norm: str = "imagenet") -> torch.Tensor:
    """Linear-protocol training augmentation of a uint8 batch -> normalised float (B, 3, size, size):
    :func:`moco.data.augment.crop_flip`, the fine-tuning one too."""
    return crop_flip(images, size, generator, norm)


def augmented_features(
    backbone: nn.Module, train: DecodedImages, image_size: int, device: torch.device, precision: str,
    generator: torch.Generator, batch_size: int = 512, norm: str = "imagenet",
) -> torch.Tensor:
    """Pooled features (float32, CPU, in dataset order) of one augmented pass over ``train``."""
    n = len(train.array)
    return torch.cat([
        _augmented_batch_features(backbone, train, torch.arange(i, min(i + batch_size, n)), image_size, device,
                                  precision, generator, norm).cpu()
        for i in range(0, n, batch_size)
    ])


def _augmented_batch_features(
    backbone: nn.Module, train: DecodedImages, idx: torch.Tensor, image_size: int, device: torch.device,
    precision: str, generator: torch.Generator, norm: str = "imagenet",
) -> torch.Tensor:
    x = train_augment(train.batch(idx).to(device), image_size, generator, norm)
    with torch.no_grad(), autocast(device, precision):
        return backbone.forward_features(x.contiguous(memory_format=torch.channels_last)).float()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = top == labels.view(-1, 1)
    return 100.0 * correct[:, 0].float().mean().item(), 100.0 * correct.any(1).float().mean().item()


def _train_features(backbone: nn.Module, train: DecodedImages, image_size: int, device: torch.device,
                    precision: str, lc: LinearConfig, g: torch.Generator, norm: str,
                    progress: bool) -> list[torch.Tensor]:
    """The training features cached up front: one pass over centre crops, or ``lc.cached_views`` augmented
    passes (none: each batch's views are encoded as it comes)."""
    if not lc.augment:
        return [extract_features(backbone, train, image_size, device, precision, normalize=False,
                                 progress=progress, norm=norm)]
    views = range(lc.cached_views)
    if progress and lc.cached_views:
        from tqdm import tqdm

        views = tqdm(views, desc="augmented views", unit="view", leave=False, disable=None)
    return [augmented_features(backbone, train, image_size, device, precision, g, norm=norm) for _ in views]


def fit_classifier(clf: LinearClassifier, features: Callable[[int, torch.Tensor], torch.Tensor], y_train: torch.Tensor,
         lc: LinearConfig, g: torch.Generator, device: torch.device, progress: bool) -> None:
    """SGD on the classifier for ``lc.epochs`` epochs of shuffled batches (``features(epoch, indices)``), the lr
    following ``lc``'s schedule."""
    opt = torch.optim.SGD(clf.parameters(), lr=lc.lr, momentum=lc.momentum, weight_decay=lc.weight_decay)
    n = len(y_train)
    epochs = range(lc.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="linear", unit="epoch", leave=False, disable=None)
    for epoch in epochs:
        for group in opt.param_groups:
            group["lr"] = lc.lr_at(epoch)
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, lc.batch_size):
            idx = perm[i : i + lc.batch_size]
            loss = F.cross_entropy(clf(features(epoch, idx)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _classify(f_train: list[torch.Tensor], y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor,
              num_classes: int, lc: LinearConfig, g: torch.Generator, device: torch.device, progress: bool,
              encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
              ) -> tuple[LinearClassifier, tuple[float, float]]:
    """The classifier trained on the cached training features ``f_train`` (one tensor per cached view; none:
    ``encode(indices)`` encodes each batch) and its (top-1, top-5) on ``f_test``."""
    torch.manual_seed(lc.seed)
    clf = LinearClassifier(f_test.shape[1], num_classes, lc.feature_norm).to(device)
    clf.fc.weight.data.normal_(mean=0.0, std=0.01)  # the authors' initialisation
    clf.fc.bias.data.zero_()

    def features(epoch: int, idx: torch.Tensor) -> torch.Tensor:
        if f_train:
            return f_train[epoch % len(f_train)][idx].to(device)
        assert encode is not None
        return encode(idx)

    fit_classifier(clf, features, y_train, lc, g, device, progress)
    clf.eval()  # the feature BatchNorm uses its running statistics from now on
    with torch.no_grad():
        return clf, _accuracy(clf(f_test.to(device)).cpu(), y_test)


def probe_features(f_train: torch.Tensor, y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor,
                   num_classes: int, lc: LinearConfig | None = None, device: torch.device | None = None,
                   progress: bool = False) -> tuple[dict[str, float], LinearClassifier]:
    """The linear protocol on features already extracted (centre crops, :func:`extract_features` with
    ``normalize=False``): what :func:`linear_eval` does without augmentation, for callers that probe several
    label subsets of one feature pass. Returns (top-1 and top-5 (%) and the run's settings, classifier)."""
    lc = lc or LinearConfig()
    if lc.augment:
        raise ConfigError("probe_features trains on cached centre-crop features; augmentation needs linear_eval")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(lc.seed)
    clf, (top1, top5) = _classify([f_train], y_train, f_test, y_test, num_classes, lc, g,
                                  device or torch.device("cpu"), progress)
    return {"top1": top1, "top5": top5, "n_train": len(y_train), "n_test": len(y_test), "epochs": lc.epochs,
            "lr": lc.lr, "feature_norm": lc.feature_norm, "seconds": time.perf_counter() - t0}, clf.cpu()


def linear_eval(
    backbone: nn.Module, train: DecodedImages, test: DecodedImages, image_size: int, device: torch.device,
    lc: LinearConfig, precision: str = "bf16", progress: bool = True, norm: str = "imagenet",
) -> tuple[dict[str, float], LinearClassifier]:
    """Train and evaluate the linear classifier on inputs normalised by ``NORMALIZATIONS[norm]`` (the
    pretraining's); returns (results, classifier)."""
    if train.images.labels is None or test.images.labels is None:
        raise DataError("the linear protocol needs labelled ImageFolders (class sub-folders) for train and test")
    if train.images.classes != test.images.classes:
        raise DataError("train and test folders have different class sub-folders")
    num_classes = len(train.images.classes or [])
    before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    y_train = torch.tensor(train.images.labels)
    y_test = torch.tensor(test.images.labels)
    f_test = extract_features(backbone, test, image_size, device, precision, normalize=False, progress=progress,
                              norm=norm)
    g = torch.Generator().manual_seed(lc.seed)
    f_train = _train_features(backbone, train, image_size, device, precision, lc, g, norm, progress)
    clf, (top1, top5) = _classify(f_train, y_train, f_test, y_test, num_classes, lc, g, device, progress,
                                  lambda idx: _augmented_batch_features(backbone, train, idx, image_size, device,
                                                                        precision, g, norm))
    n, dim = len(y_train), f_test.shape[1]
    after = backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if changed:  # the authors' sanity check: a frozen backbone must not move
        raise RuntimeError(f"the backbone changed during linear evaluation ({changed[0]})")
    return {
        "top1": top1, "top5": top5, "n_train": n, "n_test": len(y_test), "feature_dim": dim,
        "epochs": lc.epochs, "lr": lc.lr, "feature_norm": lc.feature_norm, "augment": lc.augment,
        "cached_views": lc.cached_views if lc.augment else 0, "seconds": time.perf_counter() - t0,
    }, clf.cpu()
