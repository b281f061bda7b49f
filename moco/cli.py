"""The ``moco`` command: pretrain, finetune, detect, segment, evaluate, knn, linear, embed, map, neighbors, export,
shards, info, presets, reproduce.

Errors in the user's input (config, data, checkpoints) end with one line on
stderr and exit status 2 (config) or 1 (data, checkpoint, training), never a
traceback. ``MOCO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moco.core.errors import CheckpointError, ConfigError, DataError, TrainingError, escaped
from moco.presets import PRESETS

log = logging.getLogger("moco")

EPILOG_PRETRAIN = """examples:
  moco pretrain --preset cifar10-cpu --data ../shared/datasets/cifar10 --out runs/cpu --time-budget 14m50s
  moco pretrain --data ~/photos --out runs/photos --epochs 50 --batch-size 128
  moco pretrain --data ~/photos --out runs/lunch --time-budget 45m   # as far as 45 minutes go
  moco pretrain --out runs/copy --replay-plan runs/lunch --data ~/photos  # that run again, bit for bit
  moco pretrain --preset cifar10-demo --data data/cifar10 --out runs/demo --set method.symmetric=true
  moco pretrain --out runs/cpu --resume auto            # continue an interrupted run
  moco pretrain --preset imagenet-v2 --print-config     # show the resolved config and exit

Without --preset or --config the recipe is chosen for --data and this machine: the
images' median size and number (64 file headers read) and each candidate network's
measured speed (three training steps each) against --time-budget (an hour without one). CIFAR-sized
images get cifar10-cpu; photos MoCo v2's recipe at the largest view and ResNet the budget
can teach. The choice is printed with its reasons, kept in RUN/recipe.json and shown by
`moco info`; --set overrides any of it; --print-config shows it without training.

--data may be an ImageFolder (class sub-folders), a folder holding train/ and test/
(the test split then drives the kNN monitor), or any tree of images. Without
--data: $MOCO_DATA, ./data/cifar10, then ../shared/datasets/cifar10.

--data may also name WebDataset shards, streamed with constant memory: a brace
pattern ('shards/train-{000000..000999}.tar'), a directory of .tar files (one that
`moco shards` wrote from train/ and test/ monitors with its test shards), or a text
file listing shards or URLs ('pipe:curl -s https://...'; then --samples-per-epoch).
"""


def default_data() -> Path | None:
    for cand in (os.environ.get("MOCO_DATA"), "data/cifar10", "../shared/datasets/cifar10"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def _command(sub: argparse._SubParsersAction, name: str, about: str, epilog: str) -> argparse.ArgumentParser:
    """A command's parser: its one-line help, and the examples and notes shown after its options as written."""
    return sub.add_parser(name, help=about, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    pt = _command(sub, "pretrain", "pretrain a backbone on a folder of images", EPILOG_PRETRAIN)
    pt.add_argument("--data", help="image folder to pretrain on (see below)")
    pt.add_argument("--out", help="run directory (default: runs/PRESET, or runs/pretrain)")
    pt.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                    help=f"recipe to start from: {', '.join(PRESETS)} (default: one chosen for --data and this "
                         "machine, see below; `moco presets` lists them)")
    pt.add_argument("--config", help="YAML file of settings, e.g. {method: {K: 4096}}")
    pt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting, e.g. --set method.m=0.99 (repeatable)")
    pt.add_argument("--epochs", type=int)
    pt.add_argument("--time-budget", metavar="DURATION",
                    help="train for this much wall time instead of a number of epochs (90s, 15m, 2h), start-up "
                         "and the final kNN included; the schedules are fitted to the steps that fit")
    pt.add_argument("--replay-plan", metavar="RUN|CHECKPOINT",
                    help="follow the plan a --time-budget run recorded, without the clock: the same run, bit "
                         "for bit, on any machine")
    pt.add_argument("--batch-size", type=int)
    pt.add_argument("--lr", type=float)
    pt.add_argument("--workers", type=int)
    pt.add_argument("--seed", type=int)
    pt.add_argument("--max-images", type=int, help="train on a deterministic subset of N images")
    pt.add_argument("--samples-per-epoch", type=int, metavar="N",
                    help="WebDataset shards: N samples make an epoch (needed for streamed URLs; local shards are "
                    "counted)")
    pt.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    pt.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint; auto = latest in --out")
    pt.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    pt.add_argument("--strict-data", action="store_true", help="fail on the first unreadable image")
    pt.add_argument("--knn-train", help="labelled ImageFolder used as the kNN monitor's memory")
    pt.add_argument("--knn-test", help="labelled ImageFolder the kNN monitor classifies")
    pt.add_argument("--nproc", type=int, metavar="N",
                    help="run N processes on this machine via torchrun (one per GPU, or gloo on CPU)")
    pt.add_argument("--no-knn", action="store_true", help="no kNN monitor, even with labelled test data")
    pt.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    pt.add_argument("--logger", action="append", choices=["mlflow", "wandb"],
                    help="also log to an experiment tracker (repeatable): mlflow (MLFLOW_TRACKING_URI, else "
                         "./mlflow.db) or wandb (offline without an API key); optional extras")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")


EPILOG_FINETUNE = """examples:
  moco finetune --checkpoint runs/cifar10-cpu/checkpoint_last.pt --labels 10% --out runs/ft10  # CIFAR-10 found
  moco finetune --checkpoint runs/cifar10-cpu/checkpoint_last.pt --init random --labels 10% --out runs/ft10-random
  moco finetune --checkpoint CK --data DIR --labels-file runs/ft10/labels.txt --out runs/again  # the same images
  moco finetune --checkpoint moco_v2_800ep.pth.tar --data ~/birds --labels 50 --time-budget 30m --out runs/birds
  moco finetune --checkpoint CK --data data/cifar10-shards --labels 1% --out runs/ft1  # shards with .cls
  moco finetune --out runs/ft10 --resume auto        # continue an interrupted run

--data is a folder holding train/ and test/ ImageFolders (or give --train and --test), or
WebDataset shards with .cls labels: the folder `moco shards` writes (train-*.tar and
test-*.tar), or --train and --test each a pattern, a folder or a list of shards.
--labels takes a class-balanced, seeded subset of train/: a percentage of each class
(1%, 10%, 100%) or a number of images per class (50); the images used are written to
RUN/labels.txt, which --labels-file reads back. The network is fine-tuned end to end with
a new linear classifier; RUN/results.json holds the test top-1 and top-5, the labels, the
init and the cost; `moco export --checkpoint RUN/checkpoint_last.pt` writes the network.
Every recipe value is a setting: --set optim.lr=0.05 --set finetune.backbone_lr=0.1
--set finetune.bn=frozen (see benchmarks/README.md, "Fine-tuning").
"""


