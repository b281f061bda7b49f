"""`moco map`: each image's point lies among its own class's (so the coordinates belong to the right images),
thumbnails sit on the lattice's occupied cells, and the PNG is a real picture coloured by class."""

import sys

import numpy as np
import pytest
import torch
from conftest import fake_checkpoint, make_image_folder
from PIL import Image

from moco.cli import main
from moco.evaluation.feature_map import feature_map, pick_thumbnails, sample

pytest.importorskip("openTSNE", reason="the map extra: pip install 'momentum-contrast[map]'")


def test_thumbnails_are_the_points_nearest_each_occupied_cells_centre():
    coords = np.array([[0.0, 0.0], [0.1, 0.1], [0.9, 0.9], [1.0, 1.0], [0.24, 0.26], [0.76, 0.74]])
    # a 2 x 2 lattice over [0, 1]^2: centres (0.25, 0.25) and (0.75, 0.75) are occupied, the others are empty
    assert pick_thumbnails(coords, 2).tolist() == [4, 5]
    assert pick_thumbnails(coords, 1).tolist() == [4]  # one cell, centre (0.5, 0.5): (0.24, 0.26) is nearest
    assert sample(10, 20).tolist() == list(range(10))
    assert sample(100, 10, seed=3).tolist() == sample(100, 10, seed=3).tolist() and len(set(sample(100, 10))) == 10


def test_each_point_lies_among_its_own_class():
    # three classes, each one colour: any backbone puts same-coloured images together
    torch.manual_seed(0)
    y = torch.arange(3).repeat_interleave(40)
    centres = torch.randn(3, 32) * 3
    feats = centres[y] + torch.randn(120, 32)
    fmap = feature_map(feats, most=90, grid=3, seed=1)
    assert len(fmap.index) == 90 and len(set(fmap.index.tolist())) == 90
    labels = y[fmap.index].numpy()
    d = ((fmap.coords[:, None] - fmap.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() >= 0.95  # the map keeps the classes apart, row by row
    assert 1 <= len(fmap.thumbnails) <= 9


def test_moco_map_writes_a_picture_coloured_by_class(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=30)
    ck = tmp_path / "ck.pt"
    fake_checkpoint(ck)
    out = tmp_path / "map.png"
    assert main(["map", "--checkpoint", str(ck), "--data", str(data), "--out", str(out), "--thumbnails", "4",
                 "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (1200, 1440, 3) and out.stat().st_size > 30_000
    tab10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # the three classes' colours
    for c in tab10:
        assert (np.abs(img.astype(int) - c).sum(-1) < 30).sum() > 50, c  # each class is drawn
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # points, thumbnails, text: not a blank canvas


def test_a_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openTSNE", None)
    ck = tmp_path / "ck.pt"
    fake_checkpoint(ck)
    assert main(["map", "--checkpoint", str(ck), "--data", str(tmp_path), "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "moco: error: moco map needs the optional extra: pip install 'momentum-contrast[map]' (openTSNE)"
