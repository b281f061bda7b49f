"""WebDataset shards: `moco shards` writes a folder in WebDataset's layout (read back here by the webdataset
library itself), and every form of --data that names shards resolves to the right files."""

import io
import json
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import make_image_folder, tiny_config
from PIL import Image

from moco.cli import main
from moco.core.errors import ConfigError, DataError
from moco.data.folder import scan_images
from moco.data.shards import is_shard_spec, parse_size, resolve_shards, sample_key, write_shards
from moco.tasks.pretrain import pretrain
from moco.training.checkpoint import load_checkpoint
from moco.training.logging import read_metrics


def read_back(pattern: str) -> dict[str, dict]:
    """Every sample of the shards, by key, as the webdataset library reads them (raw bytes)."""
    return {s["__key__"]: s for s in wds.WebDataset(pattern, shardshuffle=False, empty_check=False)}


def test_shards_of_an_image_folder_hold_each_image_once_with_its_bytes_and_class(tmp_path, capsys):
    data = tmp_path / "data"
    make_image_folder(data / "train", classes=3, per_class=20, size=16, seed=0)
    make_image_folder(data / "test", classes=3, per_class=4, size=16, seed=1)
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "sh"), "--shard-size", "4kB",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    patterns = {line.split(":")[0]: line.rsplit(": ", 1)[1] for line in printed}
    assert set(patterns) == {"train", "test"}
    for split, n in (("train", 60), ("test", 12)):
        shards = resolve_shards(patterns[split])
        assert len(shards) > 1 and shards == sorted(str(p) for p in (tmp_path / "sh").glob(f"{split}-*.tar"))
        for shard in shards:  # a shard ends with the sample that takes its bytes past 4 kB
            with tarfile.open(shard) as tf:
                sizes: dict[str, int] = {}
                for m in tf.getmembers():
                    sizes[m.name.split(".")[0]] = sizes.get(m.name.split(".")[0], 0) + m.size
                    assert m.pax_headers == {}  # one header a member: half the parsing of pax-dated members
            assert sum(list(sizes.values())[:-1]) < 4000 <= sum(sizes.values()) or shard == shards[-1]
        samples = read_back(patterns[split])
        images = scan_images(data / split)
        assert len(samples) == n
        for rel, label in zip(images.paths, images.labels):
            s = samples[rel.rsplit(".", 1)[0]]
            assert s["png"] == (data / split / rel).read_bytes()
            assert int(s["cls"]) == label
    assert json.loads((tmp_path / "sh" / "classes.json").read_text()) == ["class0", "class1", "class2"]
    assert not (tmp_path / "sh" / ".partial").exists()


def test_a_plain_tree_gets_keys_without_classes_and_dotted_names_keep_one_key(tmp_path):
    root = tmp_path / "photos"
    (root / "2024.trip").mkdir(parents=True)
    for name in ("a.png", "img.v2.png", "2024.trip/b.png"):
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / name)
    res = write_shards(scan_images(root), tmp_path / "sh", 10**6, progress=False)
    assert (res.shards, res.samples) == (1, 3)
    samples = read_back(res.pattern)
    assert set(samples) == {"a", "img_v2", "2024.trip/b"}
    assert all("png" in s and "cls" not in s for s in samples.values())
    assert sample_key("x/y.z.jpeg") == "x/y_z"
    assert not (tmp_path / "sh" / "classes.json").exists()


def test_an_unreadable_image_is_skipped_and_counted_or_refused_when_strict(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=2, per_class=5, size=8)
    (data / "class1" / "000.png").write_bytes(b"not a png")
    res = write_shards(scan_images(data), tmp_path / "sh", 10**6, progress=False)
    assert res.samples == 9 and [p for p, _ in res.skipped] == ["class1/000.png"]
    assert "class1/000" not in read_back(res.pattern)
    code = main(["shards", "--data", str(data), "--out", str(tmp_path / "strict"), "--strict-data",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "unreadable image" in err[0] and "000.png" in err[0]
    assert not list((tmp_path / "strict").glob("*.tar"))  # nothing torn left among finished shards


def test_two_files_with_one_key_and_a_second_write_are_refused_in_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "a.jpg", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / name)
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "sh"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would share the key 'a'" in err[0]
    (data / "a.jpg").unlink()
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "ok"), "--no-progress"]) == 1
    assert "already holds 1 shard(s)" in capsys.readouterr().err