def _transfer_args(sp: argparse.ArgumentParser, command: str, epochs: str, batch: str, lr: str, seed: str,
                   workers: str, strict: str, final: str) -> None:
    """The flags ``moco finetune`` and ``moco detect`` share: the backbone and its init, the run folder and
    length, the optimiser's lr and batch, and resume; the rest of each help text is the command's."""
    sp.add_argument("--checkpoint", help="the backbone: momentum-contrast checkpoint, authors' .pth.tar, or "
                                         "torchvision ResNet state dict")
    sp.add_argument("--init", metavar="checkpoint|random|supervised:CKPT",
                    help="checkpoint (default with --checkpoint): its backbone; random: the same network from "
                         "scratch (the baseline); supervised:CKPT: a network trained with labels")
    sp.add_argument("--out", help=f"run directory (default: runs/{command})")
    sp.add_argument("--epochs", type=int, help=epochs)
    sp.add_argument("--time-budget", metavar="DURATION",
                    help=f"train for this much wall time instead (90s, 15m, 2h), start-up and {final} included")
    sp.add_argument("--batch-size", type=int, help=batch)
    sp.add_argument("--lr", type=float, help=lr)
    sp.add_argument("--seed", type=int, help=seed)
    sp.add_argument("--workers", type=int, help=workers)
    sp.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    sp.add_argument("--config", help="YAML file of settings")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    sp.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint; auto = latest in --out")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    sp.add_argument("--strict-data", action="store_true", help=strict)
    sp.add_argument("--nproc", type=int, metavar="N",
                    help="run N processes on this machine via torchrun (one per GPU, or gloo on CPU)")
    sp.add_argument("--logger", action="append", choices=["mlflow", "wandb"],
                    help="also log to an experiment tracker (repeatable): mlflow (MLFLOW_TRACKING_URI, else "
                         "./mlflow.db) or wandb (offline without an API key); optional extras")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _transfer_flags(a: argparse.Namespace) -> dict[str, Any]:
    """The settings the shared transfer flags give (None: not given)."""
    return {"optim.batch_size": a.batch_size, "optim.lr": a.lr, "data.workers": a.workers, "train.seed": a.seed,
            "train.device": a.device, "data.strict": True if a.strict_data else None}


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    ft = _command(sub, "finetune", "fine-tune a pretrained backbone with a new classifier on labelled images",
                  EPILOG_FINETUNE)
    ft.add_argument("--data", help="folder holding train/ and test/ ImageFolders, or shards (train-*, test-*.tar)")
    ft.add_argument("--train", help="labelled ImageFolder, or shards with .cls, to fine-tune on (instead of --data)")
    ft.add_argument("--test", help="labelled ImageFolder, or shards with .cls, to score on (instead of --data)")
    ft.add_argument("--labels", help="share of each class's images to learn from: 1%%, 10%%, 100%% (default) or N "
                                     "images per class")
    ft.add_argument("--labels-file", help="learn from the images a labels.txt lists (another run's)")
    _transfer_args(ft, "finetune", "epochs (default 30; an epoch is at least 20 steps)", "images per step",
                   "the new classifier's lr (default 0.1; the backbone's is finetune.backbone_lr times it)",
                   "training seed (the labels' draw has its own: finetune.labels_seed)", "decoding processes",
                   "fail on the first unreadable image", "the final test")


EPILOG_DETECT = """examples:
  python benchmarks/make_detection_set.py --out data/pasted   # a small set from CIFAR-10 (COCO JSON)
  moco detect --checkpoint runs/cifar10-cpu/checkpoint_last.pt --train-ann data/pasted/train.json \\
      --train-images data/pasted/train --val-ann data/pasted/val.json --val-images data/pasted/val \\
      --time-budget 10m --out runs/detect
  moco detect --checkpoint CK ... --init random --out runs/detect-random      # the baseline
  moco detect --checkpoint moco_v2_800ep.pth.tar --train-ann voc/train.json ... --nproc 8 \\
      --set detect.min_size=[480,512,544,576,608,640,672,704,736,768,800] --out runs/voc
  moco detect --out runs/detect --resume auto        # continue an interrupted run

The detector is torchvision's Faster R-CNN (Mask R-CNN when the annotations carry
segmentations, Keypoint R-CNN when the categories name keypoints; keypoint AP by OKS with
the file's sigmas, COCO's for its 17 person keypoints, or --set detect.oks_sigmas=[...])
with a feature pyramid over the ResNet's stages. Annotations that cannot be
trained on (unknown image or category, missing file, malformed, zero-area or out-of-bounds
box) are counted and skipped with one warning (--strict-data refuses them); crowd regions
are scored as COCO does, not trained on. RUN/results.json holds AP, AP50, AP75 and AP by
size from pycocotools' COCOeval. BatchNorm is trained (SyncBN under torchrun), as the
authors' Detectron2 configs do; --set finetune.bn=frozen freezes it. Every recipe value is
a setting (see benchmarks/README.md, "Detection").
"""


def _add_detect(sub: argparse._SubParsersAction) -> None:
    dt = _command(sub, "detect", "train Faster R-CNN on a pretrained backbone with COCO-format data; COCO AP",
                  EPILOG_DETECT)
    dt.add_argument("--train-ann", help="COCO annotation file (JSON) of the training images")
    dt.add_argument("--train-images", help="folder of the training images (the annotations' file_name)")
    dt.add_argument("--val-ann", help="COCO annotation file of the validation images (scored with COCO AP)")
    dt.add_argument("--val-images", help="folder of the validation images")
    _transfer_args(dt, "detect", "epochs (default 12)", "images per step, all processes together (default 8)",
                   "the detector's lr (default 0.02; the backbone's is finetune.backbone_lr times it)",
                   "training seed", "image-reading processes",
                   "fail on the first bad annotation or unreadable image", "the final AP")


