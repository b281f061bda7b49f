"""`--logger mlflow` and `--logger wandb`: each tracker receives the config, every metrics.jsonl record at its step
and the final results, offline; an interrupted run resumes into the same tracker run; a missing extra is one line."""

import glob
import json
import struct
import sys

import pytest

from moco.cli import main
from moco.tasks.pretrain import pretrain
from moco.training.logging import read_metrics
from moco.training.trackers import TRACKERS, result_record, result_scalars, scalars
from tests.conftest import tiny_config


def _pretrain(tmp_path, data, logger, max_steps=None, resume=None):
    cfg = tiny_config(tmp_path, f"train.loggers=[{logger}]", "optim.epochs=2")
    return pretrain(cfg, data, tmp_path / "run", progress=False, max_steps=max_steps, resume=resume)


def _expected(run):
    """What metrics.jsonl says each tracker should hold: {name: {step: value}}."""
    out: dict[str, dict[int, float]] = {}
    for rec in read_metrics(run / "metrics.jsonl"):
        for k, v in scalars(rec).items():
            out.setdefault(k, {})[rec.get("step", 0)] = v
    return out


def test_the_registry_names_what_the_cli_offers():
    assert set(TRACKERS) == {"mlflow", "wandb"}


def test_mlflow_gets_config_records_and_results_and_a_resumed_run_continues_the_same_run(
        tmp_path, tiny_data, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    first = _pretrain(tmp_path, tiny_data, "mlflow", max_steps=5)  # interrupted mid-epoch
    assert first.stopped
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    res = _pretrain(tmp_path, tiny_data, "mlflow", resume="auto")
    assert not res.stopped and res.step == 12
    assert json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"] == run_id  # the same run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run" and run.data.tags["moco.task"] == "pretrain"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params["optim.lr"] == "0.06" and run.data.params["train.loggers"] == "['mlflow']"
    expected = _expected(tmp_path / "run")
    assert {"step/loss", "epoch/loss", "epoch/knn_top1"} <= set(expected)
    for name, by_step in expected.items():  # both sessions' records, each at its step, none twice
        got = {m.step: m.value for m in client.get_metric_history(run_id, name)}
        assert got == pytest.approx(by_step), name
        assert len(client.get_metric_history(run_id, name)) == len(by_step)
    final = result_scalars(result_record(res))
    assert final["result/metrics/knn_top1"] == res.metrics["knn_top1"] and final["result/step"] == 12
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "run" / "tb"))
    tb.Reload()  # TensorBoard gets the same records under the same names, both sessions
    for name, by_step in expected.items():
        assert {e.step: e.value for e in tb.Scalars(name)} == pytest.approx(by_step, rel=1e-6), name
    assert {k: run.data.metrics[k] for k in final} == pytest.approx(final)


def _wandb_records(path):
    """The protobuf Records of a W&B transaction log (run-ID.wandb). wandb ships no reader for it: the file is a
    7-byte W&B header, then LevelDB's log format (32 KiB blocks of chunks: crc32 4 bytes, length 2, kind 1;
    FULL=1, FIRST=2, MIDDLE=3, LAST=4), each whole chunk run one serialised Record."""
    from wandb.proto import wandb_internal_pb2

    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        buf, pos = buf + raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _key(item):
    return item.key or "/".join(item.nested_key)  # wandb stores "step/loss" as the nested key [step, loss]


def test_wandb_logs_offline_without_a_key_and_a_resumed_run_keeps_its_id(tmp_path, tiny_data, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no login: offline
    assert _pretrain(tmp_path, tiny_data, "wandb", max_steps=5).stopped
    res = _pretrain(tmp_path, tiny_data, "wandb", resume="auto")
    assert not res.stopped
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["wandb"]
    logs = sorted(glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(logs) == 2 and all(p.endswith(f"run-{run_id}.wandb") for p in logs)  # both sessions, one run id
    history: dict[str, dict[int, float]] = {}
    summary: dict[str, float] = {}
    config = {}
    for path in logs:
        for rec in _wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                row = {_key(i): json.loads(i.value_json) for i in rec.history.item}
                for k, v in row.items():
                    if not k.startswith("_"):
                        history.setdefault(k, {})[row["_step"]] = v
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    expected = _expected(tmp_path / "run")
    assert {"step/loss", "epoch/knn_top1"} <= set(expected)
    for name, by_step in expected.items():
        assert history[name] == pytest.approx(by_step), name
    final = result_scalars(result_record(res))
    assert {k: summary[k] for k in final} == pytest.approx(final)
    assert config["optim.lr"] == 0.06 and config["model.width"] == 4 and config["train.loggers"] == ["wandb"]


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_tracker_extra_is_one_line_that_names_it_before_anything_runs(tmp_path, tiny_data, capsys,
                                                                                monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    code = main(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--logger", name,
                 "--set", "model.width=4", "--set", "data.image_size=16", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"moco: error: --logger {name} needs the optional extra: pip install " \
                                f"'momentum-contrast[{name}]'"
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
