"""Distributed pretraining on CPU with gloo: two processes behave as one process with the same global batch."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_config

from moco.config import ConfigError
from moco.tasks.pretrain import pretrain
from moco.training.checkpoint import load_checkpoint
from moco.training.loop import NO_BUFFER_SYNC

# Width 8, not the tiny default 4: torchrun runs each process on one thread, and with one thread torch 2.14's
# CPU convolutions on 4-channel channels_last tensors corrupt the heap on AVX2-only CPUs (a torch bug).
COMMON = ["optim.batch_size=16", "method.K=48", "train.precision=fp32", "train.log_every=1", "optim.epochs=2",
          "model.width=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(tmp_path: Path, data: Path, out: Path, *overrides: str, nproc: int = 2) -> list[str]:
    sets = [x for o in (*COMMON, *overrides) for x in ("--set", o)]
    base = ["--set", "model.width=4", "--set", "train.precision=bf16",
            "--set", "data.image_size=16", "--set", "data.workers=0",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.checkpoint_every=1"]
    return [sys.executable, "-m", "moco", "pretrain", "--nproc", str(nproc), "--data", str(data), "--out", str(out),
            "--no-progress", *base, *sets]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def step_losses(out: Path) -> list[float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["type"] == "step"]


def params(ck: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ck["model"].items() if "running_" not in k and "num_batches" not in k}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, tiny_data):
    """Same global batch (16), same seed; 2 splits of split BN in one process == per-process BN in two."""
    one = tmp_path / "one"
    pretrain(tiny_config(tmp_path, *COMMON, "model.bn_splits=2"), tiny_data, one, progress=False)
    two = tmp_path / "two"
    env = {**os.environ, "MASTER_PORT": str(free_port())}
    r = subprocess.run(cli(tmp_path, tiny_data, two, "model.bn_splits=1"), capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    l1, l2 = step_losses(one), step_losses(two)
    assert len(l1) == len(l2) == 6
    # the first steps agree to float precision; then rounding noise (different reduction order) slowly grows
    assert l1[:3] == pytest.approx(l2[:3], rel=1e-4, abs=1e-4)
    assert l1 == pytest.approx(l2, rel=1e-2)
    # Weights: float reduction order differs between the runs, and rounding noise grows fast in this tiny network.
    # The yardstick is the same one-process run with another thread count, which differs only by that noise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        pretrain(tiny_config(tmp_path, *COMMON, "model.bn_splits=2"), tiny_data, tmp_path / "noise", progress=False,
                 knn=False)
    finally:
        torch.set_num_threads(threads)

    def max_rel_diff(x: Path, y: Path) -> float:
        a, b = params(load_checkpoint(x / "checkpoint_last.pt")), params(load_checkpoint(y / "checkpoint_last.pt"))
        return max(((a[k] - b[k]).float().norm() / a[k].float().norm().clamp(min=1e-12)).item() for k in a)

    noise = max_rel_diff(one, tmp_path / "noise")
    assert max_rel_diff(one, two) <= 3 * noise + 1e-4, (max_rel_diff(one, two), noise)
    # the 2-process checkpoint is an ordinary checkpoint: moco knn evaluates it
    r = subprocess.run([sys.executable, "-m", "moco", "knn", "--checkpoint", str(two / "checkpoint_last.pt"),
                        "--train", str(tiny_data / "train"), "--test", str(tiny_data / "test"), "--k", "5",
                        "--no-progress", "--workers", "0"], capture_output=True, text=True)
    assert r.returncode == 0 and "top-1" in r.stdout, r.stderr[-2000:]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from moco.core.distributed import concat_all_gather, init_distributed
    from moco.tasks.pretrain import build_training, contrastive_step
    from moco.training.loop import train_step
    from moco.training.task import StepModule

    dinfo, device = init_distributed("cpu")
    cfg = tiny_config(Path(tmp), *COMMON)
    torch.manual_seed(0)
    model, opt, scaler = build_training(cfg, device)
    net = torch.nn.parallel.DistributedDataParallel(StepModule(model, contrastive_step), **NO_BUFFER_SYNC)
    gen = torch.Generator().manual_seed(1)
    g_data = torch.Generator().manual_seed(100 + rank)  # each rank its own images
    for _ in range(3):
        x1, x2 = (torch.randn(8, 3, 16, 16, generator=g_data) for _ in range(2))
        train_step(net, opt, scaler, (x1, x2, None), gen, "fp32", device)
    flat = torch.cat([p.detach().flatten() for p in model.encoder_q.parameters()])
    queues = concat_all_gather(model.queue.unsqueeze(0))
    ptrs = concat_all_gather(model.queue_ptr.view(1))
    flats = concat_all_gather(flat.unsqueeze(0))
    if dinfo.is_main:
        torch.save({"queues": queues, "ptrs": ptrs, "flats": flats}, Path(tmp) / "dist.pt")
    dist.destroy_process_group()


def test_queues_and_weights_identical_on_all_ranks(tmp_path):
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    res = torch.load(tmp_path / "dist.pt", weights_only=True)
    assert torch.equal(res["queues"][0], res["queues"][1])
    assert res["ptrs"].tolist() == [3 * 16 % 48] * 2  # both ranks' keys went in: 16 per step
    assert torch.equal(res["flats"][0], res["flats"][1])  # gradients were all-reduced


def test_global_batch_must_divide(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="must divide by the number of processes"):
        pretrain(tiny_config(tmp_path, *COMMON), tiny_data, tmp_path / "r", progress=False)


@pytest.mark.slow
def test_sigterm_stops_all_ranks_and_resume_with_one_process(tmp_path, tiny_data):
    """SIGTERM to the workers (as a cluster scheduler sends it): every rank stops at the same step and rank 0
    saves; one process then finishes the run."""
    ref = tmp_path / "ref"
    pretrain(tiny_config(tmp_path, *COMMON, "optim.epochs=20", "model.bn_splits=2"), tiny_data, ref, progress=False)
    out = tmp_path / "run"
    env = {**os.environ, "MASTER_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cli(tmp_path, tiny_data, out, "optim.epochs=20", "model.bn_splits=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not (out / "checkpoint_0001.pt").exists():
        assert proc.poll() is None and time.time() - t0 < 300, "run ended before it could be interrupted"
        time.sleep(0.05)
    workers = children(proc.pid)  # moco --nproc runs torchrun's launcher itself: the workers are its children
    assert len(workers) == 2
    for w in workers:
        os.kill(w, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    ck = load_checkpoint(out / "checkpoint_last.pt")
    assert ck["step"] < 60 and ck["world_size"] == 2, err[-2000:]
    cfg = tiny_config(tmp_path, *COMMON, "optim.epochs=20", "model.bn_splits=2")
    pretrain(cfg, tiny_data, out, resume="auto", progress=False)
    done = load_checkpoint(out / "checkpoint_last.pt")
    assert (done["epoch"], done["step"]) == (20, 60)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["type"] == "step"] == list(range(1, 61))  # no step lost or repeated
    # the 2-process part follows the 1-process reference; after 60 steps rounding noise has grown, so the
    # end is compared loosely
    l_ref, l_run = step_losses(ref), step_losses(out)
    stop = ck["step"]
    assert l_run[:stop] == pytest.approx(l_ref[:stop], rel=1e-3, abs=1e-3)
    assert sum(l_run[-6:]) == pytest.approx(sum(l_ref[-6:]), rel=0.1)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_one_line(tmp_path, tiny_data):
    """SIGKILL to one worker (the OOM killer, a node failure): the job ends, and its last stderr line names the
    rank, the signal, the last checkpoint and the command that continues; torchrun's report goes to a file, not
    to the terminal. That command then finishes the run."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = cli(tmp_path, tiny_data, out, "optim.epochs=30", "model.bn_splits=1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not (out / "checkpoint_0001.pt").exists():
        assert proc.poll() is None and time.time() - t0 < 300, "run ended before it could be interrupted"
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 2
    ranks = {int(dict(kv.split("=", 1) for kv in Path(f"/proc/{w}/environ").read_text().split("\0") if "=" in kv)
                  ["RANK"]): w for w in workers}
    os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "ChildFailedError" not in err and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("moco: error:")]
    assert len(errors) == 1, err[-3000:]
    ck = load_checkpoint(out / "checkpoint_last.pt")
    assert f"rank 1 killed by SIGKILL; last checkpoint: epoch {ck['epoch']}, step {ck['step']}" in errors[0]
    cont = errors[0].split("; continue with: moco ", 1)[1]
    assert cont.split()[:3] == ["pretrain", "--nproc", "2"] and cont.endswith("--resume auto")
    assert "Signal 9 (SIGKILL)" in (out / "torchrun_error.txt").read_text()
    assert err.splitlines()[-1] == f"moco: torchrun's report is in {out / 'torchrun_error.txt'}"


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_a_step_saves_and_names_the_command_to_continue(tmp_path, tiny_data):
    """Ctrl-C reaches the whole process group: the launcher and both workers. The workers finish their step and
    rank 0 saves (the launcher's relayed SIGINT does not cut that short); the job ends with one line, status
    130; that command finishes the run."""
    out = tmp_path / "run"
    argv = cli(tmp_path, tiny_data, out, "optim.epochs=30", "model.bn_splits=1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    t0 = time.time()
    while not (out / "checkpoint_0002.pt").exists():
        assert proc.poll() is None and time.time() - t0 < 300, "run ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    ck = load_checkpoint(out / "checkpoint_last.pt")
    assert ck["epoch"] < 30 and ck["world_size"] == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"moco: interrupted by SIGINT; last checkpoint: epoch {ck['epoch']}, step {ck['step']}")
    cont = last.split("; continue with: moco ", 1)[1]
    r = subprocess.run([sys.executable, "-m", "moco", *shlex.split(cont)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    done = load_checkpoint(out / "checkpoint_last.pt")
    assert (done["epoch"], done["step"]) == (30, 90)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["type"] == "step"] == list(range(1, 91))  # no step lost or repeated


@pytest.mark.slow
def test_two_processes_of_two_workers_stream_uneven_shards_each_key_once(tmp_path, tiny_data):
    """`--nproc 2` with 2 loader workers each on 6 uneven shards that split evenly between the ranks (24 + 24):
    both ranks run the same steps and every key is trained on exactly once an epoch, across ranks and workers
    (keys traced as they train). An uneven split loses at most the imbalance: tests/test_stream.py."""
    import tarfile

    files = sorted((tiny_data / "train").rglob("*.png"))
    shards = tmp_path / "shards"
    shards.mkdir()
    start = 0
    for j, n in enumerate([14, 4, 10, 6, 8, 6]):  # 48 images
        with tarfile.open(shards / f"u-{j}.tar", "w") as tf:
            for f in files[start:start + n]:
                tf.add(f, arcname=f"{f.parent.name}/{f.stem}.png")
        start += n
    out, trace = tmp_path / "run", tmp_path / "trace"
    trace.mkdir()
    env = {**os.environ, "MASTER_PORT": str(free_port()), "MOCO_TRACE_KEYS": str(trace)}
    r = subprocess.run(cli(tmp_path, shards, out, "optim.batch_size=8", "data.workers=2", "train.eval_every=0"),
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [[line.split(" ", 1) for line in (trace / f"keys-rank{k}.txt").read_text().splitlines()] for k in (0, 1)]
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    steps = [rec["step"] for rec in records if rec["type"] == "step"]
    assert len(ranks[0]) == len(ranks[1]) == 4 * steps[-1] and steps[-1] == 2 * 6  # 2 epochs, 4 samples a rank a step
    epochs: dict[str, list[str]] = {}
    for seed, key in ranks[0] + ranks[1]:
        epochs.setdefault(seed, []).append(key)
    assert len(epochs) == 2
    names = {f"{f.parent.name}/{f.stem}" for f in files}
    for keys in epochs.values():
        assert len(keys) == len(set(keys)) == 48 and set(keys) == names  # each key once


def test_the_failure_line_names_the_worker_that_failed_first_and_says_when_there_is_no_checkpoint(tmp_path):
    """torchrun stops the survivors of a failure with SIGTERM: the worker that exited with an error status is the
    cause, not them; a killed worker (SIGKILL: the OOM killer) is the cause before the others' error exits."""
    from types import SimpleNamespace as F

    from moco.core.launch import cause, failure_line

    term, kill = -int(signal.SIGTERM), -int(signal.SIGKILL)
    assert cause({0: F(exitcode=term, timestamp=5), 1: F(exitcode=1, timestamp=6)})[0] == 1
    assert cause({0: F(exitcode=1, timestamp=4), 1: F(exitcode=kill, timestamp=6)})[0] == 1
    assert cause({0: F(exitcode=2, timestamp=7), 1: F(exitcode=1, timestamp=6)})[0] == 1
    assert cause({0: F(exitcode=term, timestamp=3), 1: F(exitcode=term, timestamp=3)})[0] == 0
    empty = tmp_path / "run"
    empty.mkdir()
    assert failure_line(1, 1, ["pretrain", "--out", str(empty)]) == (
        f"rank 1 exited with status 1; no checkpoint in {empty} yet")


@pytest.mark.slow
def test_finetune_runs_in_two_processes_and_a_failed_worker_is_named(tmp_path, tiny_data):
    """`moco finetune --nproc 2` trains with the global batch split between the processes; a batch that does not
    divide is refused in one line; a worker that exits with an error (a missing checkpoint, found only in the
    workers) ends the job with its own error and the launcher's line naming it, not the SIGTERMed other."""
    from conftest import fake_checkpoint

    fake_checkpoint(tmp_path / "ck.pt")
    base = [sys.executable, "-m", "moco", "finetune", "--nproc", "2", "--data", str(tiny_data), "--epochs", "1",
            "--no-progress", "--set", "train.precision=bf16", "--set", "data.workers=0"]
    env = {**os.environ, "MASTER_PORT": str(free_port())}
    r = subprocess.run([*base, "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "ft"),
                        "--batch-size", "8"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 24 and res["top1"] is not None  # 48 images x 4 passes (20 steps at least), batch 8
    assert load_checkpoint(tmp_path / "ft" / "checkpoint_last.pt")["world_size"] == 2
    r = subprocess.run([*base, "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "odd"),
                        "--batch-size", "7"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1 and "optim.batch_size (7) is the global batch and must divide by the number of " \
        "processes (2)" in r.stderr, r.stderr[-3000:]
    r = subprocess.run([*base, "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "none"),
                        "--batch-size", "8"], capture_output=True, text=True, env=env, timeout=600)
    errors = [line for line in r.stderr.splitlines() if line.startswith("moco: error:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"checkpoint not found: {tmp_path / 'nope.pt'}" in errors[0]
    assert errors[-1].startswith("moco: error: rank ") and " exited with status 1; no checkpoint in " in errors[-1]


def _stream_resume_worker(rank: int, world: int, ports: list[int], tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    tmp_path = Path(tmp)
    cfg = tiny_config(tmp_path, *COMMON, "data.workers=1", "data.pipeline=per_image", "train.eval_every=0")
    runs = [("full", {}), ("part", {"max_steps": 4}), ("part", {"resume": "auto"})]
    for port, (name, kw) in zip(ports, runs):  # each run joins and leaves its own process group
        os.environ["MASTER_PORT"] = str(port)
        pretrain(cfg, tmp_path / "shards", tmp_path / name, progress=False, knn=False, **kw)


@pytest.mark.slow
def test_two_processes_resume_a_stream_from_every_ranks_reader_positions(tmp_path, tiny_data):
    """Two processes (a loader worker each) on shards with an unreadable sample each, stopped mid-epoch and resumed: the
    checkpoint holds both ranks' reader positions, and the resumed run ends on the weights of the run that was
    not stopped (computing positions as if nothing had failed would shift the rest of the epoch)."""
    import tarfile

    files = sorted((tiny_data / "train").rglob("*.png"))
    (tmp_path / "shards").mkdir()
    start = 0
    for j, n in enumerate([14, 4, 10, 6, 8, 6]):
        with tarfile.open(tmp_path / "shards" / f"u-{j}.tar", "w") as tf:
            for i, f in enumerate(files[start:start + n]):
                if i == 1:  # the second sample of every shard cannot be decoded
                    broken = tmp_path / "broken.png"
                    broken.write_bytes(b"not an image")
                    tf.add(broken, arcname=f"{f.parent.name}/{f.stem}.png")
                else:
                    tf.add(f, arcname=f"{f.parent.name}/{f.stem}.png")
        start += n
    ports = [free_port() for _ in range(3)]
    mp.start_processes(_stream_resume_worker, args=(2, ports, str(tmp_path)), nprocs=2, start_method="spawn")
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] == 6 and b["world_size"] == 2
    assert len(b["stream"]["positions"]) == 2 and b["stream"]["workers"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
