"""A plain MoCo loop in the style of the authors' CIFAR-10 demo: the baseline for speed claims.

Same model and recipe as ours, written the way the demo is: per-image PIL augmentation in DataLoader
workers, fp32, NCHW tensors, SplitBatchNorm by reshaping, a Python loop for the momentum update, and a
queue written with slicing (K must be a multiple of the batch). It is our own code, kept here so every
speed ratio is measured in the same run on the same machine.

    python benchmarks/reference_loop.py [--preset cifar10-cpu] [--steps 10] [--device cuda --workers 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moco.config import resolve
from moco.data.augment import per_image_transform
from moco.data.folder import find_split, load_rgb, scan_images
from moco.methods import build_head
from moco.models.resnet import build_resnet, feature_dim

ROOT = Path(__file__).resolve().parent


class DemoSplitBatchNorm(nn.BatchNorm2d):
    """The demo's SplitBatchNorm: groups by reshaping (N, C, H, W) -> (N/G, C*G, H, W)."""

    def __init__(self, num_features: int, num_splits: int, **kw) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        n, c, h, w = input.shape
        if self.training or not self.track_running_stats:
            rm = self.running_mean.repeat(self.num_splits)
            rv = self.running_var.repeat(self.num_splits)
            out = F.batch_norm(input.view(-1, c * self.num_splits, h, w), rm, rv,
                               self.weight.repeat(self.num_splits), self.bias.repeat(self.num_splits),
                               True, self.momentum, self.eps).view(n, c, h, w)
            self.running_mean.data.copy_(rm.view(self.num_splits, c).mean(dim=0))
            self.running_var.data.copy_(rv.view(self.num_splits, c).mean(dim=0))
            return out
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False,
                            self.momentum, self.eps)


def demo_encoder(cfg) -> nn.Module:
    m = cfg.model
    enc = build_resnet(m.arch, m.width, m.cifar_stem, num_classes=m.dim)
    for mod in list(enc.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.BatchNorm2d) and m.bn_splits > 1:
                setattr(mod, name, DemoSplitBatchNorm(child.num_features, m.bn_splits))
    enc.fc = build_head(feature_dim(enc), m.dim, m.head == "mlp")
    return enc