EPILOG_SEGMENT = """examples:
  python benchmarks/make_detection_set.py --out data/pasted   # canvases with class maps (train_maps/, val_maps/)
  moco segment --checkpoint runs/cifar10-cpu/checkpoint_last.pt --train-images data/pasted/train \\
      --train-masks data/pasted/train_maps --val-images data/pasted/val --val-masks data/pasted/val_maps \\
      --classes data/pasted/classes.txt --time-budget 10m --out runs/segment
  moco segment --checkpoint CK ... --init random --out runs/segment-random     # the baseline
  moco segment --checkpoint moco_v2_800ep.pth.tar --nproc 8 \\
      --train-images VOC2012/JPEGImages --train-masks VOC2012/SegmentationClassAug \\
      --train-list VOC2012/ImageSets/Segmentation/train_aug.txt --val-images VOC2012/JPEGImages \\
      --val-masks VOC2012/SegmentationClass --val-list VOC2012/ImageSets/Segmentation/val.txt \\
      --set segment.crop_size=513 --set segment.atrous_rates=[12,24,36] --out runs/voc-seg
  moco segment --train-images coco/train2017 --train-ann coco/instances_train2017.json ...  # painted
  moco segment --out runs/segment --resume auto        # continue an interrupted run

Label maps are palette or grayscale PNGs whose value is the class, paired with images by
sub-folder and stem (--set segment.image_suffix / mask_suffix for names such as Cityscapes');
255 is ignored (segment.ignore_index). --classes FILE maps other values to classes, one
'VALUE CLASS [NAME]' a line; unmapped values are ignored. COCO annotations are painted into
class maps (background 0, crowd ignored). The head is torchvision's DeepLabV3 (ASPP) or FCN
(--set segment.head=fcn) on the last ResNet stage, dilated to segment.output_stride.
Validation scores whole images; RUN/results.json holds mIoU, pixel accuracy and each class's
IoU. Every recipe value is a setting (see benchmarks/README.md, "Segmentation").
"""


def _add_segment(sub: argparse._SubParsersAction) -> None:
    sg = _command(sub, "segment", "train a DeepLabV3 head on a pretrained backbone with label maps; mIoU",
                  EPILOG_SEGMENT)
    sg.add_argument("--train-images", help="folder of the training images")
    sg.add_argument("--train-masks", help="folder of their label maps (PNG; value = class), paired by name")
    sg.add_argument("--train-ann", help="or COCO annotations of the training images, painted into class maps")
    sg.add_argument("--train-list", help="file of the image stems to train on (VOC's ImageSets/Segmentation)")
    sg.add_argument("--val-images", help="folder of the validation images (scored by mIoU)")
    sg.add_argument("--val-masks", help="folder of their label maps")
    sg.add_argument("--val-ann", help="or COCO annotations of the validation images")
    sg.add_argument("--val-list", help="file of the image stems to score")
    sg.add_argument("--classes", metavar="FILE", help="map label values to classes: 'VALUE CLASS [NAME]' lines")
    _transfer_args(sg, "segment", "epochs (default 30)", "images per step, all processes together (default 8)",
                   "the head's lr (default 0.02; the backbone's is finetune.backbone_lr times it)", "training seed",
                   "image-reading processes (sets that do not fit segment.cache_mb)",
                   "fail on the first bad COCO annotation (label maps are always checked)", "the final mIoU")


EPILOG_EVALUATE = """examples:
  moco evaluate --checkpoint runs/cifar10-cpu/checkpoint_last.pt --data ../shared/datasets/cifar10 \\
      --out runs/evaluate --time-budget 30m
  moco evaluate --checkpoint runs/photos/checkpoint_last.pt --data ~/labelled --out runs/eval-photos \\
      --labels 1% 5% 10% 50% 100% --seeds 3 --time-budget 2h
  moco evaluate --checkpoint v1=runs/a/checkpoint_last.pt --checkpoint v2=runs/b/checkpoint_last.pt \\
      --baseline supervised:runs/sup/checkpoint_last.pt --data ~/labelled --out runs/compare --each 5m
  moco evaluate --out runs/evaluate --resume auto      # continue an interrupted evaluation
  moco evaluate --out runs/evaluate --report-only      # rebuild the report from the runs there

How many labels does pretraining save on your task? Each checkpoint's backbone is judged
frozen (kNN, and the linear probe on all labels and each share) and fine-tuned at each share of
the labels, against the same network from random init, 2 seeds each; every init and seed of a
share learns from the same images (RUN/labels/). RUN/report.md opens with the answer: the share of
the labels a pretrained init needs to reach random init's best accuracy, interpolated on the
log-label axis. --time-budget is shared by the whole evaluation: measured up front, each fine-tune
gets an equal share of the time left when it starts. Every run is an ordinary `moco finetune`
run under RUN/runs/; --set values (optim.lr=0.05, finetune.bn=frozen) reach every fine-tune.
"""


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = _command(sub, "evaluate", "does pretraining pay off on my data? labels saved, frozen and fine-tuned",
                  EPILOG_EVALUATE)
    ev.add_argument("--checkpoint", action="append", metavar="[NAME=]PATH",
                    help="a pretrained backbone to judge (repeat to compare several; NAME= names it in the report)")
    ev.add_argument("--data", help="folder holding train/ and test/ ImageFolders, or shards (train-*, test-*.tar)")
    ev.add_argument("--train", help="labelled ImageFolder, or shards with .cls, to learn from (instead of --data)")
    ev.add_argument("--test", help="labelled ImageFolder, or shards with .cls, to score on (instead of --data)")
    ev.add_argument("--out", help="the evaluation's folder (default: runs/evaluate)")
    ev.add_argument("--labels", nargs="+", metavar="SHARE",
                    help="the label shares: 1%% 10%% 100%% (default), or N images per class")
    ev.add_argument("--seeds", type=int, help="fine-tunes of each init and share (default 2)")
    ev.add_argument("--baseline", action="append", metavar="supervised:CKPT",
                    help="also fine-tune (and probe) a network trained with labels, side by side")
    ev.add_argument("--time-budget", metavar="DURATION", help="the whole evaluation's wall time (30m, 2h)")
    ev.add_argument("--each", metavar="DURATION", help="each fine-tune's wall time instead (90s, 5m)")
    ev.add_argument("--epochs", type=int, help="each fine-tune's epochs instead (default: the recipe's 30)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting of every fine-tune")
    ev.add_argument("--no-frozen", action="store_true", help="skip the frozen protocols (kNN, linear probe)")
    ev.add_argument("--resume", metavar="auto", help="continue the evaluation in --out: finished runs are skipped")
    ev.add_argument("--overwrite", action="store_true", help="replace an evaluation already in --out")
    ev.add_argument("--report-only", action="store_true", help="rebuild the report from the runs in --out")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars inside the runs")


def _eval_args(sp: argparse.ArgumentParser) -> None:
    """The flags every command that evaluates a checkpoint shares."""
    sp.add_argument("--checkpoint", required=True,
                    help="momentum-contrast checkpoint, authors' checkpoint_XXXX.pth.tar, or ResNet state dict")
    sp.add_argument("--image-size", type=int, help="default: the checkpoint's data.image_size")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                    help="auto: bf16 where the device runs it natively, fp32 elsewhere (default)")
    sp.add_argument("--workers", type=int, default=2, help="decoding processes")
    sp.add_argument("--no-progress", action="store_true")


