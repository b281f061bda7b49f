"""A real ``moco pretrain`` process stopped by SIGTERM or SIGKILL resumes to the same weights as an unbroken run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from moco.tasks.pretrain import pretrain
from moco.training.checkpoint import load_checkpoint

OVERRIDES = ["optim.epochs=5", "optim.batch_size=4", "method.K=40", "train.log_every=1"]


def cli_args(tmp_path: Path, data: Path, out: Path) -> list[str]:
    cfg = tiny_config(tmp_path, *OVERRIDES)
    sets = []
    for section in ("model", "method", "data", "optim", "train"):
        for k, v in vars(getattr(cfg, section)).items():
            sets += ["--set", f"{section}.{k}={v}"]
    return [sys.executable, "-m", "moco", "pretrain", "--data", str(data), "--out", str(out), "--no-progress", *sets]


def wait_for(pred, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_exactly(tmp_path, tiny_data, sig):
    ref = tmp_path / "ref"
    pretrain(tiny_config(tmp_path, *OVERRIDES), tiny_data, ref, progress=False)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cli_args(tmp_path, tiny_data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        if sig == signal.SIGKILL:  # at a random moment after the first checkpoint
            wait_for(lambda: (out / "checkpoint_last.pt").exists() or proc.poll() is not None)
            time.sleep(random.Random(0).uniform(0.0, 1.5))
        else:  # mid-epoch: after a few logged steps
            wait_for(lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text()
                                                                      .splitlines()) >= 3 or proc.poll() is not None)
        if proc.poll() is not None:
            pytest.skip("the run finished before it could be interrupted")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, err
        assert "checkpoint saved" in err and "--resume auto" in err
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped = load_checkpoint(out / "checkpoint_last.pt")  # intact whatever the moment of the kill
    assert stopped["step"] < 5 * 12
    done = subprocess.run(cli_args(tmp_path, tiny_data, out) + ["--resume", "auto"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(ref / "checkpoint_last.pt")["model"]
    b = load_checkpoint(out / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
