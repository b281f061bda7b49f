"""momentum-contrast: Momentum Contrast (MoCo) self-supervised pretraining for PyTorch.

The public API, for your own backbone and your own loop::

    import moco
    model = moco.MoCo.from_backbone(my_backbone, dim=128, K=4096, m=0.99, T=0.1)
    view_q, view_k = moco.augment(uint8_batch, recipe="cifar")
    loss, logits = model(view_q, view_k)          # then backward and step your optimiser

or the whole job (checkpoints, resume, kNN monitor) on any backbone::

    cfg = moco.Config.from_preset("cifar10-cpu", {"optim.epochs": 20})
    result = moco.pretrain(cfg, "path/to/images", "runs/mine", backbone=my_backbone)
    backbone = moco.load_backbone("runs/mine/checkpoint_last.pt", backbone=fresh_copy)

and transfer it to a labelled task, with few labels::

    result = moco.finetune("runs/mine/checkpoint_last.pt", "path/to/labelled", "runs/ft", labels="10%")

or to detection, on COCO-format data (torchvision's Faster R-CNN, COCO AP by pycocotools)::

    result = moco.detect("runs/mine/checkpoint_last.pt", "train.json", "train/", "val.json", "val/", "runs/det")

or to semantic segmentation, on images with label maps (torchvision's DeepLabV3 head, mIoU)::

    result = moco.segment("runs/mine/checkpoint_last.pt", "images/", "maps/", "val/", "val_maps/", "runs/seg")

and ask how many labels pretraining saves on your labelled set (frozen and fine-tuned at 1%, 10%, 100% of the
labels against random init, in one time budget; ``runs/eval/report.md``)::

    result = moco.evaluate("runs/mine/checkpoint_last.pt", "path/to/labelled", "runs/eval", time_budget=7200)
    print(result.lines)
"""

import logging

from moco.config import Config
from moco.core.errors import escaped
from moco.data.augment import two_views as augment
from moco.evaluation.knn import knn_accuracy
from moco.experiments.evaluate import EvaluateResult, evaluate
from moco.export.backbone import load_backbone
from moco.methods import ContrastiveMethod, EndToEnd, MemoryBank, MoCo, MoCoV3
from moco.methods.moco import batch_shuffle, batch_unshuffle, info_nce, update_momentum
from moco.models.generic import Encoder, remove_classifier
from moco.tasks.detect import DetectResult, detect
from moco.tasks.finetune import FinetuneResult, finetune
from moco.tasks.pretrain import RunResult, pretrain
from moco.tasks.segment import SegmentResult, segment

__version__ = "0.1.0"


def _one_line(record: logging.LogRecord) -> bool:
    """Every message of the ``moco`` logger on one line: control characters (a newline in a file name) escaped."""
    record.msg, record.args = escaped(record.getMessage()), None
    return True


logging.getLogger("moco").addFilter(_one_line)

__all__ = [
    "Config", "ContrastiveMethod", "DetectResult", "Encoder", "EndToEnd", "EvaluateResult", "FinetuneResult",
    "MemoryBank", "MoCo", "MoCoV3", "RunResult", "SegmentResult", "__version__", "augment", "batch_shuffle",
    "batch_unshuffle", "detect", "evaluate", "finetune", "info_nce", "knn_accuracy", "load_backbone", "pretrain",
    "remove_classifier", "segment", "update_momentum",
]