def _eval_parser(sub: argparse._SubParsersAction, name: str, about: str, example: str, train: str | None = None,
                 test: str | None = None) -> argparse.ArgumentParser:
    """An evaluation command's parser: its help, an example on a checkpoint, the arguments every evaluation takes
    and, when described, its labelled --train and --test sets."""
    sp = _command(sub, name, about, f"example:\n  moco {name} --checkpoint runs/cpu/checkpoint_last.pt {example}")
    _eval_args(sp)
    if train and test:
        sp.add_argument("--train", required=True, help=train)
        sp.add_argument("--test", required=True, help=test)
    return sp


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    """knn, linear, embed, map and neighbors: commands that judge or use a checkpoint's backbone."""
    cifar = "--train ../shared/datasets/cifar10/train --test ../shared/datasets/cifar10/test"
    kn = _eval_parser(sub, "knn", "weighted kNN accuracy of a checkpoint's backbone", cifar,
                      "labelled ImageFolder, or shards with .cls: the memory",
                      "labelled ImageFolder (or shards) to classify")
    kn.add_argument("--k", type=int, default=200)
    kn.add_argument("--t", type=float, default=0.1, help="vote temperature")
    kn.add_argument("--features", choices=["backbone", "head"], default="backbone",
                    help="what to score: the backbone's pooled features (default; what transfer uses) or the "
                         "projection head's L2-normalised output (what the authors' CIFAR-10 demo monitors)")
    kn.add_argument("--json", help="write the result as JSON to this file")

    li = _eval_parser(sub, "linear", "linear classification protocol on the frozen backbone",
                      f"{cifar} --json linear.json", "labelled ImageFolder (or shards) to train the classifier on",
                      "labelled ImageFolder (or shards) to evaluate on")
    li.add_argument("--epochs", type=int, default=100)
    li.add_argument("--lr", type=float, help="default: 0.1 with --feature-norm bn, the paper's 30 with none")
    li.add_argument("--feature-norm", choices=["bn", "none"], default="bn",
                    help="bn (default): a parameter-free BatchNorm standardises the frozen features, so one lr "
                         "suits every backbone (MAE's linear probing); none: the paper's protocol (lr 30)")
    li.add_argument("--weight-decay", type=float, default=0.0)
    li.add_argument("--batch-size", type=int, default=256)
    li.add_argument("--schedule", choices=["step", "cosine"], default="step", help="step: x0.1 at 60%% and 80%%")
    li.add_argument("--augment", action="store_true",
                    help="train on augmented images (flip + pad-crop at <= 64 px, else random resized crop + "
                         "flip); re-encoded every epoch unless --cached-views; default: cached center-crop features")
    li.add_argument("--cached-views", type=int, default=0, metavar="V",
                    help="with --augment: encode V augmented passes over --train once and cycle through them "
                         "(V feature passes instead of one per epoch; e.g. 10)")
    li.add_argument("--save", help="where to save the classifier (default: linear_classifier.pt beside the checkpoint)")
    li.add_argument("--json", help="write the result as JSON to this file")

    em = _eval_parser(sub, "embed", "backbone features of every image in a folder, to .npz",
                      "--data ~/photos --out photos.npz")
    em.add_argument("--data", required=True, help="an image folder or WebDataset shards")
    em.add_argument("--out", required=True, help=".npz with features, paths (and labels for an ImageFolder)")
    em.add_argument("--normalize", action="store_true", help="L2-normalise the features")

    mp = _eval_parser(sub, "map", "a 2-D map of the backbone's features (t-SNE), coloured by class, with thumbnails",
                      "--data ../shared/datasets/cifar10/test --out map.png   # pip install 'momentum-contrast[map]'")
    mp.add_argument("--data", required=True, help="an image folder (ImageFolder: coloured by class) or shards")
    mp.add_argument("--out", required=True, help="PNG to write")
    mp.add_argument("--max-images", type=int, default=5000, help="map a seeded draw of at most N images (5000)")
    mp.add_argument("--thumbnails", type=int, default=6, metavar="GRID",
                    help="thumbnails on a GRID x GRID lattice over the map, one per cell (default 6; 0: none)")
    mp.add_argument("--seed", type=int, default=0, help="the draw of images and t-SNE's start")

    nb = _eval_parser(sub, "neighbors", "picture of each query image's nearest neighbours in a folder",
                      "--data ../shared/datasets/cifar10/test --query some.jpg --k 8 --out grid.png")
    nb.add_argument("--data", required=True, help="folder (or shards) to search")
    nb.add_argument("--query", required=True, help="an image, or a folder of query images")
    nb.add_argument("--k", type=int, default=8)
    nb.add_argument("--out", required=True, help="PNG to write")


