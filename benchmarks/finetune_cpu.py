"""The speed of fine-tuning: `moco finetune`'s step against a plain torchvision-style loop on the same network.

    python benchmarks/finetune_cpu.py --checkpoint runs/cifar10-cpu/checkpoint_last.pt \
        [--json benchmarks/results/finetune_speed_cpu.json]

Label efficiency (fine-tuning from the checkpoint and from random init at 1%, 10% and 100% of the labels, the
linear probe on the same subsets) is `moco evaluate`'s now: `benchmarks/evaluate_cpu.py` runs it. Prints the
images/s of both loops; writes the JSON with the CPU's flags.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import ROOT, write_results


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
    ap.add_argument("--json", default=str(ROOT / "results" / "finetune_speed_cpu.json"))
    a = ap.parse_args()
    out = {"checkpoint": a.checkpoint, "speed": speed(a.checkpoint)}
    print(f"speed: ours {out['speed']['ours_images_per_sec']} img/s, plain loop "
          f"{out['speed']['plain_images_per_sec']} img/s ({out['speed']['ratio']}x, {out['speed']['precision']})")
    write_results("finetune_cpu", out, a.json)


if __name__ == "__main__":
    main()
