"""Transfer: fine-tuning a pretrained backbone on a labelled task (``finetune``), on the training machinery,
and choosing the labels it learns from (``labels``)."""

from moco.transfer.finetune import RECIPE, FinetuneResult, finetune
from moco.transfer.labels import balanced_subset, read_labels, write_labels

__all__ = ["RECIPE", "FinetuneResult", "balanced_subset", "finetune", "read_labels", "write_labels"]
