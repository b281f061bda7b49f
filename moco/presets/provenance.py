"""Where every value of the reproduction presets comes from, and whether ours equals the authors'.

``PROVENANCE[preset]`` lists :class:`Value` rows: a config key, the authors' value in our config's terms,
where the authors wrote it (paper section, or file and line), and, where ours deliberately differs, why.
``tests/test_provenance.py`` pins every preset to these rows and checks that ``docs/presets.md``, which
:func:`render` writes (``python scripts/presets_doc.py > docs/presets.md``), is current.

Sources, by their short names:

* ``demo``: the authors' CIFAR-10 notebook, facebookresearch/moco branch ``colab-notebook``,
  ``colab/moco_cifar10_demo.ipynb`` (cell numbers as stored: 4 arguments, 6 transforms, 8 model,
  10 MoCo, 12 train and lr, 13 kNN monitor, 15 optimiser).
* ``main_moco.py`` / ``builder.py``: facebookresearch/moco at c567ee4 (the last commit holding the code).
* ``v3 main_moco.py`` / ``CONFIG.md`` / ``vits.py``: facebookresearch/moco-v3 at c349e6e.
* ``v1``: He et al., CVPR 2020; ``v2``: Chen et al., arXiv 2003.04297; ``v3``: Chen, Xie and He, ICCV 2021.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OURS = None  # the authors have no such setting: the value is ours


@dataclass(frozen=True)
class Value:
    """One setting of a preset: the authors' value (``OURS`` when they have none), its source, and why ours
    differs (empty when ours must equal it) or a note."""

    key: str
    authors: Any
    source: str
    differs: str = ""  # why ours deliberately differs; empty = ours equals the authors'
    note: str = ""


_DEMO_PRECISION = ("auto: bf16 autocast for speed where the device runs bf16 natively, fp32 elsewhere (the "
                   "similarities and the loss stay fp32); `--set train.precision=fp32` is the demo's arithmetic")
_KNN_BOTH = "ours also scores the backbone (knn_top1, what transfer uses); the head's kNN is knn_head_top1"
_PER_STEP = ("cosine per step, the authors' per epoch: the same curve without 1-epoch plateaus, at most one "
             "epoch of it apart (0.8% of the base lr over 200 epochs)")

_DEMO = [
    Value("model.arch", "resnet18", "demo cell 4: -a resnet18"),
    Value("model.width", 64, "demo cell 8: torchvision resnet18 (64 channels in the first stage)"),
    Value("model.cifar_stem", True, "demo cell 8: conv1 3x3 stride 1, max-pool removed"),
    Value("model.head", "linear", "demo cell 8: resnet fc -> feature_dim (a linear head)"),
    Value("model.dim", 128, "demo cell 4: --moco-dim 128"),
    Value("model.bn_splits", 8, "demo cell 4: --bn-splits 8 (SplitBatchNorm, cell 8)"),
    Value("method.dictionary", "moco", "demo cell 10: queue + momentum encoder"),
    Value("method.K", 4096, "demo cell 4: --moco-k 4096"),
    Value("method.m", 0.99, "demo cell 4: --moco-m 0.99"),
    Value("method.T", 0.1, "demo cell 4: --moco-t 0.1"),
    Value("method.symmetric", False, "demo cell 4: args.symmetric = False"),
    Value("method.shuffle_bn", True, "demo cell 10: _batch_shuffle_single_gpu"),
    Value("data.image_size", 32, "demo cell 6: RandomResizedCrop(32)"),
    Value("data.augmentation", "cifar", "demo cell 6: crop, flip, jitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2",
          note="ours flips last; flips commute with the colour operations"),
    Value("data.crop_min_scale", 0.08, "demo cell 6: RandomResizedCrop(32), torchvision's default scale (0.08, 1)"),
    Value("data.normalize", "cifar10", "demo cell 6: Normalize([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])"),
    Value("optim.epochs", 200, "demo cell 4: args.epochs = 200"),
    Value("optim.batch_size", 512, "demo cell 4: --batch-size 512"),
    Value("optim.lr", 0.06, "demo cell 4: --lr 0.06"),
    Value("optim.weight_decay", 5.0e-4, "demo cell 4: --wd 5e-4"),
    Value("optim.momentum", 0.9, "demo cell 15: SGD(momentum=0.9)"),
    Value("optim.optimizer", "sgd", "demo cell 15: torch.optim.SGD"),
    Value("optim.schedule", "cosine", "demo cell 4: args.cos = True; cell 12: adjust_learning_rate", note=_PER_STEP),
    Value("optim.warmup_epochs", 0.0, "demo cell 12: no warm-up"),
    Value("train.knn_k", 200, "demo cell 4: --knn-k 200"),
    Value("train.knn_t", 0.1, "demo cell 4: --knn-t 0.1"),
    Value("train.eval_every", 1, "demo cell 15: test() after every epoch"),
    Value("train.knn_features", ["head"], "demo cell 13: test(model.encoder_q, ...) scores the fc output",
          differs=_KNN_BOTH),
    Value("train.precision", "fp32", "demo cell 12: no autocast", differs=_DEMO_PRECISION),
    Value("data.pipeline", OURS, "ours: images decoded once and augmented as a batch (same recipe as per image)"),
    Value("data.workers", OURS, "ours"),
]

_V1_V2_COMMON = [
    Value("model.dim", 128, "main_moco.py L156: --moco-dim 128"),
    Value("method.dictionary", "moco", "builder.py: queue + momentum encoder"),
    Value("method.K", 65536, "v1 Sec. 4.1; main_moco.py L159: --moco-k 65536"),
    Value("method.m", 0.999, "v1 Sec. 4.1; main_moco.py L165: --moco-m 0.999"),
    Value("method.symmetric", False, "builder.py: one loss, q from im_q, k from im_k"),
    Value("method.shuffle_bn", True, "v1 Sec. 3.3; builder.py L92: _batch_shuffle_ddp"),
    Value("model.bn_splits", 1, "v1 Sec. 3.3: per-GPU BN over 8 GPUs, keys shuffled across them",
          note="on 8 GPUs ours shuffles across processes the same way; on one device set model.bn_splits=8"),
    Value("data.image_size", 224, "main_moco.py L331: RandomResizedCrop(224, ...)"),
    Value("data.crop_min_scale", 0.2, "main_moco.py L331 / L348: scale=(0.2, 1.0)"),
    Value("data.normalize", "imagenet", "main_moco.py L325: Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])"),
    Value("optim.epochs", 200, "v1 Sec. 4.1; main_moco.py L61: --epochs 200"),
    Value("optim.batch_size", 256, "v1 Sec. 4.1; main_moco.py L72: --batch-size 256"),
    Value("optim.lr", 0.03, "v1 Sec. 4.1; main_moco.py L81: --lr 0.03"),
    Value("optim.weight_decay", 1.0e-4, "v1 Sec. 4.1; main_moco.py L100: --wd 1e-4"),
    Value("optim.momentum", 0.9, "main_moco.py L97: --momentum 0.9"),
    Value("optim.optimizer", "sgd", "main_moco.py L293: torch.optim.SGD"),
    Value("optim.warmup_epochs", 0.0, "main_moco.py: no warm-up"),
    Value("train.knn_features", OURS, "ours: the authors have no kNN monitor; ours records backbone and head"),
    Value("train.precision", "fp32", "main_moco.py: no autocast", differs=_DEMO_PRECISION.split(";")[0]),
    Value("data.pipeline", OURS, "ours: ImageNet is too large to cache; per-image PIL as the authors"),
    Value("data.workers", OURS, "ours (main_moco.py L53: 32 workers per node)"),
]

_V1 = [
    Value("model.arch", "resnet50", "v1 Sec. 4.1; main_moco.py L46: -a resnet50"),
    Value("model.head", "linear", "v1 Sec. 3.3: fc -> 128; builder.py: encoder fc = num_classes dim"),
    Value("method.T", 0.07, "v1 Sec. 3.1; main_moco.py L171: --moco-t 0.07"),
    Value("data.augmentation", "v1", "main_moco.py L346-353: crop, grayscale 0.2, jitter 0.4/0.4/0.4/0.4, flip"),
    Value("optim.schedule", "step", "v1 Sec. 4.1: x0.1 at 120 and 160 epochs; main_moco.py L90: --schedule"),
    Value("optim.milestones", [120, 160], "main_moco.py L90: --schedule 120 160"),
    *_V1_V2_COMMON,
]

_V2 = [
    Value("model.arch", "resnet50", "v2 Sec. 3; main_moco.py L46: -a resnet50"),
    Value("model.head", "mlp", "v2 Sec. 2; main_moco.py L175 --mlp, builder.py L44: 2048-d hidden, ReLU"),
    Value("method.T", 0.2, "v2 Table 1; README: --moco-t 0.2"),
    Value("data.augmentation", "v2",
          "v2 Sec. 2; main_moco.py L328-343 (--aug-plus): jitter p=0.8, gray 0.2, blur p=0.5"),
    Value("optim.schedule", "cosine", "v2 Sec. 2; main_moco.py L179 --cos, L501", note=_PER_STEP),
    *_V1_V2_COMMON,
]

_V3_COMMON = [
    Value("method.dictionary", "v3", "v3 Sec. 3: keys of the batch, predictor, symmetric loss"),
    Value("method.m", 0.99, "v3 main_moco.py L99: --moco-m 0.99"),
    Value("method.m_schedule", "cosine", "CONFIG.md: --moco-m-cos"),
    Value("model.head", "v3", "v3 Sec. 4 / builder.py: BN-MLP projector and predictor"),
    Value("model.dim", 256, "v3 main_moco.py L95: --moco-dim 256"),
    Value("model.mlp_dim", 4096, "v3 main_moco.py L97: --moco-mlp-dim 4096"),
    Value("data.image_size", 224, "v3 main_moco.py L263: RandomResizedCrop(224, ...)"),
    Value("data.augmentation", "byol", "v3 main_moco.py L262-284: BYOL's views (blur 1.0 / 0.1, solarize 0 / 0.2)"),
    Value("data.normalize", "imagenet", "v3 main_moco.py L258: Normalize(ImageNet mean, std)"),
    Value("optim.scale_lr", True, "v3 main_moco.py L190: lr = lr x batch_size / 256"),
    Value("optim.momentum", 0.9, "v3 main_moco.py L67: --momentum 0.9"),
    Value("optim.schedule", "cosine", "v3 main_moco.py L420: half-cycle cosine after a linear warm-up, per step"),
    Value("train.knn_features", OURS, "ours: the authors have no kNN monitor; ours records backbone and head"),
    Value("train.precision", "fp16", "v3 main_moco.py L232, L352: torch.cuda.amp autocast with a GradScaler",
          differs="auto: bf16 on GPUs that have it (the same speed as fp16, without loss scaling), fp32 "
                  "elsewhere; fp16 is available"),
    Value("data.pipeline", OURS, "ours: ImageNet is too large to cache"),
    Value("data.workers", OURS, "ours"),
]

_V3_R50 = [
    Value("model.arch", "resnet50", "v3 main_moco.py L49: -a resnet50"),
    Value("model.bn_splits", 1, "v3: SyncBN across GPUs"),
    Value("method.T", 1.0, "v3 main_moco.py L104: --moco-t 1.0"),
    Value("data.crop_min_scale", 0.2, "CONFIG.md, ResNet-50 100-epoch: --crop-min=.2 (the code's default is .08)"),
    Value("optim.epochs", 100, "CONFIG.md ResNet-50 100-epoch; v3 main_moco.py L56: --epochs 100"),
    Value("optim.batch_size", 4096, "CONFIG.md (2 nodes x 8 GPUs); v3 main_moco.py L60: -b 4096"),
    Value("optim.lr", 0.6, "v3 main_moco.py L65: --lr 0.6 (base lr)"),
    Value("optim.optimizer", "lars", "v3 main_moco.py L112: --optimizer lars"),
    Value("optim.weight_decay", 1.0e-6, "v3 main_moco.py L69: --wd 1e-6"),
    Value("optim.warmup_epochs", 10, "v3 main_moco.py L115: --warmup-epochs 10"),
    *_V3_COMMON,
]


def _v3_vit(arch: str) -> list[Value]:
    return [
        Value("model.arch", arch, f"CONFIG.md: -a {arch}"),
        Value("model.patch_size", 16, f"vits.py: {arch} patch_size=16"),
        Value("model.stop_grad_conv1", True,
              "CONFIG.md: --stop-grad-conv1 (v3 Sec. 5: frozen random patch projection)"),
        Value("method.T", 0.2, "CONFIG.md: --moco-t=.2"),
        Value("data.crop_min_scale", 0.08, "v3 main_moco.py L117: --crop-min 0.08 (CONFIG.md keeps it for ViTs)"),
        Value("optim.epochs", 300, "CONFIG.md: --epochs=300"),
        Value("optim.batch_size", 4096, "v3 main_moco.py L60: -b 4096 (CONFIG.md multi-node runs)",
              note="CONFIG.md's 1-node ViT-Small run uses -b 1024"),
        Value("optim.lr", 1.5e-4, "CONFIG.md: --lr=1.5e-4 (base lr)"),
        Value("optim.optimizer", "adamw", "CONFIG.md: --optimizer=adamw"),
        Value("optim.weight_decay", 0.1, "CONFIG.md: --weight-decay=.1"),
        Value("optim.warmup_epochs", 40, "CONFIG.md: --warmup-epochs=40"),
        *_V3_COMMON,
    ]


PROVENANCE: dict[str, list[Value]] = {
    "cifar10-demo": _DEMO,
    "imagenet-v1": _V1,
    "imagenet-v2": _V2,
    "imagenet-v3-r50": _V3_R50,
    "imagenet-v3-vit-s": _v3_vit("vit_small"),
    "imagenet-v3-vit-b": _v3_vit("vit_base"),
}
"""The reproduction presets -> their values and sources. cifar10-cpu and cifar10-v3-cpu are ours (their YAML
files say why each value was chosen)."""


def _show(v: Any) -> str:
    if v is OURS:
        return "(none)"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def render(resolve: Callable[[str], Any]) -> str:
    """docs/presets.md: one table per reproduction preset; ``resolve`` is :func:`moco.config.resolve`."""
    out = [
        "# Where the presets' values come from",
        "",
        "Generated by `python scripts/presets_doc.py > docs/presets.md` from `moco/presets/provenance.py`;",
        "`tests/test_provenance.py` pins every preset to these rows and checks this file is current.",
        "",
        "Columns: the config key, our preset's value, the authors' value, where they wrote it, and whether ours",
        "equals it (or why it differs). Sources: `demo` = the authors' CIFAR-10 notebook (facebookresearch/moco,",
        "branch colab-notebook, cell numbers as stored); `main_moco.py`, `builder.py` = facebookresearch/moco at",
        "c567ee4; `v3 main_moco.py`, `CONFIG.md`, `vits.py` = facebookresearch/moco-v3 at c349e6e; v1, v2, v3 =",
        "the papers. `cifar10-cpu` and `cifar10-v3-cpu` are ours: their YAML files give each value's reason.",
        "",
        "The ImageNet presets (`imagenet-v1`, `imagenet-v2`, `imagenet-v3-*`) are written to the authors' settings",
        "and have **never been run**: no GPU has run this code yet, and they are GPU recipes (200 to 800 epochs of",
        "ImageNet). Only the `cifar10-*` presets have been measured (on CPUs).",
    ]
    for name, rows in PROVENANCE.items():
        cfg = resolve(name).to_dict()
        out += ["", f"## {name}", "", "| key | ours | authors | source | equal |", "|---|---|---|---|---|"]
        for r in rows:
            section, key = r.key.split(".")
            ours = cfg[section][key]
            if r.authors is OURS:
                verdict = "ours"
            elif r.differs:
                verdict = f"differs: {r.differs}"
            else:
                verdict = "yes" + (f" ({r.note})" if r.note else "")
            out.append(f"| `{r.key}` | {_show(ours)} | {_show(r.authors)} | {r.source} | {verdict} |")
    return "\n".join(out) + "\n"
