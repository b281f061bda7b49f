"""``moco reproduce``: the paper's comparisons as experiments, each one command and one report.

One module per experiment (its settings, verdict and plot: ``mechanisms``, ``momentum``, ``queue_size``,
``shuffle_bn``, ``symmetric``) over a shared runner (``runner``) and report writer (``report``); ``base``
holds what they share and ``registry`` lists them. ``transfer`` runs fine-tunes of its own and writes its
own report.
"""

from moco.experiments.base import BUDGETS, Budget, Experiment, Setting
from moco.experiments.registry import EXPERIMENTS, RUNNERS
from moco.experiments.runner import reproduce, run_dir, run_setting, setting_config

__all__ = ["BUDGETS", "EXPERIMENTS", "RUNNERS", "Budget", "Experiment", "Setting", "reproduce", "run_dir",
           "run_setting", "setting_config"]
