"""Label efficiency on CIFAR-10: fine-tuning a pretrained backbone against the same network from random init,
at 1%, 10% and 100% of the labels, at an equal budget, with 2 seeds; the linear probe on the same 1% and 10%
subsets; and the speed of fine-tuning against a plain torchvision-style loop on the same network.

    python benchmarks/finetune_cpu.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt [--steps 300 | --budget 150s]
        [--labels 1% 10% 100%] [--seeds 0 1] [--data ../shared/datasets/cifar10] [--speed-only] [--no-speed]

The budget is the same number of steps for every run (``--steps``: the recipe's epochs chosen to make at least
that many; the result does not depend on the machine's load), or the same wall time (``--budget``, `moco
finetune --time-budget`). Every fine-tune is `moco finetune` run as a subprocess (wall time from outside,
start-up included) into benchmarks/runs/finetune/NAME, resumed or skipped when run again. The labels' draw is
the same for both inits and every seed (finetune.labels_seed=0). Prints a table; writes
benchmarks/results/finetune_cpu.json with the CPU's flags.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import DATA, ROOT, run_once, write_results


def epochs_for(steps: int, data: str, labels: str, batch: int = 256, min_steps: int = 20) -> int:
    """The fewest epochs of `moco finetune`'s recipe that make at least ``steps`` steps at ``labels``."""
    from moco.data.folder import scan_images
    from moco.transfer.labels import balanced_subset, passes_per_epoch

    n = len(balanced_subset(scan_images(Path(data) / "train"), labels))
    spe = n * passes_per_epoch(n, batch, min_steps) // batch
    return max(1, -(-steps // spe))


def finetune_run(out: Path, ckpt: str, data: str, labels: str, init: str, seed: int, length: list[str]) -> dict:
    """One `moco finetune` run (skipped when its results.json exists), with its wall time from outside."""
    return run_once(out, ["finetune", "--checkpoint", ckpt, "--data", data, "--labels", labels, "--init", init,
                          "--seed", str(seed), *length])


def linear_on(ckpt: str, data: Path, labels_txt: Path) -> dict:
    """`moco linear`'s protocol (defaults) on the images of a labels.txt, scored on the whole test set."""
    from moco.core.precision import resolve_precision
    from moco.data.cache import decode_images
    from moco.data.folder import scan_images
    from moco.data.sides import cache_side
    from moco.evaluation.linear import LinearConfig, linear_eval
    from moco.export.backbone import load_backbone_and_config
    from moco.transfer.labels import read_labels

    net, cfg = load_backbone_and_config(ckpt)
    size = cfg.data.image_size
    train = decode_images(read_labels(scan_images(data / "train"), labels_txt), cache_side(size), progress=False)
    test = decode_images(scan_images(data / "test"), cache_side(size), progress=False)
    precision = resolve_precision("auto", torch.device("cpu"))
    res, _ = linear_eval(net.to(memory_format=torch.channels_last), train, test, size, torch.device("cpu"),
                         LinearConfig(), precision, progress=False, norm=cfg.data.normalize)
    return {"top1": res["top1"], "n_train": res["n_train"], "seconds": res["seconds"]}


def speed(ckpt: str, steps: int = 30, batch: int = 256) -> dict:
    """Images/s of fine-tuning steps: ours (the cached batches, channels_last, the run's precision) against a
    plain torchvision-style loop (per-image PIL flip + pad-crop in 2 DataLoader workers, NCHW, fp32), same
    network, same batch, timed back to back after 5 warm-up steps each."""
    import torchvision.transforms as T
    from PIL import Image

    from moco.core.precision import autocast, resolve_precision
    from moco.data.augment import crop_flip
    from moco.export.backbone import load_backbone_and_config
    from moco.tasks.finetune import finetune_config
    from moco.transfer.classifier import Classifier
    from moco.transfer.init import build_network, load_backbone_into

    data = ROOT.parent.parent / "shared" / "datasets" / "cifar10" / "train"
    files = sorted(data.glob("*/*.jpg"))[: batch * 8]
    classes = sorted({f.parent.name for f in files})
    src, cfg = load_backbone_and_config(ckpt)
    cfg = finetune_config(cfg, "checkpoint", ckpt)
    dev = torch.device("cpu")
    precision = resolve_precision("auto", dev)

    def model() -> tuple[Classifier, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = build_network(cfg, 10)
        load_backbone_into(net, src, ckpt)
        m = Classifier(net)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def timed(step, batches) -> float:  # noqa: ANN001
        it = iter(batches)
        for _ in range(5):
            step(*next(it))
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*next(it))
        return steps * batch / (time.perf_counter() - t0)

    # ours: decoded uint8 batch, batched crop/flip, channels_last, autocast where native
    import numpy as np

    arr = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    ys = torch.tensor([classes.index(f.parent.name) for f in files])
    m, opt = model()
    m = m.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)

    def ours_batches():  # noqa: ANN202
        while True:
            idx = torch.randint(0, len(files), (batch,), generator=g)
            yield crop_flip(arr[idx], 32, g, cfg.data.normalize).contiguous(memory_format=torch.channels_last), ys[idx]

    def ours_step(x, y):  # noqa: ANN001
        with autocast(dev, precision):
            loss, _ = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours = timed(ours_step, ours_batches())

    # plain loop: torchvision transforms per image in DataLoader workers, NCHW, fp32
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class Folder(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):  # noqa: ANN204
            return tf(Image.open(files[i]).convert("RGB")), ys[i]

    loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)

    def plain_batches():  # noqa: ANN202
        while True:
            yield from loader

    pm, popt = model()
    crit = torch.nn.CrossEntropyLoss()

    def plain_step(x, y):  # noqa: ANN001
        loss = crit(pm.encoder_q(x), y)
        popt.zero_grad()
        loss.backward()
        popt.step()

    plain = timed(plain_step, plain_batches())
    return {"ours_images_per_sec": round(ours, 1), "plain_images_per_sec": round(plain, 1),
            "ratio": round(ours / plain, 2), "precision": precision, "batch": batch, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--steps", type=int, default=300, help="each fine-tune's length in steps (default)")
    ap.add_argument("--budget", help="each fine-tune's --time-budget instead of --steps")
    ap.add_argument("--labels", nargs="+", default=["1%", "10%", "100%"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--one-seed", nargs="*", default=[], metavar="LABELS",
                    help="labels (e.g. 100%%) run with the first seed only, to save time")
    ap.add_argument("--inits", nargs="+", default=["checkpoint", "random"])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "finetune"))
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "results" / "finetune_cpu.json"))
    a = ap.parse_args()
    out = {"checkpoint": a.checkpoint, "budget": a.budget or f"{a.steps} steps", "runs": {}, "linear": {}}
    if not a.no_speed:
        out["speed"] = speed(a.checkpoint)
        print(f"speed: ours {out['speed']['ours_images_per_sec']} img/s, plain loop "
              f"{out['speed']['plain_images_per_sec']} img/s ({out['speed']['ratio']}x, {out['speed']['precision']})")
    if not a.speed_only:
        runs = Path(a.runs)
        for labels in a.labels:
            for init in a.inits:
                for seed in a.seeds[:1] if labels in a.one_seed else a.seeds:
                    name = f"{labels.rstrip('%')}pct-{init}-s{seed}"
                    length = (["--time-budget", a.budget] if a.budget else
                              ["--epochs", str(epochs_for(a.steps, a.data, labels))])
                    r = finetune_run(runs / name, a.checkpoint, a.data, labels, init, seed, length)
                    out["runs"][name] = {k: r[k] for k in ("top1", "top5", "init", "epochs", "steps", "images_per_sec",
                                                           "train_seconds", "wall_outside_s", "precision")}
                    out["runs"][name].update({"labels": labels, "seed": seed, "images": r["labels"]["images"]})
                    print(f"{name}: top-1 {r['top1']:.2f}% ({r['steps']} steps, {r['wall_outside_s']} s)", flush=True)
            if labels != "100%":
                lab = runs / f"{labels.rstrip('%')}pct-{a.inits[0]}-s{a.seeds[0]}" / "labels.txt"
                out["linear"][labels] = linear_on(a.checkpoint, Path(a.data), lab)
        print("\n| labels | " + " | ".join(f"{i} init (by seed)" for i in a.inits) + " | linear probe |")
        print("|---|" + "---|" * (len(a.inits) + 1))
        for labels in a.labels:
            cells = []
            for init in a.inits:
                tops = [out["runs"][f"{labels.rstrip('%')}pct-{init}-s{s}"]["top1"] for s in a.seeds
                        if f"{labels.rstrip('%')}pct-{init}-s{s}" in out["runs"]]
                cells.append(" / ".join(f"{t:.2f}" for t in tops) + f" (mean {sum(tops) / len(tops):.2f})")
            lin = out["linear"].get(labels)
            print(f"| {labels} | " + " | ".join(cells) + (f" | {lin['top1']:.2f} |" if lin else " | - |"))
    write_results("finetune_cpu", out, a.json)


if __name__ == "__main__":
    main()