def _add_files(sub: argparse._SubParsersAction) -> None:
    """export, shards, presets and info: commands that write or show files."""
    ex = sub.add_parser("export", help="write the backbone as torchvision, Detectron2, safetensors or ONNX",
                        epilog="examples:\n  moco export --checkpoint runs/r1/checkpoint_last.pt --format torchvision "
                               "--out r18.pth\n  moco export --checkpoint moco_v2_800ep.pth.tar --format detectron2 "
                               "--out r50.pkl\n  moco export --checkpoint runs/r1/checkpoint_last.pt --format onnx "
                               "--out r18.onnx   # pip install 'momentum-contrast[onnx]'\n\n"
                               "ONNX: images (float32, N x 3 x S x S, normalised as the run's metadata says) in,\n"
                               "features out, any batch size; the file is checked against PyTorch in onnxruntime.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--format", required=True, choices=["torchvision", "detectron2", "safetensors", "onnx"])
    ex.add_argument("--out", required=True)

    ps = sub.add_parser("presets", help="list the shipped presets, or print one as a YAML file to copy",
                        epilog="examples:\n  moco presets\n  moco presets cifar10-cpu > my.yaml   # edit, then "
                               "moco pretrain --config my.yaml", formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("name", nargs="?", choices=sorted(PRESETS), metavar="NAME", help="print this preset's file")

    sh = sub.add_parser(
        "shards", help="write a folder of images as WebDataset shards (tar files) for data at scale",
        epilog="examples:\n"
        "  moco shards --data ../shared/datasets/cifar10 --out data/cifar10-shards --shard-size 64MB\n"
        "  moco shards --data ~/photos --out /mnt/store/photos --shard-size 1GB\n\n"
        "A folder holding train/ and test/ (or val/) writes each split: OUT/train-NNNNNN.tar and\n"
        "OUT/test-NNNNNN.tar. Each image keeps its bytes under its relative path (the key), with\n"
        "KEY.cls (its class index) for an ImageFolder; OUT/classes.json names the classes. The\n"
        "command prints the brace pattern of each split.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sh.add_argument("--data", required=True, help="an image folder (ImageFolder or any tree), or a train/ test/ pair")
    sh.add_argument("--out", required=True, help="the folder the shards go to")
    sh.add_argument("--shard-size", default="256MB", help="about this much image data per shard (default 256MB)")
    sh.add_argument("--max-count", type=int, default=100_000, help="at most this many images per shard")
    sh.add_argument("--strict-data", action="store_true", help="stop at the first unreadable image")
    sh.add_argument("--no-progress", action="store_true")

    inf = sub.add_parser("info", help="what a run or checkpoint holds: config, progress, metrics, run health; "
                         "or what this installation can do (--system)",
                         epilog="examples:\n  moco info runs/photos\n  moco info runs/photos/checkpoint_last.pt "
                                "--json\n  moco info --system   # torch, CUDA and GPUs, bf16, cores, extras",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    inf.add_argument("checkpoint", metavar="RUN|CHECKPOINT", nargs="?",
                     help="a run folder (its newest checkpoint) or a checkpoint")
    inf.add_argument("--system", action="store_true",
                     help="the versions, the CPU (bf16, cores, memory), CUDA and its GPUs, and the extras installed")
    inf.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from moco.experiments import BUDGETS, EXPERIMENTS, RUNNERS

    rp = sub.add_parser(
        "reproduce", help="re-run one of the paper's comparisons and write a report",
        epilog="experiments:\n" + "".join(f"  {k:11s} {e.title}\n" for k, e in EXPERIMENTS.items())
        + "  transfer    fine-tuning with 1%, 10%, 100% of the labels, and detection, from MoCo, supervised and\n"
        + "              random init\n"
        + "  all         every experiment in turn\n\nexamples:\n"
        "  moco reproduce momentum --data ../shared/datasets/cifar10 --out reports/momentum\n"
        "  moco reproduce mechanisms --data data/cifar10 --out reports/mechanisms --budget paper\n"
        "  moco reproduce all --data ../shared/datasets/cifar10 --out reports --dry-run\n\n"
        "Each setting is a pretraining run kept under --runs, named by a hash of its config: settings\n"
        "shared by experiments run once, finished ones are skipped, and an interrupted one resumes\n"
        "when the same command is run again.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("experiment", choices=[*EXPERIMENTS, *RUNNERS, "all"], metavar="EXPERIMENT",
                    help=f"one of {', '.join([*EXPERIMENTS, *RUNNERS])}, or all")
    rp.add_argument("--data", help="folder with train/ and test/ ImageFolders (default: as for pretrain)")
    rp.add_argument("--out", help="where report.md and the plots go (default: reports/EXPERIMENT)")
    rp.add_argument("--runs", default="runs/reproduce", help="where the runs are kept (default: runs/reproduce)")
    rp.add_argument("--budget", choices=sorted(BUDGETS), default="small",
                    help="small: minutes per setting on a CPU; paper: the CIFAR-10 demo recipe, 200 epochs")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of the budget's recipe for every run, e.g. --set data.max_images=10000")
    rp.add_argument("--dry-run", action="store_true", help="list the settings and their run folders, run nothing")
    rp.add_argument("--no-progress", action="store_true")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moco", description="Momentum Contrast (MoCo) self-supervised pretraining.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_pretrain, _add_finetune, _add_detect, _add_segment, _add_evaluate, _add_evaluation, _add_files,
                _add_reproduce):
        add(sub)
    return p



def _launch(nproc: int, argv: list[str]) -> int:
    """``moco pretrain|finetune|detect --nproc N ...``: the same command in N processes
    (:func:`moco.core.launch.launch`); a ``--time-budget`` counts from this process's start."""
    from moco.core.launch import launch
    from moco.training.budget import JOB_START_ENV, process_start

    started = time.time() - (time.perf_counter() - process_start())
    return launch(nproc, argv, {JOB_START_ENV: os.environ.get(JOB_START_ENV, f"{started:.3f}")})


def _result(res: Any) -> int:
    """A training command's ending: 130 when it stopped before the end (resume it), else its summary (rank 0)."""
    if res.stopped:
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(res.summary()))
    return 0


def _pretrain(a: argparse.Namespace) -> int:
    from moco.config import check_budget, check_overrides, dump_yaml
    from moco.tasks.pretrain import pretrain, pretrain_config
    from moco.training.budget import parse_duration, process_start

    if a.time_budget and a.epochs:
        raise ConfigError("--time-budget and --epochs both set how long to train; give one of them")
    if a.time_budget and a.replay_plan:
        raise ConfigError("--replay-plan follows a recorded plan without the clock; drop --time-budget")
    flags: dict[str, Any] = {
        "optim.time_budget": parse_duration(a.time_budget) if a.time_budget else None,
        "optim.epochs": a.epochs, "optim.batch_size": a.batch_size, "optim.lr": a.lr, "data.workers": a.workers,
        "train.seed": a.seed, "data.max_images": a.max_images, "train.device": a.device,
        "data.strict": True if a.strict_data else None, "data.samples_per_epoch": a.samples_per_epoch,
    }
    out = _pretrain_out(a)
    data = a.data or default_data()  # a folder, or WebDataset shards (a pattern, a URL: kept as text)
    preset = a.preset
    if a.replay_plan and not a.preset and not a.config:  # the replayed run's own settings: bit for bit
        a.config = str(_replayed_config(Path(a.replay_plan)))
    check_overrides(a.set)  # a misspelt --set is refused before the data is read to choose a recipe
    check_budget(flags["optim.time_budget"] or 0)
    recipe = _recipe_for(a, data, out)
    if not preset and not a.config:
        preset = recipe.preset if recipe else "cifar10-cpu"
    cfg, _ = pretrain_config(preset, a.config, flags, a.set, out, a.resume,
                                   recipe.settings if recipe else None)
    if a.print_config:
        if recipe is not None:
            print("\n".join(f"# {line}" for line in recipe.lines()))
        print(dump_yaml(cfg), end="")
        return 0
    if data is None:
        raise ConfigError("no --data given and none of $MOCO_DATA, ./data/cifar10, ../shared/datasets/cifar10 exists")
    return _result(pretrain(cfg, data, out, resume=a.resume, overwrite=a.overwrite, knn_train=a.knn_train,
                            knn_test=a.knn_test, progress=not a.no_progress, knn=not a.no_knn,
                            replay_plan=a.replay_plan, started=process_start(), recipe=recipe))


def _pretrain_out(a: argparse.Namespace) -> Path:
    """The pretraining run's folder: ``--out``, else runs/PRESET, else runs/pretrain."""
    return Path(a.out) if a.out else Path("runs") / (a.preset or "pretrain")


RECIPE_ENV = "MOCO_RECIPE"  # the recipe `moco pretrain --nproc N` chose once, handed to its N processes (JSON)


def _recipe_for(a: argparse.Namespace, data: str | Path | None, out: Path) -> Any:
    """The recipe chosen for ``--data`` on this machine (:func:`moco.tasks.recipe.auto_recipe`), or None when a
    preset, a config file, a replay or a resume decides, or there is no data. Chosen once for ``--nproc``: the
    launcher's choice reaches its processes in ``$MOCO_RECIPE``."""
    from moco.config import user_value
    from moco.presets.auto import Recipe
    from moco.tasks.pretrain import resumes
    from moco.training.budget import parse_duration

    if a.preset or a.config or a.replay_plan or data is None or resumes(out, a.resume):
        return None
    if os.environ.get(RECIPE_ENV):
        return Recipe(**json.loads(os.environ[RECIPE_ENV]))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun give --preset or --config: each process would measure the machine and "
                          "could choose another recipe (`moco pretrain --nproc N` chooses once for all of them)")
    from moco.tasks.recipe import auto_recipe

    budget = parse_duration(a.time_budget) if a.time_budget else None
    batch = user_value("optim.batch_size", {"optim.batch_size": a.batch_size}, a.set)  # checked: an int
    return auto_recipe(data, budget, a.device or "auto", a.nproc or 1, a.max_images or 0,
                       batch=int(batch) if batch else None)


