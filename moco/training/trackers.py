"""Experiment trackers beside ``metrics.jsonl`` and TensorBoard: MLflow and Weights & Biases.

``train.loggers`` (``--logger mlflow``, ``--logger wandb``) names them. Each gets, from rank 0 only, the run's
config (flattened: ``optim.lr``), every record the run writes to ``metrics.jsonl`` (``step/loss``,
``epoch/knn_top1``, under the same names as TensorBoard's) and the final results, the numbers of the task's
returned result (pretraining's last epoch record as ``result/metrics/knn_top1``, fine-tuning's ``result/top1``). A
run that is interrupted and resumed continues the same tracker run: its id is kept in ``RUN/trackers.json``.

* **MLflow** writes where ``MLFLOW_TRACKING_URI`` points, else to MLflow's default local store (``mlflow.db``,
  a SQLite file in the working directory: ``mlflow ui`` there shows it), in the experiment
  ``MLFLOW_EXPERIMENT_NAME`` (default ``momentum-contrast``). Extra: ``momentum-contrast[mlflow]``.
* **Weights & Biases** logs online when an API key is set up (``WANDB_API_KEY`` or ``wandb login``), else
  offline under ``RUN/wandb`` (``wandb sync`` uploads it later); ``WANDB_MODE`` and ``WANDB_PROJECT`` (default
  ``momentum-contrast``) are honoured. Extra: ``momentum-contrast[wandb]``.

Both are optional extras, imported only when named; a missing one stops the run before it starts, in one
line that names the extra.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import netrc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from moco.core.errors import ConfigError

log = logging.getLogger("moco")
IDS = "trackers.json"


class Tracker(Protocol):
    """One experiment tracker's run: records in, results in, closed at the end."""

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (its numbers, at its ``step``)."""
        ...

    def results(self, results: dict[str, Any], step: int) -> None:
        """The run's final results (:func:`result_record`)."""
        ...

    def close(self, stopped: bool) -> None:
        """End the tracker run: finished, or stopped before the end (it continues on resume)."""
        ...


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists and other leaves kept as they are."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers as TensorBoard and every tracker name them (``step/loss``, ``epoch/knn_top1``);
    ``step`` and ``epoch`` are the axis, not metrics."""
    kind = record.get("type", "step")
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}


def result_scalars(results: dict[str, Any]) -> dict[str, float]:
    """A result's numbers as ``result/...`` (nested keys joined with ``/``)."""
    return {"result/" + k.replace(".", "/"): float(v) for k, v in flatten(results).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTracker:
    """A run in MLflow through its client (no global active run, so runs in one process stay apart)."""

    def __init__(self, config: dict[str, Any], out: Path, task: str, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "momentum-contrast")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        run = self.client.create_run(exp_id, run_name=out.name, tags={"moco.task": task, "moco.out": str(out)})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log(self, record: dict[str, Any]) -> None:
        if values := scalars(record):
            self._metrics(values, int(record.get("step", 0)))

    def results(self, results: dict[str, Any], step: int) -> None:
        if values := result_scalars(results):
            self._metrics(values, step)

    def close(self, stopped: bool) -> None:
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FINISHED")


def _wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """A run in Weights & Biases, offline unless an API key is set up (or ``WANDB_MODE`` says otherwise)."""

    def __init__(self, config: dict[str, Any], out: Path, task: str, run_id: str | None) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key() else "offline")
        if mode == "offline":
            log.info("wandb: no API key set up, so logging offline to %s (`wandb sync` uploads it later)",
                     out / "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "momentum-contrast"), name=out.name,
                              dir=str(out), config=flatten(config), job_type=task, mode=mode, id=run_id,
                              resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))
        self.run_id = self.run.id

    def log(self, record: dict[str, Any]) -> None:
        if values := scalars(record):
            self.run.log(values, step=int(record.get("step", 0)))

    def results(self, results: dict[str, Any], step: int) -> None:
        self.run.summary.update(result_scalars(results))

    def close(self, stopped: bool) -> None:
        self.run.summary["stopped"] = stopped
        self.run.finish()


TRACKERS: dict[str, tuple[Callable[[dict[str, Any], Path, str, str | None], Tracker], str]] = {
    "mlflow": (MlflowTracker, "mlflow"),
    "wandb": (WandbTracker, "wandb"),
}
"""``train.loggers`` name -> (the tracker, the module its extra provides; the extra has the name's name)."""


def require_trackers(names: list[str]) -> None:
    """Stop before the run starts when a named tracker is unknown or its extra is not installed (one line)."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown logger {name!r}; choose from {', '.join(TRACKERS)}")
        try:
            __import__(TRACKERS[name][1])
        except ImportError:
            raise ConfigError(f"--logger {name} needs the optional extra: pip install "
                              f"'momentum-contrast[{name}]'") from None


def open_trackers(names: list[str], config: dict[str, Any], out: Path, task: str) -> list[Tracker]:
    """Start (or, for a resumed run, continue) a run in each named tracker; their ids go to ``out/trackers.json``."""
    if not names:
        return []
    require_trackers(names)
    path = out / IDS
    ids: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    opened = []
    for name in names:
        tracker = TRACKERS[name][0](config, out, task, ids.get(name))
        ids[name] = tracker.run_id
        opened.append(tracker)
    path.write_text(json.dumps(ids, indent=1) + "\n")
    return opened


def result_record(result: object) -> dict[str, Any]:
    """A task's returned result (a dataclass: pretraining's last epoch record, fine-tuning's top-1) as a dict."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result if isinstance(result, dict) else {}
