"""Real file systems: links, loops, odd entries, files that change during a run, and the run folder.

Every tree is built by the test in a temporary folder. Failures that root cannot be made to see
(permissions) are injected.
"""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from moco.cli import main
from moco.config import ConfigError
from moco.core.run_lock import LOCK_NAME, RunLock, lock_run_folder
from moco.data.cache import decode_images
from moco.data.folder import DataError, scan_images
from moco.data.pipelines import open_source
from moco.tasks.pretrain import pretrain
from moco.training.logging import read_metrics
from tests.conftest import make_image_folder, tiny_config

TINY = ["--set", "model.width=4", "--set", "train.precision=bf16",
        "--set", "model.bn_splits=2", "--set", "data.image_size=16", "--set",
        "method.K=8", "--batch-size", "8", "--epochs", "1", "--workers", "0", "--no-progress"]


def _images(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (8, 8), (i * 9 % 256, 40, 90)).save(folder / f"{i:03d}.png")
    return folder


# ---------------------------------------------------------------- the scan


def test_symlink_loop_is_entered_once_and_reported(tmp_path, caplog):
    root = _images(tmp_path / "photos", 5)
    _images(root / "sub", 3, start=10)
    os.symlink("..", root / "sub" / "up")  # sub/up -> photos: round and round with os.walk(followlinks=True)
    os.symlink(".", root / "self")
    with caplog.at_level(logging.WARNING, logger="moco"):
        images = scan_images(root)
    assert len(images) == 8 and len(set(images.paths)) == 8
    assert not any("up" in p or "self" in p for p in images.paths)
    assert sorted(images.report.loops) == ["self", "sub/up"]
    assert "skipped 2 symlink loop(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="moco"):  # ranks other than 0: the same report, no lines
        quiet = scan_images(root, warn=False)
    assert quiet.paths == images.paths and sorted(quiet.report.loops) == ["self", "sub/up"] and not caplog.text


def test_link_to_a_sibling_folder_counts_its_images_once(tmp_path, caplog):
    root = tmp_path / "data"
    _images(root / "cats", 4)
    _images(root / "dogs", 3, start=20)
    os.symlink("../cats", root / "dogs" / "also_cats")  # the cats reached again from another class
    with caplog.at_level(logging.WARNING, logger="moco"):
        images = scan_images(root)
    assert images.classes == ["cats", "dogs"] and images.labels == [0] * 4 + [1] * 3
    assert images.report.repeat_dirs == ["dogs/also_cats"] and "already scanned" in caplog.text


def test_two_paths_to_one_file_are_read_once(tmp_path):
    root = _images(tmp_path / "d", 3)
    os.symlink("000.png", root / "link.png")
    os.link(root / "001.png", root / "hard.png")
    images = scan_images(root)
    assert images.paths == ["000.png", "001.png", "002.png"]  # the real names win over the links
    assert sorted(images.report.repeat_files) == ["hard.png", "link.png"]


def test_dangling_link_is_skipped_not_a_crash_and_named_in_strict_mode(tmp_path, caplog):
    root = _images(tmp_path / "d", 4)
    os.symlink("gone.jpg", root / "dangling.jpg")
    with caplog.at_level(logging.WARNING, logger="moco"):
        images = scan_images(root)
        decoded = decode_images(images, 8, tmp_path / "cache", workers=0, progress=False)  # stat of the cache key
    assert len(decoded.array) == 4 and images.report.not_files == [("dangling.jpg", "dangling link")]
    assert "dangling.jpg (dangling link)" in caplog.text
    with pytest.raises(DataError, match=r"dangling\.jpg \(dangling link\)"):
        scan_images(root, strict=True)


