"""What the transfer tasks (fine-tuning, detection) share: their models (a classifier, a detector), where their
networks start (``--init``), their config from the pretrained network and a recipe, and the labels a run
learns from."""

from moco.transfer.classifier import Classifier, Transfer
from moco.transfer.init import init_network, parse_init
from moco.transfer.labels import balanced_subset, read_labels, write_labels

__all__ = ["Classifier", "Transfer", "balanced_subset", "init_network", "parse_init", "read_labels", "write_labels"]
