"""The pretraining loop: one plain loop with small helpers for precision, resume and logging.

``pretrain(cfg, data, out)`` trains MoCo on an image folder and writes the run
directory (config.yaml, metrics.jsonl, tb/, checkpoints, curves.png). Stopping
is safe at any time: SIGINT/SIGTERM finish the current step and write
``checkpoint_last.pt``; ``resume="auto"`` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moco.config import Config, ConfigError, dump_yaml, from_dict, validate
from moco.data.cache import DecodedImages, decode_images
from moco.data.encoded import EncodedFiles
from moco.data.folder import DataError, ImageList, find_split, scan_images
from moco.data.pipelines import TwoViews, cached_batches, device_batches, per_image_batches
from moco.evaluation.knn import autocast, evaluate_knn
from moco.methods import build_moco
from moco.training.checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_save,
    latest_checkpoint,
    load_checkpoint,
    load_state_strict,
    require_moco_checkpoint,
)
from moco.training.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    barrier,
    check_same_config,
    cleanup,
    env_world_size,
    init_distributed,
)
from moco.training.logging import MetricsLogger, plot_curves, read_metrics
from moco.training.optim import base_lr, build_optimizer, momentum_at
from moco.training.schedule import scheduled_lr

log = logging.getLogger("moco")
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint_last.pt", "curves.png")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here")
    return dev


def lr_at(cfg: Config, epoch: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then cosine or step decay."""
    o = cfg.optim
    return scheduled_lr(base_lr(cfg), epoch, o.epochs, o.schedule, o.milestones, o.warmup_epochs)


def cache_side(cfg: Config) -> int:
    d = cfg.data
    if d.cache_size:
        return d.cache_size
    return d.image_size if d.image_size <= 64 else int(round(d.image_size * 1.15))


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after every step."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing this step and saving a checkpoint", signal.Signals(signum).name)

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def build_training(
    cfg: Config, device: torch.device, n_images: int = 0,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The model on ``device`` (channels_last if configured), its optimiser and the fp16 grad scaler.
    ``n_images`` sizes the memory bank, when ``method.dictionary`` is one."""
    model = build_moco(cfg, n_images).to(device, memory_format=memory_format(cfg))
    optimizer = build_optimizer(cfg, model)
    if cfg.train.compile:  # in place: parameter names (checkpoints, exports) stay the same
        for name in ("encoder_q", "encoder_k", "predictor"):
            if hasattr(model, name):
                getattr(model, name).compile()
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16")
    return model, optimizer, scaler


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, im_q: torch.Tensor,
    im_k: torch.Tensor, gen: torch.Generator, precision: str, device: torch.device, index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: forward under autocast, backward, SGD. Returns detached (loss, logits); no host sync."""
    with autocast(device, precision):
        loss, logits = model(im_q, im_k, generator=gen, index=index)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def prepare_out(out: Path, resume: str | None, overwrite: bool) -> Path | None:
    """Create ``out``; refuse to mix runs. Returns the checkpoint to resume from, if any."""
    out.mkdir(parents=True, exist_ok=True)
    existing = [f for f in RUN_FILES if (out / f).exists()] + [p.name for p in out.glob("checkpoint_*.pt")]
    if resume:
        ckpt = latest_checkpoint(out) if resume == "auto" else Path(resume)
        if resume != "auto" and not ckpt.is_file():
            raise CheckpointError(f"checkpoint not found: {ckpt}")
        if ckpt is None:
            log.info("no checkpoint in %s yet: starting a new run", out)
        return ckpt
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({existing[0]}); pass --resume auto to continue it or --overwrite to replace it"
        )
    if overwrite:
        for name in existing:
            (out / name).unlink(missing_ok=True)
    return None


def check_compatible(saved: Config, cfg: Config, path: Path) -> None:
    """Structural settings must match the checkpoint's; schedule, BN splits (e.g. for another process count)
    and logging may change on resume."""
    structural = (("model", ("arch", "width", "cifar_stem", "head", "dim", "mlp_dim", "patch_size")),
                  ("method", ("dictionary", "K")))
    for section, keys in structural:
        a, b = getattr(saved, section), getattr(cfg, section)
        for k in keys:
            if getattr(a, k) != getattr(b, k):
                raise CheckpointError(
                    f"{path} was made with {section}.{k}={getattr(a, k)!r}, this run asks for {getattr(b, k)!r}"
                )