def test_brace_patterns_directories_lists_and_urls_resolve(tmp_path):
    d = tmp_path / "sh"
    d.mkdir()
    for i in range(3):
        with tarfile.open(d / f"part-{i:03d}.tar", "w"):
            pass
    files = [str(d / f"part-{i:03d}.tar") for i in range(3)]
    assert resolve_shards(str(d / "part-{000..002}.tar")) == files
    assert resolve_shards(d) == files
    assert resolve_shards(files[1]) == [files[1]]
    lst = d / "shards.txt"
    lst.write_text("# my shards\npart-000.tar\n\n" + files[2] + "\npipe:curl -s https://example.org/x-0.tar\n")
    assert resolve_shards(lst) == [files[0], files[2], "pipe:curl -s https://example.org/x-0.tar"]
    assert resolve_shards("https://example.org/x-{0..1}.tar") == ["https://example.org/x-0.tar",
                                                                  "https://example.org/x-1.tar"]
    assert all(is_shard_spec(x) for x in (d, lst, files[0], str(d / "part-{000..002}.tar"), "pipe:cat x.tar"))
    assert not is_shard_spec(make_image_folder(tmp_path / "imgs", per_class=2))
    with pytest.raises(DataError, match=r"shard not found: .*part-003.tar \(and 1 more of 5\)"):
        resolve_shards(str(d / "part-{000..004}.tar"))
    with pytest.raises(DataError, match="no .tar shards in"):
        resolve_shards(tmp_path / "imgs")
    with pytest.raises(DataError, match="no such shard"):
        resolve_shards(tmp_path / "nowhere.tar")


def test_shard_sizes_read_as_people_write_them():
    assert parse_size("256MB") == 256 * 10**6
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("4096") == 4096
    for bad in ("big", "12 parsecs", "0MB"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def shard_data(tmp_path: Path, per_class: int = 24) -> tuple[Path, Path]:
    """(the folder, its shards): 2 classes of 16-px images in train/ (``per_class`` each) and test/ (8 each),
    written by `moco shards` 8 KB a shard, so that the training set spans several uneven shards."""
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=per_class, seed=0)
    make_image_folder(data / "test", per_class=8, seed=1)
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "shards"), "--shard-size", "8kB",
                 "--no-progress"]) == 0
    return data, tmp_path / "shards"


# width 8 in fp32, as test_distributed (width 4 fp32 hits a torch CPU bug); per_image: PIL views, as shards make
STREAM = ["model.width=8", "train.precision=fp32", "data.pipeline=per_image", "optim.epochs=2", "train.eval_every=1"]


