"""Streaming shards: shares among processes and workers, every sample once an epoch in one process at any number
of workers, at most the processes' imbalance left out across processes, exact resume (after unreadable members
too), a buffer that mixes, and bad members counted or refused."""

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moco.core.distributed import DistInfo
from moco.core.errors import DataError
from moco.data.shards import count_samples, decode, shard_counts
from moco.data.stream import (
    TRACE_ENV,
    Part,
    ReaderPlan,
    ShardSource,
    TwoViews,
    make_bundles,
    reader_chunks,
    share,
    turns,
)
from moco.schema import DataConfig


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), value % 256, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    """A shard written with plain tarfile: the format is WebDataset's, not the project's."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return str(path)


def uneven_shards(root: Path, sizes: list[int]) -> list[str]:
    """Shards of ``sizes`` samples; sample keys are ``s{shard}/{i}``, each with a PNG and a .cls."""
    root.mkdir(parents=True, exist_ok=True)
    return [write_tar(root / f"s{j}.tar", [m for i in range(n) for m in
                                           ((f"s{j}/{i:04d}.png", png(i)), (f"s{j}/{i:04d}.cls", b"0"))])
            for j, n in enumerate(sizes)]


def key(sample: dict) -> str:
    """The item a test needs: the sample's key, once its image decodes (a bad one raises, as views would)."""
    decode(sample)
    return sample["__key__"]


def plan_keys(plan: ReaderPlan) -> list[list[str]]:
    return [items for items, *_ in reader_chunks(plan, key, strict=False)]


def source(shards: list[str], tmp: Path, workers: int, batch: int, rank: int = 0, world: int = 1,
           **data) -> ShardSource:  # noqa: ANN003
    d = DataConfig(image_size=8, pipeline="per_image", workers=workers, cache_dir=str(tmp / "cache"),
                   augmentation="cifar", **{"shuffle_buffer": 16, **data})
    return ShardSource(shards, d, batch * world, torch.Generator().manual_seed(0), torch.device("cpu"),
                       DistInfo(rank, world, rank))


def epoch_keys(src: ShardSource, trace: Path, seed: int, start: int = 0,
               positions: list[list[int]] | None = None) -> list[list[str]]:
    """The keys of each batch ``src`` gives in the epoch of ``seed`` from ``start`` (traced as they train);
    ``positions`` gets the source's record after each batch."""
    trace.mkdir(parents=True, exist_ok=True)
    out = trace / f"keys-rank{src.dinfo.rank}.txt"
    out.unlink(missing_ok=True)
    n = 0
    for _ in src.epoch(None, start, 8, seed):
        n += 1
        if positions is not None:
            positions.append(src.position())
    keys = [line.split(" ", 1)[1] for line in out.read_text().splitlines()] if n else []
    b = len(keys) // max(n, 1)
    return [keys[i * b:(i + 1) * b] for i in range(n)]