def pretrain(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    resume: str | None = None,
    overwrite: bool = False,
    knn_train: str | Path | None = None,
    knn_test: str | Path | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    knn: bool = True,
) -> dict[str, Any]:
    """Pretrain MoCo on the images under ``data``; returns the final epoch's metrics.

    Under ``torchrun`` every process runs this function: each takes its slice of every global batch
    (``optim.batch_size`` is the global batch), shuffle BN and the queue span all processes, and
    rank 0 alone writes files and runs the kNN monitor. ``knn=False`` turns the monitor off.
    ``max_steps`` stops after that many global steps (with a checkpoint), as an interruption would.
    """
    out = Path(out)
    validate(cfg)
    world = env_world_size()
    if cfg.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size ({cfg.optim.batch_size}) is the global batch and must divide by the "
                          f"number of processes ({world})")
    dinfo, dist_device = init_distributed(cfg.train.device)
    try:
        return _pretrain(cfg, Path(data), out, resume, overwrite, knn_train, knn_test, progress and dinfo.is_main,
                         max_steps, knn, dinfo, dist_device)
    finally:
        cleanup()


def _pretrain(
    cfg: Config, data: Path, out: Path, resume: str | None, overwrite: bool, knn_train: str | Path | None,
    knn_test: str | Path | None, progress: bool, max_steps: int | None, knn: bool, dinfo: DistInfo,
    dist_device: torch.device | None,
) -> dict[str, Any]:
    main = dinfo.is_main
    device = dist_device or pick_device(cfg.train.device)
    check_same_config(cfg.to_dict(), device)
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs CUDA; use bf16 on the CPU")
    ckpt_path = prepare_out(out, resume, overwrite) if main else None
    barrier()
    if not main:  # rank 0 has checked and cleaned the folder; the others only look for the checkpoint
        ckpt_path = (latest_checkpoint(out) if resume == "auto" else Path(resume)) if resume else None
    state: dict[str, Any] | None = None
    if ckpt_path is not None:
        state = require_moco_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        check_compatible(from_dict(state["config"]), cfg, ckpt_path)
    torch.manual_seed(cfg.train.seed)

    # Data: rank 0 decodes (and caches) first, the others then read the cache.
    train_dir, test_dir = find_split(data)
    images = scan_images(train_dir, cfg.data.max_images, cfg.train.seed)
    side = cache_side(cfg)
    decoded: DecodedImages | None = None
    if cfg.data.pipeline == "cached":
        for turn in (True, False):
            if main == turn:
                decoded = decode_images(images, side, cfg.data.cache_dir or None, cfg.data.workers,
                                        cfg.data.strict, progress)
            barrier()
        assert decoded is not None
        images = decoded.images
    n_images = len(images)
    b = cfg.optim.batch_size
    steps_per_epoch = n_images // b
    if steps_per_epoch == 0:
        raise DataError(f"{train_dir} has {n_images} usable image(s), fewer than one batch of {b}; lower --batch-size")
    knn_sets = _knn_sets(cfg, decoded, images, knn_train, knn_test, test_dir, side, progress) if knn and main else None

    # Model and optimiser.
    model, optimizer, scaler = build_training(cfg, device, n_images)
    fmt = memory_format(cfg)
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)  # augmentation and shuffle-BN draws, same on all ranks
    epoch, step, epoch_step, history = 0, 0, 0, []
    if state is not None:
        load_state_strict(model, state["model"], ckpt_path, "model")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_path}: optimizer state does not match this model ({e})") from None
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        gen.set_state(state["rng"]["aug"])
        torch.set_rng_state(state["rng"]["torch"])
        epoch, step, epoch_step = state["epoch"], state["step"], state.get("epoch_step", 0)
        history = list(state.get("history", []))
        if main:
            log.info("resumed from %s at epoch %d, step %d", ckpt_path, epoch + (epoch_step > 0), step)
    if main:
        (out / "config.yaml").write_text(dump_yaml(cfg))
    if epoch >= cfg.optim.epochs:
        if main:
            log.info("run already finished (%d/%d epochs)", epoch, cfg.optim.epochs)
        return history[-1] if history else {}
    net: torch.nn.Module = model
    if dinfo.enabled:  # gradients of encoder_q are all-reduced; the queue is kept identical by gathering keys
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    ds = TwoViews(images, cfg, cfg.data.strict) if cfg.data.pipeline == "per_image" else None
    encoded = EncodedFiles(images, cfg.data.strict) if cfg.data.pipeline == "device" else None
    metrics = MetricsLogger(out) if main else None
    stop = StopFlag()
    stop.install()

    def save(kind: str, last: dict[str, Any] | None) -> None:
        if main:
            ckpt = {
                "format": FORMAT, "config": cfg.to_dict(), "epoch": epoch, "step": step, "epoch_step": epoch_step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": {"aug": gen.get_state(), "torch": torch.get_rng_state()},
                "metrics": last or {}, "history": history, "n_images": n_images, "world_size": dinfo.world_size,
            }
            if scaler.is_enabled():
                ckpt["scaler"] = scaler.state_dict()
            atomic_save(ckpt, out / "checkpoint_last.pt")
            if kind == "epoch" and cfg.train.checkpoint_every and (
                epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.optim.epochs
            ):
                atomic_save(ckpt, out / f"checkpoint_{epoch:04d}.pt")
        barrier()

    if main:
        me = cfg.method
        dictionary = {"moco": f"K={me.K}, m={me.m}", "end_to_end": f"end-to-end, K={b - 1} (the batch)",
                      "memory_bank": f"memory bank of {n_images}, K={me.K}, bank_m={me.bank_m}",
                      "v3": f"MoCo v3, keys of the batch, m={me.m}{' -> 1 (cosine)' * (me.m_schedule == 'cosine')}"
                      }[me.dictionary]
        log.info(
            "pretraining %s (width %d) on %d images from %s: %d epochs x %d steps, batch %d%s, %s, T=%s, %s on %s",
            cfg.model.arch, cfg.model.width, n_images, train_dir, cfg.optim.epochs, steps_per_epoch, b,
            f" ({dinfo.world_size} processes x {b // dinfo.world_size})" if dinfo.enabled else "",
            dictionary, me.T, cfg.train.precision, device,
        )
    last: dict[str, Any] = history[-1] if history else {}
    last_side = 0
    try:
        while epoch < cfg.optim.epochs:
            epoch_seed = cfg.train.seed * 100_003 + epoch
            perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(epoch_seed))
            side = cfg.data.view_size_at(epoch)
            if main and cfg.data.ramp_size and side != last_side:
                log.info("epoch %d: training views of %d px (progressive resizing)", epoch + 1, side)
            last_side = side
            if decoded is not None:
                batches = cached_batches(decoded, perm, epoch_step, cfg, gen, device, dinfo, side)
            elif encoded is not None:
                batches = device_batches(encoded, perm, epoch_step, cfg, gen, device, dinfo, side)
            else:
                assert ds is not None
                ds.set_size(side)
                batches = per_image_batches(ds, perm, epoch_step, cfg, epoch_seed, device, dinfo)
            model.train()
            t_epoch = time.perf_counter()
            t_log, imgs_log = t_epoch, 0
            loss_sum = torch.zeros((), device=device)
            acc_sum = torch.zeros((), device=device)
            n_sum = 0
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                           unit="step", leave=False, dynamic_ncols=True, disable=None)
            for im_q, im_k, index in batches:
                lr = lr_at(cfg, epoch + epoch_step / steps_per_epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                if hasattr(model, "m"):  # the key encoder's momentum (v3: cosine up to 1)
                    model.m = momentum_at(cfg, epoch + epoch_step / steps_per_epoch)
                im_q = im_q.contiguous(memory_format=fmt)
                im_k = im_k.contiguous(memory_format=fmt)
                loss, logits = train_step(net, optimizer, scaler, im_q, im_k, gen, cfg.train.precision, device,
                                          index)
                loss_sum += loss
                acc_sum += (logits.argmax(1) == 0).float().mean() * 100
                n_sum += 1
                step += 1
                epoch_step += 1
                imgs_log += b
                if step % cfg.train.log_every == 0 or epoch_step == steps_per_epoch:
                    loss_v = all_reduce_mean(loss).item()
                    if not math.isfinite(loss_v):
                        kept = latest_checkpoint(out)
                        kept_s = f"The last good checkpoint is kept: {kept}" if kept else "No checkpoint yet."
                        raise TrainingError(
                            f"loss became {loss_v} at epoch {epoch + 1}, step {step}; likely causes: learning rate "
                            f"too high (optim.lr={cfg.optim.lr}), temperature too low (method.T={cfg.method.T}) or "
                            f"low precision (train.precision={cfg.train.precision}). {kept_s}"
                        )
                    acc_v = all_reduce_mean((logits.argmax(1) == 0).float().mean() * 100).item()
                    now = time.perf_counter()
                    rec = {
                        "type": "step", "epoch": epoch + 1, "step": step,
                        "epoch_float": round(epoch + epoch_step / steps_per_epoch, 4), "loss": loss_v,
                        "pretext_acc1": acc_v, "lr": lr, "images_per_sec": imgs_log / max(now - t_log, 1e-9),
                    }
                    if metrics is not None:
                        metrics.write(rec)
                    t_log, imgs_log = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{lr:.4f}", ips=f"{rec['images_per_sec']:.0f}")
                if bar is not None:
                    bar.update(1)
                # every rank must stop at the same step, whichever one got the signal
                if any_rank(stop.signum is not None, device) or (max_steps is not None and step >= max_steps):
                    break
            if bar is not None:
                bar.close()
            if epoch_step < steps_per_epoch:  # interrupted mid-epoch
                save("interrupt", last)
                why = signal.Signals(stop.signum).name if stop.signum else (
                    f"max_steps={max_steps}" if max_steps is not None and step >= max_steps else "another rank")
                if main:
                    log.warning("stopped (%s) at epoch %d, step %d; checkpoint saved to %s; continue with "
                                "--resume auto", why, epoch + 1, step, out / "checkpoint_last.pt")
                return {"stopped": True, "epoch": epoch, "step": step}
            epoch += 1
            epoch_step = 0
            elapsed = time.perf_counter() - t_epoch
            n_done = max(n_sum, 1)
            last = {
                "type": "epoch", "epoch": epoch, "step": step, "loss": all_reduce_mean(loss_sum / n_done).item(),
                "pretext_acc1": all_reduce_mean(acc_sum / n_done).item(), "lr": lr_at(cfg, epoch),
                "images_per_sec": n_sum * b / max(elapsed, 1e-9), "epoch_time": elapsed, "view_size": side,
            }
            if knn_sets and (
                (cfg.train.knn_every and epoch % cfg.train.knn_every == 0) or epoch == cfg.optim.epochs
            ):
                t0 = time.perf_counter()
                res = evaluate_knn(model.encoder_q, *knn_sets, cfg.data.image_size, device, cfg.train.precision,
                                   cfg.train.knn_k, cfg.train.knn_t, cfg.train.channels_last)
                last.update({"knn_top1": res["top1"], "knn_top5": res["top5"],
                             "knn_time": time.perf_counter() - t0})
            history.append(last)
            if metrics is not None:
                metrics.write(last)
            save("epoch", last)
            if main:
                knn_s = f"  knn top-1 {last['knn_top1']:.2f}%" if "knn_top1" in last else ""
                log.info(
                    "epoch %d/%d  loss %.4f  pretext acc %.1f%%  lr %.4f  %.0f img/s  %.0fs%s",
                    epoch, cfg.optim.epochs, last["loss"], last["pretext_acc1"], last["lr"], last["images_per_sec"],
                    elapsed, knn_s,
                )
                try:
                    plot_curves(read_metrics(out / "metrics.jsonl"), out / "curves.png")
                except Exception as e:  # noqa: BLE001 - a plot must never stop training
                    log.warning("could not draw curves.png: %s", e)
            if any_rank(stop.signum is not None, device) or (max_steps is not None and step >= max_steps):
                if main:
                    log.warning("stopped after epoch %d; continue with --resume auto", epoch)
                return {**last, "stopped": epoch < cfg.optim.epochs}
    finally:
        stop.restore()
        if metrics is not None:
            metrics.close()
    return last


def _knn_sets(
    cfg: Config, decoded: DecodedImages | None, images: ImageList, knn_train: str | Path | None,
    knn_test: str | Path | None, test_dir: Path | None, side: int, progress: bool,
) -> tuple[DecodedImages, DecodedImages] | None:
    """The kNN monitor's (memory, test) sets, or None when no labelled test data is available."""
    test = Path(knn_test) if knn_test else test_dir
    if test is None:
        if knn_train:
            raise ConfigError("--knn-train needs --knn-test too")
        return None
    d = cfg.data
    if knn_train:
        memory = decode_images(scan_images(knn_train), side, d.cache_dir or None, d.workers, d.strict, progress)
    elif decoded is not None:
        memory = decoded
    else:
        memory = decode_images(images, side, d.cache_dir or None, d.workers, d.strict, progress)
    if memory.images.labels is None:
        log.warning("kNN monitor off: %s has no class sub-folders (labels)", memory.images.root)
        return None
    test_set = decode_images(scan_images(test), side, d.cache_dir or None, d.workers, d.strict, progress)
    if test_set.images.classes != memory.images.classes:
        log.warning("kNN monitor off: %s and %s have different class folders", memory.images.root, test)
        return None
    return memory, test_set
