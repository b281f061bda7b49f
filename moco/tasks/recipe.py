"""What :func:`moco.presets.auto.choose` needs, read off the data and the machine: the images' count and median
size (file headers only, no decode), the device, its memory and precision, and each ladder rung's speed
measured with a few training steps of its network on random images.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from moco.config import resolve
from moco.core.precision import pick_device, resolve_precision
from moco.core.system import host_memory_gb, usable_cores
from moco.data import sets
from moco.data.folder import ImageList
from moco.presets.auto import DataSummary, Machine, Recipe, Rung, choose

log = logging.getLogger("moco")
SAMPLE = 64  # image headers read for the median size
RECIPE_FILE = "recipe.json"  # a run folder's record of the chosen recipe and its reasons


def median_side(images: ImageList, sample: int = SAMPLE) -> int:
    """The median shorter side of up to ``sample`` images spread over the list (read from their headers)."""
    from PIL import Image

    step = max(1, len(images) // sample)
    sides = []
    for p in images.paths[::step][:sample]:
        try:
            with Image.open(images.root / p) as im:
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - an unreadable file says nothing about the others' size
            continue
    return int(statistics.median(sides)) if sides else 0


def _shard_sides(shards: list[str], sample: int = SAMPLE) -> list[int]:
    """Shorter sides of the first ``sample`` images of the first local shard (headers only)."""
    import io
    from itertools import islice

    from PIL import Image

    from moco.data.shards.read import image_field, read_samples
    from moco.data.shards.spec import is_remote

    sides: list[int] = []
    local = [s for s in shards if not is_remote(s)][:1]
    images = (x for x in read_samples(local, lambda shard, why: None) if image_field(x))
    for x in islice(images, sample):
        try:
            with Image.open(io.BytesIO(x[image_field(x)])) as im:
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - an unreadable sample says nothing about the others
            continue
    return sides


def summarize(train: sets.Data, max_images: int = 0) -> DataSummary:
    """The training set's image count (``max_images`` of them when set) and median shorter side."""
    if sets.is_stream(train):
        from moco.data.shards.read import shard_counts

        assert isinstance(train, list)
        try:
            n = sum(shard_counts(train, None))
        except Exception:  # noqa: BLE001 - a stream that cannot be counted: sized as a large set
            n = 1_000_000
        sides = _shard_sides(train)
        side = int(statistics.median(sides)) if sides else 0
    else:
        images = sets.listing(train, warn=False)
        n, side = len(images), median_side(images)
    return DataSummary(min(n, max_images) if max_images else n, side)


def this_machine(device_name: str = "auto", processes: int = 1) -> Machine:
    """The training device (``train.device``), its memory, the cores, and whether 16-bit runs natively."""
    device = pick_device(device_name)
    half = resolve_precision("auto", device) != "fp32"
    cores = usable_cores()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return Machine("cuda", props.name, props.total_memory / 2**30, cores, half, processes)
    mem = host_memory_gb() or 16.0
    name = f"{cores}-core CPU ({torch.backends.cpu.get_cpu_capability()}, {'bf16' if half else 'fp32'})"
    return Machine("cpu", name, mem, cores, half, processes)


def probe_speed(device_name: str = "auto", batch: int = 32, steps: int = 3) -> Callable[[Rung], float]:
    """A function measuring a rung's training speed (images/s) here: the trainer's own pretraining step
    (:func:`moco.training.loop.train_step` on the rung's MoCo, optimiser and precision, as ``moco pretrain``
    builds them) on random views, ``steps`` steps after one to warm up. The global random state is left as it
    was."""
    from moco.tasks.pretrain import build_training, pretrain_task
    from moco.training.loop import seconds_per_call, train_step
    from moco.training.task import StepModule

    device = pick_device(device_name)
    precision = resolve_precision("auto", device)
    seen: dict[Rung, float] = {}

    def speed(rung: Rung) -> float:
        if rung not in seen:
            b = batch if rung.view < 224 else batch // 2
            cfg = resolve(rung.preset, recipe={
                "model.arch": rung.arch, "model.width": rung.width, "model.cifar_stem": rung.cifar_stem,
                "data.image_size": rung.view, "optim.batch_size": b, "train.precision": precision})
            with torch.random.fork_rng(devices=[]):
                model, opt, scaler = build_training(cfg, device)
                net, gen = StepModule(model, pretrain_task(cfg).step), torch.Generator().manual_seed(0)
                views = (torch.randn(b, 3, rung.view, rung.view, device=device),
                         torch.randn(b, 3, rung.view, rung.view, device=device), torch.arange(b, device=device))
                seen[rung] = b / seconds_per_call(
                    lambda: train_step(net, opt, scaler, views, gen, precision, device)[0].item(), steps)
        return seen[rung]

    return speed


def auto_recipe(data: str | Path, budget_s: float | None, device_name: str = "auto", processes: int = 1,
                max_images: int = 0, speed: Callable[[Rung], float] | None = None,
                batch: int | None = None) -> Recipe:
    """The recipe chosen for ``--data`` on this machine within ``budget_s`` (:func:`moco.presets.auto.choose`);
    ``speed`` (default: measured here, :func:`probe_speed`) gives a rung's images/s; ``batch`` is the user's."""
    train, _ = sets.split(data)
    summary = summarize(train, max_images)
    machine = this_machine(device_name, processes)
    return choose(summary, machine, budget_s, speed or probe_speed(device_name), batch)


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    """What a run folder's recipe.json holds: the preset, the chosen settings and their reasons."""
    return {"preset": recipe.preset, "summary": recipe.summary, "settings": recipe.settings,
            "reasons": recipe.reasons}


def read_recipe(run: Path) -> dict[str, Any] | None:
    """What ``run``'s recipe.json holds (:func:`recipe_record`), or None: a preset's run, or a file that does
    not read as one."""
    try:
        rec = json.loads((Path(run) / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None
