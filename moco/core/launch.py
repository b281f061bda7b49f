"""``moco pretrain|finetune|detect --nproc N``: the same command in N processes, by torchrun's own launcher, run in this
process so that a failed worker ends the job with one line (which rank, by what signal or exit status, the
last checkpoint and the command to continue) instead of torchrun's report, which goes to a file in the run."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from moco.core.checkpoint_files import latest_checkpoint, load_checkpoint
from moco.core.errors import CheckpointError, ConfigError, shown

log = logging.getLogger("moco")
REPORT = "torchrun_error.txt"  # torchrun's full failure report, in the run's folder


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N`` / ``--nproc=N``: what each worker runs."""
    rest, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok == "--nproc":
            skip = True
        elif not tok.startswith("--nproc="):
            rest.append(tok)
    return rest


def _flag(argv: list[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def how_it_ended(exitcode: int) -> str:
    """``killed by SIGKILL`` for a negative exit code (a signal), else ``exited with status N``."""
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def where_to_continue(argv: list[str]) -> str:
    """``; last checkpoint: epoch E, step S (PATH); continue with: moco ARGV --resume auto``, or that the run
    folder has no checkpoint yet."""
    out = _flag(argv, "--out")
    ck_path = latest_checkpoint(out) if out else None
    if ck_path is None:
        return f"; no checkpoint in {shown(out)} yet" if out else ""
    try:
        ck = load_checkpoint(ck_path)
        where = f"; last checkpoint: epoch {ck.get('epoch')}, step {ck.get('step')} ({shown(ck_path)})"
    except CheckpointError as e:
        where = f"; the last checkpoint cannot be read ({e})"
    resumes = "--resume" in argv or any(a.startswith("--resume=") for a in argv)
    return f"{where}; continue with: moco {shlex.join(argv if resumes else [*argv, '--resume', 'auto'])}"


def failure_line(rank: int, exitcode: int, argv: list[str]) -> str:
    """The one line a failed job ends with: the rank and how it ended, and :func:`where_to_continue`."""
    return f"rank {rank} {how_it_ended(exitcode)}{where_to_continue(argv)}"


def cause(failures: dict[int, Any]) -> tuple[int, Any]:  # Any: torchrun's ProcessFailure
    """(rank, failure) of the process whose end ended the job: the first killed by a signal other than SIGTERM,
    else the first that exited with an error status, else the first (torchrun stops the survivors of a failure
    with SIGTERM)."""
    def first(which: list[tuple[int, Any]]) -> tuple[int, Any] | None:
        return min(which, key=lambda rf: (rf[1].timestamp, rf[0])) if which else None

    items = list(failures.items())
    return (first([(r, f) for r, f in items if f.exitcode < 0 and f.exitcode != -signal.SIGTERM])
            or first([(r, f) for r, f in items if f.exitcode > 0]) or first(items))


def launch(nproc: int, argv: list[str], job_env: dict[str, str]) -> int:
    """Run ``moco ARGV`` (less ``--nproc``) in ``nproc`` processes on this machine under torchrun's launcher
    (``--standalone``: a free port, one node), with ``job_env`` added to their environment. Returns 0; 1 after
    the failure line when a worker failed (torchrun's report then goes to RUN/torchrun_error.txt); 130 after a
    line when the job was interrupted (SIGINT, SIGTERM: the workers stop at a step and save first)."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    rest = without_nproc(argv)
    log.info("launching %d processes: torchrun --standalone --nproc-per-node=%d -m moco %s", nproc, nproc,
             shlex.join(rest))
    os.environ.update(job_env)
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # its per-worker error lines would come before ours; the report keeps them
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "moco", *rest]))
    except SignalException as e:  # Ctrl-C or a scheduler's SIGTERM: the workers have stopped and saved
        print(f"moco: interrupted by {signal.Signals(e.sigval).name}{where_to_continue(argv)}", file=sys.stderr)
        return 130
    except ChildFailedError as e:
        rank, failure = cause(e.failures)
        print(f"moco: error: {failure_line(rank, failure.exitcode, argv)}", file=sys.stderr)
        out = _flag(argv, "--out")
        if out and Path(out).is_dir():
            (Path(out) / REPORT).write_text(e.format_msg())
            print(f"moco: torchrun's report is in {shown(Path(out) / REPORT)}", file=sys.stderr)
        return 1
    finally:
        elastic.setLevel(level)
    return 0