def _replayed_config(path: Path) -> Path:
    """The config.yaml of the run ``--replay-plan`` names (its folder, or the folder of its checkpoint)."""
    found = (path if path.is_dir() else path.parent) / "config.yaml"
    if not found.is_file():
        raise ConfigError(f"--replay-plan {path}: no config.yaml beside it; give the run's settings with --config")
    return found


def _finetune(a: argparse.Namespace) -> int:
    from moco.tasks.finetune import finetune
    from moco.training.budget import parse_duration, process_start

    if a.labels and a.labels_file:
        raise ConfigError("--labels draws a subset and --labels-file names one; give one of them")
    flags = _transfer_flags(a)
    if not a.resume and not (a.data or a.train):
        data = default_data()
        if data is None:
            raise ConfigError("no --data given and none of $MOCO_DATA, ./data/cifar10, ../shared/datasets/cifar10 "
                              "exists")
        a.data = str(data)
    return _result(finetune(a.checkpoint, a.data, Path(a.out or "runs/finetune"), a.labels, a.init,
                            train_dir=a.train, test_dir=a.test, labels_file=a.labels_file, epochs=a.epochs,
                            time_budget=parse_duration(a.time_budget) if a.time_budget else None,
                            overrides=a.set, config_file=a.config, flags=flags, resume=a.resume,
                            overwrite=a.overwrite, progress=not a.no_progress, started=process_start()))


def _detect(a: argparse.Namespace) -> int:
    from moco.tasks.detect import detect
    from moco.training.budget import parse_duration, process_start

    return _result(detect(a.checkpoint, a.train_ann, a.train_images, a.val_ann, a.val_images,
                          Path(a.out or "runs/detect"), a.init, epochs=a.epochs,
                          time_budget=parse_duration(a.time_budget) if a.time_budget else None, overrides=a.set,
                          config_file=a.config, flags=_transfer_flags(a), resume=a.resume, overwrite=a.overwrite,
                          progress=not a.no_progress, started=process_start()))


def _segment(a: argparse.Namespace) -> int:
    from moco.tasks.segment import segment
    from moco.training.budget import parse_duration, process_start

    return _result(segment(a.checkpoint, a.train_images, a.train_masks, a.val_images, a.val_masks,
                           Path(a.out or "runs/segment"), a.init, train_ann=a.train_ann, val_ann=a.val_ann,
                           train_list=a.train_list, val_list=a.val_list, classes=a.classes, epochs=a.epochs,
                           time_budget=parse_duration(a.time_budget) if a.time_budget else None, overrides=a.set,
                           config_file=a.config, flags=_transfer_flags(a), resume=a.resume, overwrite=a.overwrite,
                           progress=not a.no_progress, started=process_start()))


def _evaluate(a: argparse.Namespace) -> int:
    import shlex

    from moco.experiments.evaluate import evaluate
    from moco.training.budget import parse_duration, process_start

    data = a.data
    if not (a.resume or a.report_only or data or a.train):
        data = default_data()
        if data is None:
            raise ConfigError("no --data given and none of $MOCO_DATA, ./data/cifar10, ../shared/datasets/cifar10 "
                              "exists")
    res = evaluate(a.checkpoint, data, Path(a.out or "runs/evaluate"), train_dir=a.train, test_dir=a.test,
                   labels=a.labels, seeds=a.seeds, baselines=a.baseline,
                   time_budget=parse_duration(a.time_budget) if a.time_budget else None,
                   each=parse_duration(a.each) if a.each else None, epochs=a.epochs, overrides=a.set,
                   frozen=not a.no_frozen, resume=a.resume, overwrite=a.overwrite, report_only=a.report_only,
                   progress=not a.no_progress, started=process_start(),
                   command=shlex.join(["moco", "evaluate", *a.argv]))
    return _result(res)


def _eval_setup(a: argparse.Namespace, head: bool = False) -> tuple[Any, int, Any, Any, Callable[[str], Any]]:
    """Model on its device (the backbone, or with ``head`` the query encoder with its projection head as
    ``fc``), image size, device, its config, and a function decoding a folder for evaluation."""
    import torch

    from moco.core.precision import pick_device
    from moco.data import sets
    from moco.data.sides import cache_side
    from moco.export.backbone import load_backbone_and_config, load_encoder_and_config

    model, cfg = (load_encoder_and_config if head else load_backbone_and_config)(a.checkpoint)
    size = a.image_size or cfg.data.image_size
    device = pick_device(a.device)
    model = model.to(device, memory_format=torch.channels_last)
    side = cache_side(size)

    def decode(data: str) -> Any:  # a folder or WebDataset shards -> DecodedImages
        return sets.decode(data, side, workers=a.workers, progress=not a.no_progress)

    return model, size, device, cfg, decode


def _said(res: dict[str, Any], line: str, json_path: str | None) -> int:
    """An evaluation's ending: its line, and its result as JSON when ``--json`` asks."""
    print(line)
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _knn(a: argparse.Namespace) -> int:
    from moco.evaluation.knn import evaluate_knn

    model, size, device, cfg, decode = _eval_setup(a, head=a.features == "head")
    train, test = decode(a.train), decode(a.test)
    res = evaluate_knn(model, train, test, size, device, a.precision, a.k, a.t, progress=not a.no_progress,
                       norm=cfg.data.normalize, features=a.features)
    res = {**res, "checkpoint": str(a.checkpoint), "train": str(a.train), "test": str(a.test)}
    return _said(res, f"kNN (k={a.k}, t={a.t}, {a.features} features) top-1 {res['top1']:.2f}%  top-5 "
                      f"{res['top5']:.2f}%  ({res['n_train']} train, {res['n_test']} test)", a.json)


