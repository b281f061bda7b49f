"""``train.precision=auto``: bf16 only where the device runs it natively, fp32 elsewhere, and what ran is recorded."""

from __future__ import annotations

import pytest
import torch
import yaml

from moco.core import precision
from moco.core.precision import autocast, resolve_precision
from moco.tasks.pretrain import pretrain
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert resolve_precision("auto", CPU) == expected
    for fixed in ("bf16", "fp16", "fp32"):  # an explicit choice is never second-guessed
        assert resolve_precision(fixed, CPU) == fixed


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_autocast_auto_runs_the_resolved_precision(monkeypatch, native, dtype):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, "auto"):
        assert (a @ b).dtype == dtype


def test_native_bf16_follows_the_cpus_bf16_flags(monkeypatch):
    """bf16 in hardware (AVX512_BF16 on Zen 4 and Cooper Lake, AMX on Sapphire Rapids) runs at speed; an AVX-512
    CPU without it (Ice Lake), which oneDNN accepts, converts around every operation and gets fp32, as does an
    AVX2-only CPU. Checked against /proc/cpuinfo, then against flags given."""
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no x86 /proc/cpuinfo")
    assert precision.native_bf16(CPU) == ("avx512_bf16" in flags or "amx_bf16" in flags)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    ice_lake = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_vbmi2"}
    for cpu, native in ((ice_lake, False), (ice_lake | {"avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                        ({"avx2", "fma"}, False)):
        monkeypatch.setattr(precision, "cpu_flags", lambda cpu=cpu: cpu)
        assert precision.native_bf16(CPU) is native, cpu
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)  # no flags to read: oneDNN's answer
    assert precision.native_bf16(CPU) is True

    def no_onednn() -> bool:
        raise RuntimeError("built without oneDNN")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", no_onednn)
    assert precision.native_bf16(CPU) is False  # a build without oneDNN: fp32
    assert precision.native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_a_run_records_the_precision_it_ran(monkeypatch, tmp_path, tiny_data, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    # width 8: torch 2.14's oneDNN hangs in the backward of 4-channel channels_last convolutions in fp32
    cfg = tiny_config(tmp_path, "train.precision=auto", "model.width=8", "optim.epochs=1")
    pretrain(cfg, tiny_data, tmp_path / "run", progress=False, knn=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["precision"] == expected
    ckpt = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["config"]["train"]["precision"] == expected


def test_the_callers_config_keeps_auto(monkeypatch, tmp_path, tiny_data):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    cfg = tiny_config(tmp_path, "train.precision=auto", "model.width=8", "optim.epochs=1")
    pretrain(cfg, tiny_data, tmp_path / "run", progress=False, knn=False)
    assert cfg.train.precision == "auto"  # resolved for the run, not in the object a library user passed in
