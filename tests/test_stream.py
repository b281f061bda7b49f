"""Streaming shards: balanced bundles, equal batches on every slot, each key at most once an epoch, exact
resume by passing over what was given, and bad members counted or refused."""

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moco.core.errors import DataError
from moco.data.shards import count_samples, decode, shard_counts
from moco.data.stream import (
    ShardStream,
    SlotPlan,
    batches_per_slot,
    deal,
    done_before,
    epoch_plans,
    make_bundles,
    slot_batches,
    two_views,
)


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


def key_batches(plan: SlotPlan) -> list[list[str]]:
    return [items for items, _ in slot_batches(plan, key, strict=False)]


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


def test_bundles_balance_uneven_shards_and_each_epoch_deals_them_anew():
    counts = [100, 7, 50, 50, 3, 90, 20, 10]
    bundles = make_bundles(counts, 4)
    assert sorted(i for b in bundles for i in b) == list(range(8))
    loads = [sum(counts[i] for i in b) for b in bundles]
    assert max(loads) - min(loads) <= max(counts)
    assert batches_per_slot(counts, bundles, 8) == min(loads) // 8
    a, b = deal(bundles, seed=1), deal(bundles, seed=2)
    assert a == deal(bundles, seed=1) and a != b  # seeded: the same epoch deals the same way
    assert sorted(map(sorted, a)) == sorted(map(sorted, bundles))
    with pytest.raises(DataError, match="3 shard\\(s\\) for 4 reading slots"):
        make_bundles([5, 5, 5], 4)


def test_workers_take_turns():
    # 3 workers, 7 steps given: batches 0,3,6 from worker 0, 1,4 from worker 1, 2,5 from worker 2
    assert [done_before(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert [done_before(0, w, 3) for w in range(3)] == [0, 0, 0]
    assert [done_before(1, w, 3) for w in range(3)] == [1, 0, 0]


def test_two_ranks_of_two_workers_run_equal_steps_and_see_each_key_at_most_once(tmp_path):
    sizes = [37, 5, 22, 61, 14, 30, 9, 44]
    shards = uneven_shards(tmp_path, sizes)
    world, workers, batch = 2, 2, 4
    bundles = make_bundles(sizes, world * workers)
    batches = batches_per_slot(sizes, bundles, batch)
    seen: Counter = Counter()
    steps = []
    for rank in range(world):
        plans = epoch_plans(shards, bundles, batches, rank, workers, seed=5, epoch_step=0, batch=batch, buffer=16)
        loader = torch.utils.data.DataLoader(ShardStream(plans, key, lambda items: (items,), strict=False),
                                             batch_size=None, num_workers=workers)
        got = list(loader)
        steps.append(len(got))
        for items, failed in got:
            assert len(items) == batch and failed == []
            seen.update(items)
    assert steps[0] == steps[1] == batches * workers
    assert max(seen.values()) == 1
    assert sum(seen.values()) == world * workers * batches * batch


def test_a_resumed_epoch_continues_with_the_batches_it_had_not_given(tmp_path):
    sizes = [40, 33, 25]
    shards = uneven_shards(tmp_path, sizes)
    bundles = make_bundles(sizes, 1)
    batches = batches_per_slot(sizes, bundles, 8)
    whole = key_batches(epoch_plans(shards, bundles, batches, 0, 1, 9, 0, 8, 32)[0])
    assert len(whole) == batches
    for step in (1, 5, batches - 1):
        assert key_batches(epoch_plans(shards, bundles, batches, 0, 1, 9, step, 8, 32)[0]) == whole[step:]
    # two workers taking turns: each passes over the batches it gave
    sizes2 = sizes + [30]
    shards2 = shards + uneven_shards(tmp_path / "more", [30])
    bundles2 = make_bundles(sizes2, 2)
    b2 = batches_per_slot(sizes2, bundles2, 4)

    def in_turn(step: int) -> list[list[str]]:
        """The batches as a DataLoader of 2 workers hands them out from ``step`` on: its workers in turn."""
        turns = [key_batches(p) for p in epoch_plans(shards2, bundles2, b2, 0, 2, 3, step, 4, 16)]
        return [turns[i % 2][i // 2] for i in range(sum(map(len, turns)))]

    assert len(in_turn(0)) == 2 * b2
    for step in (1, 4, 5):
        assert in_turn(step) == in_turn(0)[step:]


def test_a_corrupt_image_a_sample_without_one_and_a_truncated_shard_are_counted_or_refused(tmp_path):
    good = write_tar(tmp_path / "good.tar", [(f"k{i}.png", png(i)) for i in range(10)]
                     + [("bad.png", b"not a png"), ("lonely.txt", b"no image here")])
    full = write_tar(tmp_path / "cut.tar", [(f"c{i}.png", png(100 + i)) for i in range(10)])
    Path(full).write_bytes(Path(full).read_bytes()[: 5 * 1024 + 700])  # cut in the 6th member's data
    plan = SlotPlan([good, full], seed=0, buffer=4, batches=4, skip=0, batch=4)  # 16: more than one pass
    got = list(slot_batches(plan, key, strict=False))
    assert len(got) == 4 and all(len(items) == 4 for items, _ in got)
    failed = [f for _, fs in got for f in fs]
    whys = " | ".join(f"{w} {y}" for w, y in failed)
    assert any("bad" in w for w, _ in failed) and any("lonely" in w for w, _ in failed), whys
    assert any(w == full and "ReadError" in y for w, y in failed), whys
    with pytest.raises(DataError, match="unreadable shard data"):
        list(slot_batches(plan, key, strict=True))


def test_a_slot_that_runs_short_starts_its_shards_again_and_an_empty_one_is_refused(tmp_path):
    (s,) = uneven_shards(tmp_path, [5])
    got = list(slot_batches(SlotPlan([s], 0, 2, batches=3, skip=0, batch=4), key, strict=False))
    assert len(got) == 3  # 12 items from 5 samples: the shard read again, as for streams of unknown length
    empty = write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(DataError, match="no readable sample in"):
        list(slot_batches(SlotPlan([empty], 0, 2, batches=1, skip=0, batch=1), key, strict=False))


def test_views_follow_the_seed_and_key_alone_and_leave_torchs_generator_as_it_was():
    def noisy(img):  # a transform that draws from torch's generator, as torchvision's do
        return torch.rand(3)

    make = two_views((noisy, noisy), seed=4)
    sample = {"__key__": "a/b", "png": png(9)}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    q, k, name = make(sample)
    assert torch.equal(torch.get_rng_state(), before) and name == "a/b"
    assert not torch.equal(q, k)  # two draws, two views
    torch.manual_seed(123)  # whatever the generator's state, the same sample makes the same views
    q2, k2, _ = make(sample)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    q3, _, _ = two_views((noisy, noisy), seed=5)(sample)  # another epoch, other views
    q4, _, _ = make({**sample, "__key__": "a/c"})  # another key, other views
    assert not torch.equal(q, q3) and not torch.equal(q, q4)
