"""The run folder (``--out``): made writable before any work, and held by one run at a time.

``lock_run_folder(out)`` creates ``out`` (and missing parents), checks that files can be written there,
and takes ``out/.moco.lock``: a file naming the PID, host and start time of the run that holds the
folder. A second run into the same folder is refused with that owner's name; a lock left by a process
that no longer exists (killed, crashed, machine rebooted) is taken over with a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from moco.core.errors import ConfigError

log = logging.getLogger("moco")
LOCK_NAME = ".moco.lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux), so a reused PID is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(owner: dict) -> bool | None:
    """Whether the lock's owner still runs: True/False on this host, None when it cannot be told."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    except (OSError, OverflowError, ValueError):
        return False
    started = owner.get("started_ticks")
    return started is None or _start_time(pid) in (None, started)


def prepare_folder(out: Path) -> None:
    """Create ``out`` (and missing parents) and check it is a writable folder; one line if not."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--out {out}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be created: {e.strerror or e} "
                          f"(its parent {_first_existing(out)} is not writable?)") from None
    probe = out / f".moco-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out} is not writable: {e.strerror or e}") from None


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path


class RunLock:
    """``out/.moco.lock`` held by this process; ``release()`` removes it (only if it is still ours)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started_ticks": _start_time(os.getpid()),
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> RunLock:
        for _ in range(3):  # a stale lock is removed and creation tried again; a racing run may win
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as e:
                raise ConfigError(f"--out {self.path.parent}: cannot write its lock file: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self.held = True
            return self
        raise ConfigError(f"{self.path.parent} is being claimed by another run at the same time; try again")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError):
            owner = {}
        alive = _alive(owner) if owner else False
        if alive is False:
            who = f"PID {owner.get('pid')} on {owner.get('host')}" if owner else "an unreadable lock"
            log.warning("taking over %s: it was left by %s, which is no longer running", self.path, who)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        where = "" if alive else " (another host: if that run has ended, delete the lock file)"
        raise ConfigError(f"{self.path.parent} is in use by another run: PID {owner.get('pid')} on "
                          f"{owner.get('host')} since {owner.get('since')}{where}; lock file {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_folder(out: Path) -> RunLock:
    """Make ``out`` a writable folder and take its lock (see the module docstring)."""
    prepare_folder(out)
    return RunLock(out).acquire()