class ModelMoCo(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        me = cfg.method
        self.K, self.m, self.T = me.K, me.m, me.T
        self.encoder_q, self.encoder_k = demo_encoder(cfg), demo_encoder(cfg)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(cfg.model.dim, self.K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0
        self.queue[:, ptr : ptr + batch_size] = keys.t()
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self._momentum_update_key_encoder()
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            idx_shuffle = torch.randperm(im_k.shape[0], device=im_k.device)
            k = F.normalize(self.encoder_k(im_k[idx_shuffle]), dim=1)
            k = k[torch.argsort(idx_shuffle)]
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
        self._dequeue_and_enqueue(k)
        return loss


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, images, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = load_rgb(self.images.root / self.images.paths[i])
        return self.transform(img), self.transform(img)


def reference_images_per_sec(preset: str, overrides: list[str], data: str, steps: int, warmup: int = 2,
                             workers: int = 2, device: str = "cpu", synthetic: bool = False) -> float:
    """Images/s of the plain loop (data loading included), after ``warmup`` steps.

    ``data`` is an image folder (or a folder with a ``train`` split). ``synthetic`` times the model
    step alone on one random batch already on ``device`` (no loading, no augmentation).
    """
    cfg = resolve(preset, overrides=overrides)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = ModelMoCo(cfg).train().to(dev)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    b, size = cfg.optim.batch_size, cfg.data.view_size
    if synthetic:
        x = torch.randn(2, b, 3, size, size, device=dev)
        loader = ((x[0], x[1]) for _ in range(steps + warmup))
    else:
        root = Path(data)
        train_dir = find_split(root)[0] if (root / "train").is_dir() else root
        images = scan_images(train_dir, max_images=b * (steps + warmup + 1))
        tf = per_image_transform(cfg.data.augmentation, size, cfg.data.crop_min_scale, cfg.data.normalize)
        loader = torch.utils.data.DataLoader(PairDataset(images, tf), batch_size=b, shuffle=True,
                                             num_workers=workers, drop_last=True, pin_memory=dev.type == "cuda")
    t = None
    for i, (im_1, im_2) in enumerate(loader):
        if i == warmup:
            sync_device(dev)
            t = time.perf_counter()
        loss = model(im_1.to(dev, non_blocking=True), im_2.to(dev, non_blocking=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i + 1 == warmup + steps:
            break
    assert t is not None
    sync_device(dev)
    return b * steps / (time.perf_counter() - t)


def sync_device(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reference_train(preset: str, overrides: list[str], data: str, seconds: float, workers: int = 2,
                    log=print) -> tuple[nn.Module, dict]:
    """Train the plain loop for ``seconds`` of wall time (data loading included) and return its query encoder.

    The number of epochs is planned from the throughput of the first steps so that the cosine schedule
    (stepped per epoch, as in the demo) ends near the deadline; training stops at the deadline regardless.
    """
    import math

    t_start = time.perf_counter()
    cfg = resolve(preset, overrides=overrides)
    torch.manual_seed(cfg.train.seed)
    model = ModelMoCo(cfg).train()
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    train_dir, _ = find_split(Path(data))
    images = scan_images(train_dir)
    tf = per_image_transform(cfg.data.augmentation, cfg.data.view_size, cfg.data.crop_min_scale,
                            cfg.data.normalize)
    loader = torch.utils.data.DataLoader(PairDataset(images, tf), batch_size=cfg.optim.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    deadline = t_start + seconds
    epochs, epoch, steps, seen = None, 0, 0, 0
    while time.perf_counter() < deadline:
        lr = cfg.optim.lr if epochs is None else cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for g in opt.param_groups:
            g["lr"] = lr
        for im_1, im_2 in loader:
            loss = model(im_1, im_2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            seen += im_1.shape[0]
            if epochs is None and steps == 30:  # plan the schedule from the measured rate
                rate = seen / (time.perf_counter() - t_start)
                epochs = max(1, round(rate * seconds / len(images)))
                log(f"reference loop: {rate:.0f} images/s -> cosine schedule over {epochs} epochs")
            if time.perf_counter() >= deadline:
                break
        epoch += 1
        log(f"reference loop: epoch {epoch} done, {time.perf_counter() - t_start:.0f}s, loss {loss.item():.3f}")
    wall = time.perf_counter() - t_start
    return model.encoder_q, {"epochs_planned": epochs, "epochs_run": seen / len(images), "steps": steps,
                             "images_per_sec": seen / wall, "train_time": wall}


def reference_epochs(cfg, data: str, epochs: int, evaluate, workers: int = 2, log=print) -> list[dict]:
    """Train the plain loop as the demo does, epoch by epoch: lr = lr * 0.5 * (1 + cos(pi * epoch / total)) with
    the epoch counted from 1 and ``cfg.optim.epochs`` the total, for the first ``epochs`` epochs of it. After
    each, ``evaluate(encoder_q)`` returns a dict that joins the epoch's record (loss, seconds)."""
    import math

    torch.manual_seed(cfg.train.seed)
    model = ModelMoCo(cfg).train()
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    images = scan_images(find_split(Path(data))[0])
    tf = per_image_transform(cfg.data.augmentation, cfg.data.view_size, cfg.data.crop_min_scale, cfg.data.normalize)
    loader = torch.utils.data.DataLoader(PairDataset(images, tf), batch_size=cfg.optim.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    records = []
    for epoch in range(1, epochs + 1):
        lr = cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.optim.epochs))
        for g in opt.param_groups:
            g["lr"] = lr
        t0, total, n = time.perf_counter(), 0.0, 0
        for im_1, im_2 in loader:
            loss = model(im_1, im_2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item(), n + 1
        rec = {"epoch": epoch, "lr": lr, "loss": total / n, "epoch_time": time.perf_counter() - t0}
        rec.update(evaluate(model.encoder_q))
        model.train()
        log(f"reference loop: {rec}")
        records.append(rec)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar10-cpu")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "datasets" / "cifar10"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--synthetic", action="store_true", help="model step only, on one random batch")
    a = ap.parse_args()
    ips = reference_images_per_sec(a.preset, a.set, a.data, a.steps, workers=a.workers, device=a.device,
                                   synthetic=a.synthetic)
    print(f"reference loop, {a.preset} {' '.join(a.set)}: {ips:.1f} images/s")


if __name__ == "__main__":
    main()