def _linear(a: argparse.Namespace) -> int:
    import torch

    from moco.evaluation.linear import LinearConfig, linear_eval

    lc = LinearConfig.checked(a.epochs, a.lr, a.feature_norm, a.weight_decay, a.batch_size, a.schedule, a.augment,
                              a.cached_views)
    backbone, size, device, cfg, decode = _eval_setup(a)
    train, test = decode(a.train), decode(a.test)
    res, clf = linear_eval(backbone, train, test, size, device, lc, a.precision, progress=not a.no_progress,
                           norm=cfg.data.normalize)
    save = Path(a.save) if a.save else Path(a.checkpoint).with_name("linear_classifier.pt")
    weight, bias = clf.folded()  # the feature BatchNorm folded in: logits = features @ weight.T + bias
    torch.save({"weight": weight, "bias": bias, "classes": train.images.classes, **res}, save)
    res = {**res, "checkpoint": str(a.checkpoint), "classifier": str(save)}
    return _said(res, f"linear top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  ({res['epochs']} epochs, "
                      f"{res['seconds']:.0f}s; classifier saved to {save})", a.json)


def _embed(a: argparse.Namespace) -> int:
    from moco.evaluation.knn import extract_features
    from moco.evaluation.retrieval import save_embeddings

    backbone, size, device, cfg, decode = _eval_setup(a)
    data = decode(a.data)
    feats = extract_features(backbone, data, size, device, a.precision, normalize=a.normalize,
                             norm=cfg.data.normalize,
                             progress=not a.no_progress)
    out = save_embeddings(feats, data, a.out)
    print(f"wrote {out}: {feats.shape[0]} x {feats.shape[1]} features")
    return 0


def _map(a: argparse.Namespace) -> int:
    from moco.evaluation.feature_map import EXTRA, draw_map, feature_map
    from moco.evaluation.knn import extract_features

    if a.max_images < 5 or a.thumbnails < 0:
        raise ConfigError(f"--max-images must be >= 5 and --thumbnails >= 0, got {a.max_images} and {a.thumbnails}")
    try:
        import openTSNE  # noqa: F401 - before any work: a missing extra is one line
    except ImportError:
        raise ConfigError(EXTRA) from None
    backbone, size, device, cfg, decode = _eval_setup(a)
    data = decode(a.data)
    feats = extract_features(backbone, data, size, device, a.precision, norm=cfg.data.normalize,
                             progress=not a.no_progress)
    fmap = feature_map(feats, a.max_images, a.thumbnails, a.seed)
    name = Path(a.checkpoint).parent.name or Path(a.checkpoint).stem
    out = draw_map(fmap, data, a.out, f"{name}: {len(fmap.index)} images of {a.data} (t-SNE of the backbone's "
                                      "features)")
    print(f"wrote {out}: {len(fmap.index)} images, {len(fmap.thumbnails)} thumbnails")
    return 0


def _neighbors(a: argparse.Namespace) -> int:
    from moco.evaluation.retrieval import nearest, neighbors_grid, query_images

    if a.k < 1:
        raise ConfigError(f"--k must be >= 1, got {a.k}")
    from moco.data.sides import cache_side

    backbone, size, device, cfg, decode = _eval_setup(a)
    data = decode(a.data)
    paths, queries = query_images(a.query, cache_side(size))
    sims, idx = nearest(backbone, data, queries, size, device, a.k, a.precision, cfg.data.normalize)
    out = neighbors_grid(paths, queries, data, sims, idx, a.out)
    print(f"wrote {out}: {len(paths)} quer{'y' if len(paths) == 1 else 'ies'} x {idx.shape[1]} neighbours")
    return 0


def _export(a: argparse.Namespace) -> int:
    from moco.export.formats import export_backbone, export_onnx_backbone
    from moco.export.onnx import TOLERANCE

    if a.format != "onnx":
        print(f"wrote {export_backbone(a.checkpoint, a.format, a.out)} ({a.format})")
        return 0
    out, check, size = export_onnx_backbone(a.checkpoint, a.out)
    print(f"wrote {out} (onnx, images {size} px, batch axis dynamic); onnxruntime against PyTorch "
          f"on batches of {' and '.join(map(str, check.batches))}: largest difference {check.max_abs_diff:.2e} "
          f"({check.relative:.1e} of the features' scale)")
    if not check.ok:
        print(f"moco: error: {out}: the features differ from PyTorch's by more than {TOLERANCE:.0e} of their scale: "
              "do not deploy it; please report the checkpoint's architecture", file=sys.stderr)
        return 1
    return 0


def _shards(a: argparse.Namespace) -> int:
    from moco.data.shards import parse_size, write_folder

    written = write_folder(Path(a.data).expanduser(), Path(a.out).expanduser(), parse_size(a.shard_size),
                           a.max_count, a.strict_data, not a.no_progress)
    for prefix, res in written:
        print(f"{prefix if prefix != 'shard' else 'images'}: {res.samples} images in {res.shards} shard(s): "
              f"{res.pattern}")
    return 0