@pytest.fixture
def traced(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace"))
    return tmp_path / "trace"


def test_samples_are_counted_from_the_headers(tmp_path):
    (s,) = uneven_shards(tmp_path, [7])
    assert count_samples(s) == 7
    assert shard_counts([s], tmp_path / "cache") == [7]
    (kept,) = (tmp_path / "cache").glob("shards-*.json")
    kept.write_text("[99]")
    assert shard_counts([s], tmp_path / "cache") == [99]  # the kept count, not a second scan
    uneven_shards(tmp_path, [5])  # the shard changed: counted again
    assert shard_counts([s], tmp_path / "cache") == [5]
    (tmp_path / "not.tar").write_bytes(b"hello" * 200)
    with pytest.raises(DataError, match="not.tar is not a readable tar file"):
        count_samples(tmp_path / "not.tar")


def test_bundles_are_greedy_largest_first_and_strides_take_over_when_they_cannot_balance():
    skewed = [9, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # round-robin would load 13 and 5
    bundles = make_bundles(skewed, 2)
    assert sorted(sum(skewed[i] for i in b) for b in bundles) == [9, 9]
    assert sorted(i for b in bundles for i in b) == list(range(10))
    parts = [Part(i) for i in range(10)]
    assert [sum(p.size(skewed[p.shard]) for p in r) for r in share(parts, skewed, 2)] == [9, 9]
    # bundles of whole shards that cannot come within 5% of each other: every reader reads every shard, in strides
    strided = share([Part(0), Part(1), Part(2)], [10, 10, 10], 2)
    assert strided == [[Part(0, 0, 2), Part(1, 0, 2), Part(2, 0, 2)], [Part(0, 1, 2), Part(1, 1, 2), Part(2, 1, 2)]]
    assert [Part(0, 1, 2).size(10), Part(0, 1, 3).size(10), Part(0, 0, 3).size(10)] == [5, 3, 4]
    assert share([Part(0)], [7], 3) == [[Part(0, r, 3)] for r in range(3)]  # fewer shards than readers
    assert share([Part(0, 1, 2)], [7], 2) == [[Part(0, 1, 4)], [Part(0, 3, 4)]]  # a stride of a stride
    assert len(share(parts, [1] * 10, 4, tolerance=None)) == 4  # unknown lengths: equal numbers of shards


def test_a_loader_serves_its_workers_in_turn_and_drops_each_once_it_is_done():
    # full chunks 3, 1, 2: the turns go w0 w1 w2 | w0 (w1 done) w2 | w0
    assert turns([3, 1, 2], 0) == ([0, 0, 0], 0)
    assert turns([3, 1, 2], 2) == ([1, 1, 0], 2)
    assert turns([3, 1, 2], 4) == ([2, 1, 1], 1)  # next: w1's last chunk, then w2
    assert turns([3, 1, 2], 6)[0] == [3, 1, 2]  # all full chunks given: only the last ones are left
    # and a real DataLoader over uneven workers hands them out in exactly that order
    class Uneven(torch.utils.data.IterableDataset):
        def __iter__(self):
            w = torch.utils.data.get_worker_info().id
            yield from ((w, i) for i in range([4, 2, 3][w]))

    got = [w for w, _ in torch.utils.data.DataLoader(Uneven(), batch_size=None, num_workers=3)]
    assert got == [0, 1, 2, 0, 1, 2, 0, 2, 0]


@pytest.mark.parametrize("workers", [1, 2, 6])
def test_one_process_trains_on_every_key_once_an_epoch_at_any_number_of_workers(tmp_path, traced, workers):
    shards = uneven_shards(tmp_path / "sh", [13, 40, 5, 22, 16])  # 96 samples: 12 batches of 8
    src = source(shards, tmp_path, workers, 8)
    assert src.steps == 12
    for seed in (1, 2):
        batches = epoch_keys(src, traced, seed)
        keys = [k for b in batches for k in b]
        assert len(batches) == 12 and all(len(b) == 8 for b in batches)
        assert Counter(keys) == Counter(f"s{j}/{i:04d}" for j, n in enumerate([13, 40, 5, 22, 16]) for i in range(n))
    # a total that is not a whole number of batches leaves fewer than one batch out, another each epoch
    odd = source(uneven_shards(tmp_path / "odd", [13, 7, 5]), tmp_path, workers, 8)
    epochs = [[k for x in epoch_keys(odd, traced, s) for k in x] for s in (1, 2, 3)]
    assert all(len(e) == len(set(e)) == 24 for e in epochs) and len({frozenset(e) for e in epochs}) > 1


def test_two_processes_run_equal_steps_and_leave_out_no_more_than_their_imbalance(tmp_path, traced):
    sizes = [30, 8, 22, 9, 11, 20]  # 100 samples
    shards = uneven_shards(tmp_path / "sh", sizes)
    ranks = [source(shards, tmp_path, 2, 4, rank=r, world=2) for r in (0, 1)]
    loads = ranks[0].rank_items
    assert sum(loads) == 100 and max(loads) - min(loads) <= 0.05 * 50  # bundles within 5% of each other
    for seed in (3, 4):
        per_rank = [epoch_keys(src, traced, seed) for r, src in enumerate(ranks)]
        assert len(per_rank[0]) == len(per_rank[1]) == ranks[0].steps
        keys = [k for batches in per_rank for b in batches for k in b]
        assert len(keys) == len(set(keys))  # no key twice in an epoch
        assert 100 - len(keys) <= max(loads) - min(loads) + 2 * (4 - 1)  # the imbalance, and < a batch each
    # fewer shards than processes: each process reads both and keeps its stride; nothing is left out
    two = uneven_shards(tmp_path / "two", [12, 12])
    per_rank = [epoch_keys(source(two, tmp_path, 2, 4, rank=r, world=3), traced, 5) for r in range(3)]
    keys = [k for batches in per_rank for b in batches for k in b]
    assert [len(b) for b in per_rank] == [2, 2, 2] and sorted(keys) == sorted(set(keys)) and len(keys) == 24


@pytest.mark.parametrize("workers", [1, 2])
def test_a_resumed_epoch_continues_with_the_batches_it_had_not_given(tmp_path, traced, workers):
    shards = uneven_shards(tmp_path / "sh", [40, 33, 25, 6])  # 104: 13 batches, the last ones from remainders
    whole = epoch_keys(source(shards, tmp_path, workers, 8), traced, 9)
    assert len(whole) == 13
    for step in (1, 5, 11, 12):  # in the full chunks, and in the held remainders' batches
        assert epoch_keys(source(shards, tmp_path, workers, 8), traced, 9, step) == whole[step:], step


def corrupt(shard: str, which: int) -> None:
    """Replace the image bytes of sample ``which`` of ``shard`` with garbage."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(shard, "w") as tf:
        for m, body in members:
            if m.name.endswith(f"/{which:04d}.png"):
                body = b"broken"
                m.size = len(body)
            tf.addfile(m, io.BytesIO(body))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_resume_after_an_unreadable_member_repeats_nothing_and_shifts_nothing(tmp_path, traced, workers):
    shards = uneven_shards(tmp_path / "sh", [24, 24, 17])
    for s, i in ((0, 3), (1, 5), (2, 0)):  # one broken image early in each shard
        corrupt(shards[s], i)
    positions: list[list[int]] = []
    whole = epoch_keys(source(shards, tmp_path, workers, 4), traced, 7, positions=positions)
    flat = [k for b in whole for k in b]
    assert not {"s0/0003", "s1/0005", "s2/0000"} & set(flat)
    assert len(flat) - len(set(flat)) <= 3  # a reader short of its samples reads on from its start: a few repeat
    for step in (3, 8, len(whole) - 1):
        src = source(shards, tmp_path, workers, 4)
        src.resume_at(positions[step - 1])  # what the checkpoint after that step records
        assert epoch_keys(src, traced, 7, step) == whole[step:], step


def test_the_shuffle_buffer_mixes_class_sorted_shards(tmp_path, traced):
    """`moco shards` writes an ImageFolder class after class; the stream's buffer mixes the classes again."""
    from conftest import make_image_folder

    from moco.cli import main

    make_image_folder(tmp_path / "data", classes=2, per_class=32, size=8)
    assert main(["shards", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "sh"), "--shard-size", "4kB",
                 "--no-progress"]) == 0
    shards = sorted(str(p) for p in (tmp_path / "sh").glob("*.tar"))
    assert len(shards) > 2
    for s in shards:  # class-sorted: one class a shard (or two at the boundary)
        with tarfile.open(s) as tf:
            assert len({m.name.split("/")[0] for m in tf.getmembers()}) <= 2
    for workers in (1, 2):
        batches = epoch_keys(source(shards, tmp_path, workers, 8, shuffle_buffer=2000), traced, 1)  # the default
        mixed = [len({k.split("/")[0] for k in b}) == 2 for b in batches]
        assert sum(mixed) >= len(batches) - 1, batches  # all but perhaps one batch hold both classes


def test_a_corrupt_image_a_sample_without_one_and_a_truncated_shard_are_counted_or_refused(tmp_path):
    good = write_tar(tmp_path / "good.tar", [(f"k{i}.png", png(i)) for i in range(10)]
                     + [("bad.png", b"not a png"), ("lonely.txt", b"no image here")])
    full = write_tar(tmp_path / "cut.tar", [(f"c{i}.png", png(100 + i)) for i in range(10)])
    Path(full).write_bytes(Path(full).read_bytes()[: 5 * 1024 + 700])  # cut in the 6th member's data
    plan = ReaderPlan([(good, 0, 1), (full, 0, 1)], seed=0, buffer=4, items=16, batch=4)  # more than one pass
    got = list(reader_chunks(plan, key, strict=False))
    assert [len(items) for items, *_ in got] == [4, 4, 4, 4, 0] and got[-1][3]
    failed = [f for *_, fs in got for f in fs]
    whys = " | ".join(f"{w} {y}" for w, y in failed)
    assert any("bad" in w for w, _ in failed) and any("lonely" in w for w, _ in failed), whys
    assert any(w == full and "ReadError" in y for w, y in failed), whys
    with pytest.raises(DataError, match="unreadable shard data"):
        list(reader_chunks(plan, key, strict=True))


def test_a_reader_that_runs_short_starts_its_shards_again_and_an_empty_one_is_refused(tmp_path):
    (s,) = uneven_shards(tmp_path, [5])
    got = plan_keys(ReaderPlan([(s, 0, 1)], 0, 2, items=12, batch=4))
    assert [len(c) for c in got] == [4, 4, 4, 0]  # 12 items from 5 samples: read again, as for unknown lengths
    empty = write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(DataError, match="no readable sample in"):
        plan_keys(ReaderPlan([(empty, 0, 1)], 0, 2, items=1, batch=1))
    bad = write_tar(tmp_path / "bad.tar", [("x.png", b"junk"), ("y.png", b"junk")])
    with pytest.raises(DataError, match="no readable sample in"):
        plan_keys(ReaderPlan([(bad, 0, 1)], 0, 2, items=1, batch=1))


def test_views_follow_the_seed_and_key_alone_and_leave_torchs_generator_as_it_was():
    def noisy(img):  # a transform that draws from torch's generator, as torchvision's do
        return torch.rand(3)

    make = TwoViews((noisy, noisy), seed=4)
    sample = {"__key__": "a/b", "png": png(9)}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    q, k, name = make(sample)
    assert torch.equal(torch.get_rng_state(), before) and name == "a/b"
    assert not torch.equal(q, k)  # two draws, two views
    torch.manual_seed(123)  # whatever the generator's state, the same sample makes the same views
    q2, k2, _ = make(sample)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    q3, _, _ = TwoViews((noisy, noisy), seed=5)(sample)  # another epoch, other views
    q4, _, _ = make({**sample, "__key__": "a/c"})  # another key, other views
    assert not torch.equal(q, q3) and not torch.equal(q, q4)
