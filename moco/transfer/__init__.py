"""Transfer: fine-tuning a pretrained backbone on a labelled task (``finetune``) or as a detector's body
(``detect``), on the training machinery, and choosing the labels it learns from (``labels``)."""

from moco.transfer.detect import DetectResult, detect
from moco.transfer.finetune import RECIPE, FinetuneResult, finetune
from moco.transfer.labels import balanced_subset, read_labels, write_labels

__all__ = ["RECIPE", "DetectResult", "FinetuneResult", "balanced_subset", "detect", "finetune", "read_labels",
           "write_labels"]