def test_only_regular_files_are_images_whatever_their_names(tmp_path):
    root = _images(tmp_path / "d", 3)
    (root / "folder.jpg").mkdir()
    _images(root / "folder.jpg", 1, start=50)  # a directory named like an image is still a directory
    os.mkfifo(root / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.jpg"))
    try:
        images = scan_images(root)
    finally:
        sock.close()
    assert images.paths == ["000.png", "001.png", "002.png", "folder.jpg/050.png"]
    assert dict(images.report.not_files) == {"folder.jpg": "a directory; its contents are scanned",
                                             "pipe.png": "a FIFO", "sock.jpg": "a socket"}
    with pytest.raises(DataError, match="pipe.png|folder.jpg|sock.jpg"):
        scan_images(root, strict=True)


def test_an_entry_that_cannot_be_stat_ed_is_a_bad_file(tmp_path, monkeypatch):
    root = _images(tmp_path / "d", 3)
    os.symlink("000.png", root / "locked.png")
    real_stat = os.stat

    def stat(path, *a, **k):  # root cannot be denied a stat: inject the EACCES a user would get
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", stat)
    images = scan_images(root)
    assert len(images) == 3 and images.report.not_files == [("locked.png", "cannot stat: Permission denied")]


def test_a_folder_that_cannot_be_listed_is_skipped_with_its_reason(tmp_path, monkeypatch):
    root = _images(tmp_path / "d", 2)
    _images(root / "private", 2, start=10)
    real_scandir = os.scandir

    def scandir(path="."):  # root can list anything: inject the EACCES a user would get
        if str(path).rstrip(os.sep).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    images = scan_images(root)
    assert images.paths == ["000.png", "001.png"]
    assert images.report.not_files == [("private", "cannot list: Permission denied")]
    with pytest.raises(DataError, match="private"):
        scan_images(root, strict=True)


@pytest.mark.parametrize("name, match", [("photo.jpg", "a single image"), ("photos.zip", "an archive"),
                                         ("notes.bin", "not a folder"), ("shard.tar", "not a readable tar file")])
def test_data_that_is_a_file_is_one_line_saying_what_data_accepts(tmp_path, capsys, name, match):
    """A .tar is a WebDataset shard (and a .txt a list of them): a broken one is refused like a bad folder."""
    (tmp_path / name).write_bytes(b"x")
    code = main(["pretrain", "--data", str(tmp_path / name), "--out", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err
    assert code == 1 and match in err and "--data takes a folder" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()  # refused before any work


def test_a_shard_list_naming_a_missing_shard_is_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("my holiday\n")
    code = main(["pretrain", "--data", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err
    assert code == 1 and "shard not found" in err and "my holiday" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- files that change after the scan


@pytest.mark.parametrize("pipeline", ["per_image", "device"])
@pytest.mark.parametrize("change", ["deleted", "truncated", "unreadable"])
def test_a_file_that_changes_after_the_scan_is_skipped_for_the_rest_of_the_run(tmp_path, caplog, monkeypatch,
                                                                               pipeline, change):
    root = _images(tmp_path / "d", 8)
    cfg = tiny_config(tmp_path, f"data.pipeline={pipeline}", "optim.batch_size=4")
    images = scan_images(root)
    source = open_source(images, cfg.data, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    victim = root / "003.png"
    if change == "deleted":
        victim.unlink()
    elif change == "truncated":
        victim.write_bytes(victim.read_bytes()[:20])
    else:  # root reads a chmod 000 file anyway: inject the PermissionError a user would get
        real_open = open

        def guarded_open(path, *a, **k):
            if str(path) == str(victim):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr("builtins.open", guarded_open)
        monkeypatch.setattr("pathlib.Path.read_bytes", lambda p: guarded_open(p, "rb").read())
    perm = torch.arange(8)
    with caplog.at_level(logging.WARNING, logger="moco"):
        first = [idx.tolist() for _, _, idx in source.epoch(perm, 0, 16, seed=1)]
        second = [idx.tolist() for _, _, idx in source.epoch(perm, 0, 16, seed=2)]
    assert len(first) == len(second) == 2  # the epochs went on
    assert first[0] == [0, 1, 2, 4] and second[0] == [0, 1, 2, 4]  # the next image took its place, both times
    assert list(source.lost) == [3]
    assert caplog.text.count("003.png could not be read") == 1  # one warning, not one per epoch


def test_files_lost_during_training_are_counted_in_metrics(tmp_path, monkeypatch, caplog):
    make_image_folder(tmp_path / "data" / "train", per_class=12)
    import moco.data.sets as run_module

    real_scan = run_module.scan_images

    def scan_then_delete(*a, **k):  # the folder changes right after the scan
        images = real_scan(*a, **k)
        (images.root / images.paths[5]).unlink()
        return images

    monkeypatch.setattr(run_module, "scan_images", scan_then_delete)
    cfg = tiny_config(tmp_path, "data.pipeline=per_image", "optim.epochs=2")
    with caplog.at_level(logging.WARNING, logger="moco"):
        res = pretrain(cfg, tmp_path / "data", tmp_path / "run", progress=False, knn=False)
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    assert res.epoch == 2 and [r["files_lost"] for r in epochs] == [1, 1]
    assert caplog.text.count("could not be read") == 1


def test_a_file_deleted_before_decoding_is_a_skipped_bad_file(tmp_path, caplog):
    root = _images(tmp_path / "d", 6)
    images = scan_images(root)
    (root / "002.png").unlink()
    with caplog.at_level(logging.WARNING, logger="moco"):
        decoded = decode_images(images, 8, tmp_path / "cache", workers=0, progress=False)
    assert decoded.images.paths == ["000.png", "001.png", "003.png", "004.png", "005.png"]
    assert "skipped 1 unreadable image" in caplog.text and "002.png" in caplog.text


def test_names_with_control_characters_are_quoted_and_escaped_in_every_message(tmp_path, caplog, capsys):
    """A file named with a newline (or an escape code) would split a warning over two lines, or drive the
    terminal; such names are shown quoted with the characters escaped, as ls does."""
    root = _images(tmp_path / "d", 4)
    (root / "new\nline.png").write_bytes(b"not an image")
    (root / "bell\x1b[31m.png").write_bytes(b"not an image either")
    with caplog.at_level(logging.WARNING, logger="moco"):
        decode_images(scan_images(root), 8, tmp_path / "cache", workers=0, progress=False)
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "\x1b" not in warned[0]
    assert "'new\\nline.png'" in warned[0] and "'bell\\x1b[31m.png'" in warned[0]
    code = main(["pretrain", "--data", str(root), "--out", str(tmp_path / "run"), "--strict-data", *TINY])
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert code == 1 and last.startswith("moco: error") and "bell\\x1b[31m.png'" in last, err  # one line


# ---------------------------------------------------------------- the run folder


def test_out_that_is_a_file_or_under_a_file_is_one_line_before_any_work(tmp_path, capsys, tiny_data):
    (tmp_path / "taken").write_text("my notes")
    for out, match in [(tmp_path / "taken", "is a file, not a folder"),
                       (tmp_path / "taken" / "run", "a part of the path is a file")]:
        code = main(["pretrain", "--data", str(tiny_data), "--out", str(out), *TINY])
        err = capsys.readouterr().err
        assert code == 2 and match in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "my notes"


def test_out_in_a_read_only_place_is_one_line(tmp_path, capsys, tiny_data, monkeypatch):
    import pathlib

    real_mkdir, real_write = pathlib.Path.mkdir, pathlib.Path.write_bytes

    def mkdir(self, *a, **k):  # root may write anywhere: inject what a read-only parent gives a user
        if "readonly" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    def write_bytes(self, data):
        if "mounted-ro" in str(self):
            raise OSError(30, "Read-only file system", str(self))
        return real_write(self, data)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    code = main(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "readonly" / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be created: Permission denied" in err and err.strip().count("\n") == 0
    (tmp_path / "mounted-ro").mkdir()
    code = main(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "mounted-ro"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "is not writable: Read-only file system" in err


def test_a_missing_parent_is_created(tmp_path):
    lock = lock_run_folder(tmp_path / "runs" / "deep" / "exp1")
    assert (tmp_path / "runs" / "deep" / "exp1" / LOCK_NAME).is_file()
    lock.release()
    assert not (tmp_path / "runs" / "deep" / "exp1" / LOCK_NAME).exists()


HOLDER = """
import sys, time
from pathlib import Path
from moco.core.run_lock import lock_run_folder
lock_run_folder(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_the_same_out_is_refused_naming_the_first(tmp_path, capsys, tiny_data):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["pretrain", "--data", str(tiny_data), "--out", str(out), *TINY])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another run: PID {holder.pid} on {socket.gethostname()}" in err
        assert err.strip().count("\n") == 0
        assert not (out / "config.yaml").exists()  # the holder's folder is untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path, caplog, tiny_data):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs (killed -9 or crashed, its lock left behind)
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    cfg = tiny_config(tmp_path, "optim.epochs=1")
    with caplog.at_level(logging.WARNING, logger="moco"):
        res = pretrain(cfg, tiny_data, out, progress=False, knn=False)
    assert res.epoch == 1 and f"left by PID {dead.pid}" in caplog.text and "taking over" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_lock_whose_pid_was_reused_is_stale_and_another_hosts_lock_is_respected(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    me = RunLock(out).owner
    (out / LOCK_NAME).write_text(json.dumps({**me, "started_ticks": "1"}))  # our PID, but not our process
    RunLock(out).acquire().release()
    (out / LOCK_NAME).write_text(json.dumps({**me, "host": "elsewhere.example"}))
    with pytest.raises(ConfigError, match="another host"):
        RunLock(out).acquire()


# ---------------------------------------------------------------- all of it at once


def test_pretrain_on_a_messy_folder_warns_once_per_kind_and_trains_on_each_real_image_once(tmp_path, capsys,
                                                                                         caplog):
    root = tmp_path / "messy"
    make_image_folder(root, classes=2, per_class=12)
    os.symlink("..", root / "class0" / "loop")
    os.symlink("../class0", root / "class1" / "sibling")
    os.symlink("missing.jpg", root / "class1" / "dangling.jpg")
    (root / "class1" / "folder.png").mkdir()
    os.symlink("000.png", root / "class0" / "again.png")
    os.mkfifo(root / "class0" / "fifo.jpg")
    with caplog.at_level(logging.INFO, logger="moco"):
        code = main(["pretrain", "--data", str(root), "--out", str(tmp_path / "run"),
                     "--set", f"data.cache_dir={tmp_path / 'c'}", *TINY])
    assert code == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 4, warnings  # odd entries, loops, repeated folders, repeated files: one line each
    assert [w.split(" ", 2)[1] for w in warnings] == ["3", "1", "1", "1"]
    assert "on 24 images" in caplog.text  # 2 classes x 12, each once


@pytest.mark.parametrize("pipeline", ["per_image", "device"])
def test_strict_data_from_a_loader_worker_is_one_line(tmp_path, capsys, pipeline):
    """--strict-data with the pipelines that read in DataLoader workers: torch raises the worker's error again
    with the worker's traceback as its message; the command still prints one line naming the file."""
    root = make_image_folder(tmp_path / "d", per_class=8)
    (root / "class0" / "003.png").write_bytes(b"not an image")
    code = main(["pretrain", "--data", str(root), "--out", str(tmp_path / "run"), "--strict-data", *TINY,
                 "--set", f"data.pipeline={pipeline}", "--set", "data.workers=2", "--set", "optim.batch_size=4"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("moco: error: unreadable image: ") and err.count("003.png") == 2, err