def break_first_image(shard: Path) -> None:
    """Replace the first image of ``shard`` with bytes no decoder reads."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    broken = next(m.name for m, _ in members if m.name.endswith(".png"))
    with tarfile.open(shard, "w") as tf:
        for m, body in members:
            if m.name == broken:
                body = b"broken"
                m.size = len(body)
            tf.addfile(m, io.BytesIO(body))


@pytest.mark.parametrize("workers", [0, 2])
def test_pretraining_from_shards_trains_every_sample_and_resumes_exactly(tmp_path, workers, caplog):
    """One process takes 8 x 6 samples an epoch from uneven shards of 48 (batch 8: as many steps as the folder
    gives), and a run from shards stopped mid-epoch, after unreadable samples, continues to the same weights as
    one that was not. (That shards *learn* as the folder does is benchmarks/shards_cpu.py's comparison.)"""
    _, shards = shard_data(tmp_path)
    for shard in sorted(shards.glob("train-*.tar")):  # unreadable samples before the resume point: passed over
        break_first_image(shard)
    cfg = tiny_config(tmp_path, *STREAM, f"data.workers={workers}", "data.shuffle_buffer=16")
    full = pretrain(cfg, shards, tmp_path / "full", progress=False)
    recs = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["type"] == "epoch"]
    spe = recs[0]["step"]
    assert spe == 48 // 8 and full.step == 2 * spe
    part = pretrain(cfg, shards, tmp_path / "part", progress=False, max_steps=spe + 2)
    assert part.stopped
    with caplog.at_level(logging.WARNING, logger="moco"):
        pretrain(cfg, shards, tmp_path / "part", resume="auto", progress=False)
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["stream"]["processes"] == 1 and a["stream"]["workers"] == max(1, workers)
    assert "read by" not in caplog.text
    if workers:  # resumed mid-epoch with another number of workers: said to be approximate
        other = tiny_config(tmp_path, *STREAM, "data.workers=0", "data.shuffle_buffer=16")
        pretrain(other, shards, tmp_path / "other", progress=False, max_steps=spe + 1)
        with caplog.at_level(logging.WARNING, logger="moco"):
            pretrain(cfg, shards, tmp_path / "other", resume="auto", progress=False)
        assert re.search(r"read by 1 process\(es\) x 1 worker\(s\), now by 1 x 2: the rest of epoch \d continues "
                         "approximately", caplog.text)