def _info(a: argparse.Namespace) -> int:
    from moco.config import from_dict
    from moco.core.checkpoint_files import load_checkpoint, require_moco_checkpoint
    from moco.methods import describe
    from moco.tasks.recipe import read_recipe

    if a.system:
        from moco.core.system import system_lines, system_report

        report = system_report()
        print(json.dumps(report, indent=2) if a.json else "\n".join(system_lines(report)))
        return 0
    if a.checkpoint is None:
        raise ConfigError("moco info needs a run folder or a checkpoint (or --system)")
    path = _run_checkpoint(Path(a.checkpoint))
    ck = require_moco_checkpoint(load_checkpoint(path), path)
    cfg = ck["config"]
    health = _health_line(path.parent, ck) if ck.get("task", "pretrain") == "pretrain" else None
    info = {
        "checkpoint": str(path), "format": ck["format"], "epoch": ck["epoch"],
        "epochs": cfg["optim"]["epochs"], "step": ck["step"], "epoch_step": ck.get("epoch_step", 0),
        "n_images": ck.get("n_images"), "metrics": ck.get("metrics", {}), "health": health, "config": cfg,
        "recipe": read_recipe(path.parent),
    }
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    m = cfg["model"]
    print(f"checkpoint  {path}")
    state = f"epoch {ck['epoch']}/{cfg['optim']['epochs']}, step {ck['step']}"
    if ck.get("epoch_step"):
        state += f" (stopped {ck['epoch_step']} steps into epoch {ck['epoch'] + 1})"
    print(f"progress    {state}")
    print(f"model       {m['arch']} width {m['width']}{' cifar stem' if m['cifar_stem'] else ''}, "
          f"{m['head']} head -> {m['dim']}, BN splits {m['bn_splits']}")
    full = from_dict(cfg)
    c = full.method
    print(f"method      {c.dictionary}: {describe(full, ck.get('n_images') or 0)}, T={c.T}"
          f"{', symmetric' * c.symmetric}{', no shuffle BN' * (not c.shuffle_bn)}")
    print(f"optim       batch {cfg['optim']['batch_size']}, lr {cfg['optim']['lr']}, {cfg['optim']['schedule']}")
    _task_lines(ck, cfg)
    if ck.get("n_images") and ck.get("task") in ("detect", "segment"):  # images keep their sizes; their own views
        print(f"data        {ck['n_images']} images")
    elif ck.get("n_images"):
        print(f"data        {ck['n_images']} images, {cfg['data']['image_size']} px, {cfg['data']['augmentation']} aug")
    if info["recipe"]:
        print(f"recipe      chosen for the data: {info['recipe'].get('summary', '')}")
        for key, why in (info["recipe"].get("reasons") or {}).items():
            print(f"              {key}: {why}")
    if health is not None:
        print(f"health      {health}")
    for k, v in (ck.get("metrics") or {}).items():
        if k != "type":
            print(f"  {k:14s} {v:.4f}" if isinstance(v, float) else f"  {k:14s} {v}")
    return 0


def _task_lines(ck: dict[str, Any], cfg: dict[str, Any]) -> None:
    """``moco info``'s line for a transfer run: what it fine-tuned, detected or segmented, from what."""
    if ck.get("task") == "finetune":
        lab = ck.get("labels", {})
        print(f"fine-tuned  {ck.get('init')} init{' from ' + ck['source'] if ck.get('source') else ''}, "
              f"{len(ck.get('classes') or [])} classes, {lab.get('images')} labelled images "
              f"({lab.get('spec') or lab.get('file')})")
    if ck.get("task") == "detect":
        d = cfg.get("detect", {})
        kind = "Keypoint" if ck.get("keypoints") else "Mask" if ck.get("masks") else "Faster"
        print(f"detector    {kind} R-CNN, {ck.get('init')} init"
              f"{' from ' + ck['source'] if ck.get('source') else ''}, {len(ck.get('categories') or [])} categories, "
              f"shorter side {d.get('min_size')}, trained on {ck.get('data', {}).get('train_ann')}")
    if ck.get("task") == "segment":
        sc = cfg.get("segment", {})
        print(f"segmenter   {sc.get('head')} head at output stride {ck.get('stride')}, {ck.get('init')} init"
              f"{' from ' + ck['source'] if ck.get('source') else ''}, {len(ck.get('classes') or [])} classes, "
              f"crops of {sc.get('crop_size')} px")


def _run_checkpoint(path: Path) -> Path:
    """``path``, or for a run folder its newest checkpoint."""
    if not path.is_dir():
        return path
    from moco.training.checkpoint import latest_checkpoint

    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} holds no checkpoint yet")
    return found


def _health_line(run: Path, ck: dict[str, Any]) -> str | None:
    """Run health read off the run folder's metrics.jsonl (all of it: a running run's latest records too)."""
    from moco.config import from_dict
    from moco.evaluation.health import diagnose, setting_for, summary
    from moco.models.vit import VITS
    from moco.training.logging import read_metrics

    records = read_metrics(run / "metrics.jsonl")
    if not records:
        return None
    done = ck["step"] - ck.get("epoch_step", 0)
    steps_per_epoch = done // ck["epoch"] if ck["epoch"] else max(ck.get("epoch_step", 0), 1)
    cfg = from_dict(ck["config"])
    setting = setting_for(cfg, steps_per_epoch, ck.get("world_size", 1), batchnorm=cfg.model.arch not in VITS)
    return summary(diagnose(records, setting), records)


def _presets(a: argparse.Namespace) -> int:
    from moco.presets import describe, preset_path

    if a.name:
        print(preset_path(a.name).read_text(), end="")
        return 0
    width = max(map(len, PRESETS))
    for name in sorted(PRESETS):
        print(f"{name:{width}s}  {describe(name)}")
    print(f"\nfiles: {preset_path('x').parent}; copy one, edit it and pass it with --config")
    return 0


def _reproduce(a: argparse.Namespace) -> int:
    from moco.experiments import reproduce

    data = Path(a.data) if a.data else default_data()
    if data is None:
        raise DataError("no --data given and none found ($MOCO_DATA, ./data/cifar10, ../shared/datasets/cifar10)")
    if not data.is_dir():
        raise DataError(f"data folder not found: {data}")
    out = Path(a.out) if a.out else Path("reports") / ("" if a.experiment == "all" else a.experiment)
    path = reproduce(a.experiment, data, out, Path(a.runs), a.budget, a.set, not a.no_progress, a.dry_run)
    if path is None and not a.dry_run:
        return 130
    if path is not None:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        trains = ("pretrain", "finetune", "detect", "segment")
        if args.command in trains and args.nproc and "WORLD_SIZE" not in os.environ:
            if args.command == "pretrain":  # the recipe chosen once, here, for every process
                recipe = _recipe_for(args, args.data or default_data(), _pretrain_out(args))
                if recipe is not None:
                    from moco.tasks.recipe import recipe_record

                    os.environ[RECIPE_ENV] = json.dumps(recipe_record(recipe))
            return _launch(args.nproc, argv)
        args.argv = argv[1:]
        if getattr(args, "logger", None):  # --logger mlflow --logger wandb: the setting train.loggers
            args.set.append(f"train.loggers=[{','.join(dict.fromkeys(args.logger))}]")
        commands = {"pretrain": _pretrain, "finetune": _finetune, "detect": _detect, "segment": _segment,
                    "evaluate": _evaluate, "knn": _knn, "linear": _linear, "embed": _embed, "map": _map,
                    "neighbors": _neighbors, "export": _export, "shards": _shards, "info": _info,
                    "reproduce": _reproduce, "presets": _presets}
        return commands[args.command](args)
    except ConfigError as e:
        print(f"moco: error: {escaped(str(e))}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, TrainingError) as e:
        if os.environ.get("MOCO_DEBUG"):
            raise
        print(f"moco: error: {escaped(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moco: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from moco.core.distributed import lost_peer

        why = None if os.environ.get("MOCO_DEBUG") else lost_peer(e)
        if why is None:
            raise
        print(f"moco: rank {rank} stopped, another process is gone: {escaped(why)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