def test_shards_written_with_plain_tarfile_and_a_url_train(tmp_path):
    """The format is WebDataset's: shards that tarfile wrote (no classes.json) train, and a `pipe:` URL
    streams once --samples-per-epoch says how long an epoch is."""
    src = make_image_folder(tmp_path / "imgs", per_class=16, seed=3)
    shard = tmp_path / "plain.tar"
    with tarfile.open(shard, "w") as tf:
        for f in sorted(src.rglob("*.png")):
            tf.add(f, arcname=f"{f.parent.name}/{f.stem}.png")
            cls = tmp_path / "c.cls"
            cls.write_text(str(int(f.parent.name[-1])))
            tf.add(cls, arcname=f"{f.parent.name}/{f.stem}.cls")
    cfg = tiny_config(tmp_path, *STREAM, "data.workers=0")
    res = pretrain(cfg, str(shard), tmp_path / "run", progress=False, knn_train=str(shard), knn_test=str(shard))
    # the .cls labels were read: with them misread (one class) the kNN of these two colours would be 50%
    assert res.step == 2 * (32 // 8) and res.metrics["knn_top1"] >= 90
    url = f"pipe:cat {shard}"
    with pytest.raises(DataError, match="its length is unknown, so set data.samples_per_epoch"):
        pretrain(cfg, url, tmp_path / "url", progress=False, knn=False)
    res = pretrain(tiny_config(tmp_path, *STREAM, "data.workers=0", "data.samples_per_epoch=24"), url,
                   tmp_path / "url2", progress=False, knn=False)
    assert res.step == 2 * 3


def test_a_corrupt_member_is_skipped_and_counted_and_refused_when_strict(tmp_path):
    data, shards = shard_data(tmp_path)
    break_first_image(sorted(shards.glob("train-*.tar"))[0])
    cfg = tiny_config(tmp_path, *STREAM, "data.workers=0")
    pretrain(cfg, shards, tmp_path / "run", progress=False)
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    assert recs[-1]["files_lost"] == 1
    for workers in (0, 2):  # from a loader worker too, the error is one line, not the worker's traceback
        with pytest.raises(DataError, match="^unreadable shard data: .*train-000000.tar:class0/0") as e:
            pretrain(tiny_config(tmp_path, *STREAM, f"data.workers={workers}", "data.strict=true"), shards,
                     tmp_path / f"s{workers}", progress=False)
        assert "\n" not in str(e.value)


def test_the_device_path_decodes_shard_jpegs_on_the_training_device_and_resumes_exactly(tmp_path, monkeypatch):
    """data.pipeline=device with shards: the workers pass the JPEG bytes on, the device decodes a batch at a
    time and augments it (the device pipeline's path), and a run stopped mid-epoch continues to the same
    weights (the draws come from the checkpointed generator)."""
    import moco.data.stream as stream

    data = tmp_path / "data"
    for split, seed, n in (("train", 0, 24), ("test", 1, 8)):
        make_image_folder(data / split, per_class=n, seed=seed)
        for f in (data / split).rglob("*.png"):
            Image.open(f).save(f.with_suffix(".jpg"), quality=95)
            f.unlink()
    assert main(["shards", "--data", str(data), "--out", str(tmp_path / "shards"), "--shard-size", "8kB",
                 "--no-progress"]) == 0
    shards = tmp_path / "shards"
    jpegs = []
    real = stream.decode_on_device
    monkeypatch.setattr(stream, "decode_on_device",
                        lambda items, *a: jpegs.extend(t.dim() == 1 for t in items) or real(items, *a))
    cfg = tiny_config(tmp_path, *STREAM, "data.pipeline=device", "data.workers=2", "data.shuffle_buffer=16")
    full = pretrain(cfg, shards, tmp_path / "full", progress=False)
    assert len(jpegs) == full.step * 8 and all(jpegs)  # every trained image reached the device as JPEG bytes
    part = pretrain(cfg, shards, tmp_path / "part", progress=False, max_steps=full.step // 2 + 1)
    assert part.stopped
    pretrain(cfg, shards, tmp_path / "part", resume="auto", progress=False)
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_an_empty_shard_list_an_unreadable_folder_and_too_few_samples_get_one_line(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("# no shard yet\n")
    bad = tmp_path / "bad" / "train" / "c0"
    bad.mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (bad / name).write_bytes(b"not an image")
    make_image_folder(tmp_path / "small", per_class=3)
    assert main(["shards", "--data", str(tmp_path / "small"), "--out", str(tmp_path / "small-shards"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    cases = [
        (["pretrain", "--data", str(tmp_path / "list.txt")], "list.txt lists no shards"),
        (["shards", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "none")],
         "none of the 2 image files in"),
        (["pretrain", "--data", str(tmp_path / "small-shards"), "--batch-size", "8"],
         "the shards hold 6 sample(s), fewer than one batch of 8 in each of 1 process(es): lower --batch-size"),
    ]
    for i, (argv, message) in enumerate(cases):
        out = [] if argv[0] == "shards" else ["--out", str(tmp_path / f"o{i}"), "--epochs", "1"]
        code = main([*argv, *out, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and message in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "none").exists()


def test_the_data_sets_module_refuses_an_indexed_stream_and_a_too_large_knn_memory(tmp_path):
    """A memory bank keeps a feature per image by index, which a stream has not; the kNN monitor decodes a
    stream's samples whole only up to a limit (the training shards may be huge)."""
    from moco.data import sets

    data, shards = shard_data(tmp_path)
    cfg = tiny_config(tmp_path, *STREAM)
    train, test = sets.split(shards)
    assert sets.is_stream(train) and test is not None and sets.split(data)[1] == data / "test"
    gen, cpu = torch.Generator().manual_seed(0), torch.device("cpu")
    with pytest.raises(ConfigError, match="has no indices"):
        sets.training_source(train, cfg.data, 8, gen, cpu, indexed=True)
    source = sets.training_source(train, cfg.data, 8, gen, cpu)
    assert source.streams and source.total_samples == 48
    with pytest.raises(DataError, match="hold 48 samples, more than the 47"):
        sets.decode_source(source, 16, tmp_path / "cache", 0, limit=47)
    memory = sets.decode_source(source, 16, tmp_path / "cache", 0, limit=48)
    assert len(memory.array) == 48 and memory.images.classes == ["class0", "class1"]
