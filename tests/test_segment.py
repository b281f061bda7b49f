"""Semantic segmentation (``moco segment``): label maps and their mapping, COCO painting, the training views,
mIoU against a hand computation, dilation against torchvision's, learning (and not learning from misaligned
maps), random init, exact resume, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_checkpoint as _fake
from conftest import make_image_folder
from PIL import Image

from moco.cli import main
from moco.core.errors import DataError
from moco.data import segmentation as seg
from moco.data.coco import read_coco
from moco.data.pasted import PastedSpec, make_pasted_set
from moco.evaluation.segmentation import confusion_matrix, segmentation_scores
from moco.schedules import scheduled_lr
from moco.tasks.segment import segment
from moco.training.checkpoint import load_checkpoint
from moco.transfer.segmenter import build_segmenter, dilate

TINY = ["optim.batch_size=4", "data.workers=0", "train.precision=fp32", "train.channels_last=false",
        "train.log_every=2", "segment.head=fcn"]


@pytest.fixture
def ck(tmp_path):
    _fake(tmp_path / "ck.pt", width=8)
    return tmp_path / "ck.pt"


@pytest.fixture
def pasted(tmp_path):
    """16 training and 8 validation canvases of 48 x 40 px with 1-2 squares of 3 classes, and their class maps."""
    src = make_image_folder(tmp_path / "objects", classes=3, per_class=16, size=16)
    make_pasted_set(src, tmp_path / "pasted", PastedSpec(16, 8, (48, 40), (1, 2), (10, 16), seed=0))
    return tmp_path / "pasted"


def maps(p: Path) -> dict:
    return {"train_images": p / "train", "train_masks": p / "train_maps", "val_images": p / "val",
            "val_masks": p / "val_maps"}


def run_segment(ck, pasted, out, *extra, **kw):
    return segment(ck, **maps(pasted), out=out, overrides=[*TINY, *extra], progress=False, **kw)


def save_map(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    """A label map as a grayscale PNG, or a palette PNG whose colours are not its values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
    if mode == "P":
        im.putpalette([v for c in range(256) for v in (c, 255 - c, 0)])
    im.save(path)


def save_image(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def test_label_maps_of_both_formats_read_with_255_ignored_and_a_mapping_file(tmp_path):
    arr = np.array([[0, 1, 2, 255], [2, 2, 1, 0]], dtype=np.uint8)
    save_map(tmp_path / "p.png", arr, "P")
    save_map(tmp_path / "l.png", arr, "L")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"  # a palette PNG: its indices are the classes, not its colours
    assert np.array_equal(seg.read_label_map(tmp_path / "p.png"), arr)
    assert np.array_equal(seg.read_label_map(tmp_path / "l.png"), arr)

    for i, kind in enumerate("PL"):  # paired by stem, the classes from the largest value; 255 ignored
        save_image(tmp_path / "im" / f"a{i}.jpg", 2, 4)
        save_map(tmp_path / "mk" / f"a{i}.png", arr, kind)
    data = seg.pair_folders(tmp_path / "im", tmp_path / "mk")
    assert data.num_classes == 3 and data.paths == ["a0.jpg", "a1.jpg"]
    assert all(np.array_equal(data.label_map(k), arr) for k in range(2))

    # Cityscapes-like: suffixes removed before pairing, label ids mapped to train ids, the rest ignored
    save_image(tmp_path / "city" / "x" / "aa_left.png", 2, 4)
    save_map(tmp_path / "gt" / "x" / "aa_gt_ids.png", np.array([[7, 8, 26, 0], [7, 7, 3, 26]]))
    (tmp_path / "map.txt").write_text("# value class name\n7 0 road\n8 1 sidewalk\n26 2 car\n3 255\n")
    cmap = seg.read_class_map(tmp_path / "map.txt")
    assert cmap.names == ["road", "sidewalk", "car"]
    data = seg.pair_folders(tmp_path / "city", tmp_path / "gt", class_map=cmap, image_suffix="_left",
                            mask_suffix="_gt_ids")
    assert data.num_classes == 3 and data.classes == ["road", "sidewalk", "car"]
    assert data.label_map(0).tolist() == [[0, 1, 2, 255], [0, 0, 255, 2]]


def test_coco_instances_are_painted_small_over_large_and_crowd_ignored(tmp_path):
    save_image(tmp_path / "im" / "a.jpg", 10, 10)
    square = lambda x, y, s: [[x, y, x + s, y, x + s, y + s, x, y + s]]  # noqa: E731
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 8, 8], "segmentation": square(0, 0, 8)},
            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [2, 2, 3, 3], "segmentation": square(2, 2, 3)},
            {"id": 3, "image_id": 1, "category_id": 4, "bbox": [8, 8, 2, 2], "segmentation": square(8, 8, 2),
             "iscrowd": 1}]
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}], "annotations": anns,
        "categories": [{"id": 9, "name": "big"}, {"id": 4, "name": "small"}]}))
    data = seg.paint_coco(read_coco(tmp_path / "a.json", tmp_path / "im"))
    m = data.label_map(0)
    assert data.classes == ["background", "small", "big"]  # categories in id order: 4 -> 1, 9 -> 2
    assert m[0, 0] == 2 and m[3, 3] == 1 and m[9, 9] == 255 and m[9, 0] == 0


def test_miou_and_pixel_accuracy_match_a_hand_computation_with_ignored_pixels_left_out():
    target = torch.tensor([[0, 0, 1, 1], [2, 255, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 2]])
    cm = confusion_matrix(pred, target, 4)
    # counted pixels (6): truth 0: (0,0) right, (0,1) -> 1; truth 1: two right, (1,3) -> 2; truth 2: (1,0) -> 0
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    s = segmentation_scores(cm, ["a", "b", "c", "d"])
    # IoU = tp / (row + column - tp): a 1/(2+2-1), b 2/(3+3-2), c 0/(1+1-0); d in neither: no IoU
    assert s["iou"] == pytest.approx({"a": 100 / 3, "b": 50.0, "c": 0.0, "d": None})
    assert s["mIoU"] == pytest.approx((100 / 3 + 50 + 0) / 3)
    assert s["pixel_acc"] == pytest.approx(100 * 3 / 6)


def test_the_poly_schedule_is_deeplabs_after_the_warm_up():
    assert scheduled_lr(0.02, 0.5, 10, "poly", [], 1.0) == pytest.approx(0.01)
    assert scheduled_lr(0.02, 1.0, 10, "poly", [], 1.0) == pytest.approx(0.02)
    assert scheduled_lr(0.02, 5.5, 10, "poly", [], 1.0) == pytest.approx(0.02 * 0.5**0.9)
    assert scheduled_lr(0.02, 10, 10, "poly", [], 1.0) == 0.0


def test_training_views_keep_images_and_maps_aligned_and_pad_with_ignored_pixels():
    """A map that is a function of its image (class = a block's grey level / 60) stays that function through
    random scale, pad, crop and flip, at every pixel away from a class edge (where bilinear blends); where the
    view is padded, the map is ignored."""
    cls = torch.zeros(48, 64, dtype=torch.uint8)
    cls[:, 16:32], cls[:, 32:] = 1, 2
    cls[24:, 48:] = 3
    img = (cls * 60).expand(3, -1, -1).clone()
    params = seg.crop_params(64, seed=3)
    flipped = padded = 0
    for p in params:
        x, y = seg.train_view(img, cls, p, base=48, scale=(0.5, 2.0), crop=56, flip=0.5, ignore=255)
        assert x.shape == (3, 56, 56) and y.shape == (56, 56)
        inside = y != 255
        near = torch.nn.functional.max_pool2d(y[None].float(), 3, 1, 1)[0] != -torch.nn.functional.max_pool2d(
            -y[None].float(), 3, 1, 1)[0]  # a different class within a pixel
        interior = inside & ~near
        assert interior.sum() > 0.3 * inside.sum()
        assert ((x[0][interior].float() / 60).round() == y[interior].float()).all()
        padded += int((~inside).any())
        flipped += int(p[3] < 0.5)
        assert (x[:, ~inside] == 0).all()
    assert 0 < flipped < 64 and padded > 0


def test_dilation_is_torchvisions_and_keeps_the_weights():
    """Our dilated ResNet-50 computes what torchvision's ``replace_stride_with_dilation`` builds, with the same
    weights; output stride 16 dilates layer4 only; the CIFAR stem (already at 8) is left alone."""
    from torchvision.models import resnet50

    from moco.models.resnet import build_resnet
    from moco.transfer.detector import stages

    torch.manual_seed(0)
    ours = resnet50()
    ref = resnet50(replace_stride_with_dilation=[False, True, True])
    ref.load_state_dict(ours.state_dict())
    assert dilate(ours, 8) == 8
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 64, 64)
    a, b = stages(ours, x)[-1], stages(ref, x)[-1]
    assert a.shape[-1] == 8 and torch.allclose(a, b, atol=1e-5)
    net16 = resnet50()
    assert dilate(net16, 16) == 16 and net16.layer3[0].conv2.stride == (2, 2) and net16.layer4[0].conv2.stride == (1, 1)
    cifar = build_resnet("resnet18", 8, cifar_stem=True)
    before = {k: v.clone() for k, v in cifar.state_dict().items()}
    convs = [m for m in cifar.modules() if isinstance(m, torch.nn.Conv2d)]
    assert dilate(cifar, 8) == 8 and all(m.dilation == (1, 1) for m in convs)
    assert all(torch.equal(before[k], v) for k, v in cifar.state_dict().items())


@pytest.mark.slow
def test_a_short_run_learns_and_misaligned_maps_do_not(tmp_path, ck, monkeypatch):
    """30 epochs from the checkpoint on 48 canvases: mIoU far above an untrained segmenter's (which calls every
    pixel background: 0 IoU for the objects, mIoU about 30); the same run whose views flip the image and not its
    map (misaligned half the time) stays far below. Seeds 0-2 measured 72/75/48 against 46/39/32: one seed's
    run is noisy, so the default suite checks alignment itself (the views) and this one the learning."""
    src = make_image_folder(tmp_path / "objects", classes=3, per_class=40, size=16)
    p = make_pasted_set(src, tmp_path / "p", PastedSpec(48, 12, (48, 40), (1, 2), (14, 20), seed=0)) and tmp_path / "p"
    short = ["optim.batch_size=8", "optim.lr=0.05"]
    good = run_segment(ck, p, tmp_path / "good", *short, epochs=30)
    view = seg.train_view

    def misaligned(img, mask, p, *a):
        x, y = view(img, mask, p, *a)
        return (x.flip(-1), y) if p[3] < 0.5 else (x, y)

    monkeypatch.setattr(seg, "train_view", misaligned)
    bad = run_segment(ck, p, tmp_path / "bad", *short, epochs=30)
    assert good.mIoU > 60 and bad.mIoU < good.mIoU - 15, (good.mIoU, bad.mIoU)


def test_random_init_ignores_the_checkpoints_weights(tmp_path, ck, pasted):
    run_segment(ck, pasted, tmp_path / "a", init="random", epochs=1, max_steps=2)
    run_segment(None, pasted, tmp_path / "b", "model.width=8", "data.image_size=16", init="random", epochs=1,
                max_steps=2)
    run_segment(ck, pasted, tmp_path / "c", epochs=1, max_steps=2)
    a, b, c = (load_checkpoint(tmp_path / n / "checkpoint_last.pt")["model"] for n in ("a", "b", "c"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder_q.conv1.weight"], c["encoder_q.conv1.weight"])


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch and at an epoch's end
def test_resume_is_exact(tmp_path, ck, pasted, stop_at):
    run_segment(ck, pasted, tmp_path / "full", epochs=2)
    part = run_segment(ck, pasted, tmp_path / "part", epochs=2, max_steps=stop_at)
    assert part.stopped and not (tmp_path / "part" / "results.json").exists()
    res = segment(out=tmp_path / "part", resume="auto", progress=False)  # the run knows its data
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] == 8 and not res.stopped
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    assert round(res.mIoU, 4) == full["mIoU"] and set(full["iou"]) == {"0", "1", "2", "3"}


def test_bad_input_gets_one_line(tmp_path, ck, pasted, capsys):
    base = ["segment", "--checkpoint", str(ck), "--no-progress", "--epochs", "1", *[x for s in TINY
                                                                                  for x in ("--set", s)]]

    def bad_copy(name: str, change) -> Path:  # a copy of the training maps with one file changed
        d = tmp_path / name
        d.mkdir()
        for f in sorted((pasted / "train_maps").iterdir()):
            (d / f.name).write_bytes(f.read_bytes())
        change(d)
        return d

    big = bad_copy("size", lambda d: save_map(d / "000003.png", np.zeros((8, 8))))
    value = bad_copy("value", lambda d: save_map(d / "000005.png", np.full((40, 48), 9)))
    lacking = bad_copy("lacking", lambda d: (d / "000007.png").unlink())
    garbage = bad_copy("garbage", lambda d: (d / "000002.png").write_bytes(b"not a png"))
    rgb = bad_copy("rgb", lambda d: Image.new("RGB", (48, 40)).save(d / "000001.png"))
    (tmp_path / "map.txt").write_text("1 0\n2 x\n")
    train = ["--train-images", str(pasted / "train")]
    cases = [
        ([*train, "--train-masks", str(big), "--set", "segment.num_classes=4"], "000003.png: 8x8, but its image"),
        ([*train, "--train-masks", str(value), "--set", "segment.num_classes=4"], "000005.png: label value 9 is not"),
        ([*train, "--train-masks", str(pasted / "train_maps"), "--val-images", str(pasted / "val"), "--val-masks",
          str(value)], "000005.png: label value 9 is not a class (classes 0-3"),
        ([*train, "--train-masks", str(lacking)], "1 of 16 image(s) of"),
        ([*train, "--train-masks", str(garbage)], "000002.png: cannot be read as a label map"),
        ([*train, "--train-masks", str(rgb)], "000001.png: a RGB image; a label map is a palette or grayscale"),
        ([*train, "--train-masks", str(pasted / "train_maps"), "--classes", str(tmp_path / "map.txt")],
         "map.txt:2: expected 'VALUE CLASS [NAME]'"),
    ]
    for args, message in cases:
        assert main([*base, *args, "--out", str(tmp_path / "run"), "--overwrite"]) == 1, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main([*base, *train, "--out", str(tmp_path / "run")]) == 2
    assert "--train-images pairs with one of --train-masks" in capsys.readouterr().err


def test_the_pasted_set_writes_a_class_map_per_canvas_matching_its_boxes(pasted):
    assert seg.read_class_map(pasted / "classes.txt").names == ["background", "class0", "class1", "class2"]
    coco = json.loads((pasted / "train.json").read_text())
    index = {c["id"]: i + 1 for i, c in enumerate(coco["categories"])}
    for im in coco["images"][:6]:
        m = seg.read_label_map(pasted / "train_maps" / im["file_name"].replace(".jpg", ".png"))
        expect = np.zeros_like(m)
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                expect[y:y + h, x:x + w] = index[a["category_id"]]
        assert np.array_equal(m, expect)


def test_the_head_is_torchvisions():
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead
    from torchvision.models.segmentation.fcn import FCNHead

    from moco.models.resnet import build_resnet

    net = build_resnet("resnet18", 8, cifar_stem=True)
    model, stride = build_segmenter(net, 5, "deeplabv3", 8, [2, 4, 6], [0.5] * 3, [0.2] * 3)
    assert isinstance(model.head, DeepLabHead) and stride == 8
    assert [m[0].dilation for m in model.head[0].convs[1:4]] == [(2, 2), (4, 4), (6, 6)]
    assert model.logits(torch.rand(2, 3, 40, 48)).shape == (2, 5, 40, 48)
    fcn, _ = build_segmenter(build_resnet("resnet18", 8, cifar_stem=True), 5, "fcn", 8, [1], [0.5] * 3, [0.2] * 3)
    assert isinstance(fcn.head, FCNHead)


def test_a_map_set_refuses_a_list_naming_a_missing_image(tmp_path, pasted):
    (tmp_path / "list.txt").write_text("000001\n999999\n")
    with pytest.raises(DataError, match="names 1 image"):
        seg.pair_folders(pasted / "train", pasted / "train_maps", listing=tmp_path / "list.txt")
    (tmp_path / "list.txt").write_text("000001\n000004\n")
    assert seg.pair_folders(pasted / "train", pasted / "train_maps",
                            listing=tmp_path / "list.txt").paths == ["000001.jpg", "000004.jpg"]


def test_each_process_takes_its_half_of_every_batch_with_the_same_views(pasted):
    """With 2 processes each takes a disjoint half of every global batch, and its views (scale, crop, flip) are
    the ones one process makes of those images: drawn by place in the epoch, not by process."""
    from moco.core.distributed import DistInfo

    data = seg.pair_folders(pasted / "train", pasted / "train_maps")
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))

    def batches(rank, world):
        src = seg.SegmentationSource(data, 40, (0.5, 2.0), 32, 0.5, 0, 4, torch.device("cpu"), DistInfo(rank, world))
        return list(src.epoch(perm, 1, 0, seed=5))  # from step 1, as a resumed epoch

    one, halves = batches(0, 1), [batches(r, 2) for r in (0, 1)]
    assert len(one) == len(halves[0]) == 3
    for (x, y, idx), (xa, ya, ia), (xb, yb, ib) in zip(one, *halves):
        assert ia.tolist() + ib.tolist() == idx.tolist() and len(ia) == 2
        assert torch.equal(torch.cat([xa, xb]), x) and torch.equal(torch.cat([ya, yb]), y)


@pytest.mark.slow
def test_two_processes_train_a_segmenter(tmp_path, ck, pasted):
    """`moco segment --nproc 2` on CPU (gloo): 4 steps of 4 images in two processes, rank 0 scores mIoU."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "moco", "segment", "--nproc", "2", "--checkpoint", str(ck),
            *[x for k, v in maps(pasted).items() for x in (f"--{k.replace('_', '-')}", str(v))],
            "--out", str(tmp_path / "two"), "--epochs", "1", "--no-progress", *[x for s in TINY for x in ("--set", s)]]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "MASTER_PORT": str(port)},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 4 and res["mIoU"] is not None
    assert load_checkpoint(tmp_path / "two" / "checkpoint_last.pt")["world_size"] == 2


def test_a_segmenters_checkpoint_exports_its_trained_backbone_and_moco_info_describes_it(tmp_path, ck, pasted,
                                                                                        capsys):
    from moco.export import load_backbone

    run_segment(ck, pasted, tmp_path / "s", epochs=1)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s" / "checkpoint_last.pt")]) == 0
    out = capsys.readouterr().out
    assert "segmenter   fcn head at output stride 8, checkpoint init" in out and "data        16 images\n" in out
    saved = load_checkpoint(tmp_path / "s" / "checkpoint_last.pt")["model"]
    net = load_backbone(tmp_path / "s" / "checkpoint_last.pt")
    assert all(torch.equal(v, saved[f"encoder_q.{k}"]) for k, v in net.state_dict().items())
    assert not torch.equal(net.conv1.weight, load_checkpoint(ck)["model"]["encoder_q.conv1.weight"])  # trained


def test_whole_images_are_scored_uncropped_in_batches_of_one_size(tmp_path):
    """Validation reads whole images in order; a batch ends at its size limit or where the size changes."""
    for i, (h, w) in enumerate([(8, 10), (8, 10), (8, 10), (6, 12), (8, 10)]):
        save_image(tmp_path / "im" / f"{i}.png", h, w)
        save_map(tmp_path / "mk" / f"{i}.png", np.full((h, w), i % 2))
    images = seg.SegImages(seg.pair_folders(tmp_path / "im", tmp_path / "mk"))
    got = list(seg.whole_images(images, 2, 0, torch.device("cpu")))
    assert [tuple(x.shape) for x, _ in got] == [(2, 3, 8, 10), (1, 3, 8, 10), (1, 3, 6, 12), (1, 3, 8, 10)]
    assert [y[:, 0, 0].tolist() for _, y in got] == [[0, 1], [0], [1], [0]]  # each image with its own map


def test_camera_photos_get_torchvisions_base_and_crop_and_a_step_that_cannot_fit_is_refused(tmp_path, caplog,
                                                                                            monkeypatch):
    import logging

    from moco.config import resolve
    from moco.core.errors import ConfigError
    from moco.data.segmentation import SegSet
    from moco.tasks import segment as segment_task
    from moco.transfer import sizes

    photos = SegSet(Path(tmp_path), ["a.jpg"] * 3, [(3000, 4000)] * 3, 2, ["bg", "thing"], 255)
    cfg = resolve("cifar10-cpu")
    with caplog.at_level(logging.WARNING, logger="moco"):
        segment_task._sizes(cfg, photos)
    assert (cfg.segment.base_size, cfg.segment.crop_size) == (520, 480)  # not 3000 x 3000 crops
    assert any("median shorter side is 3000 px" in r.getMessage() for r in caplog.records)
    small = SegSet(Path(tmp_path), ["a.png"] * 3, [(96, 128)] * 3, 2, ["bg", "thing"], 255)
    cfg = resolve("cifar10-cpu")
    segment_task._sizes(cfg, small)
    assert (cfg.segment.base_size, cfg.segment.crop_size) == (96, 96)  # small images: their own size
    monkeypatch.setattr(sizes, "device_memory_gb", lambda device: 0.5)
    with pytest.raises(ConfigError, match=r"lower --batch-size \(now 8\) or segment.crop_size \(now 480\)"):
        sizes.check_fits(sizes.step_memory_gb("resnet50", 64, 480**2, 8, False, sizes.SEGMENT_FACTOR),
                         torch.device("cpu"), "--batch-size (now 8) or segment.crop_size (now 480)")


def test_camera_jpegs_train_from_a_reduced_decode_whose_views_match_the_map(tmp_path):
    """A 4,000 x 3,000 JPEG for training views of at most 1,040 px (base 520 x 2) is decoded at half size, and its
    view is the full decode's view: the map, kept whole, lands on the same pixels."""
    img = np.zeros((3000, 4000, 3), np.uint8)
    img[:, 2000:] = 200  # right half bright: class 1
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    Image.fromarray(img).save(tmp_path / "im" / "a.jpg", quality=95)
    label = np.zeros((3000, 4000), np.uint8)
    label[:, 2000:] = 1
    save_map(tmp_path / "mk" / "a.png", label)
    data = seg.pair_folders(tmp_path / "im", tmp_path / "mk", num_classes=2)
    reduced = seg.SegImages(data, draft=1040)
    assert tuple(reduced.image(0).shape) == (3, 1500, 2000)
    assert tuple(seg.SegImages(data).image(0).shape) == (3, 3000, 4000)
    p = torch.tensor([0.5, 0.3, 0.6, 0.9])
    (x, y), (xf, yf) = (seg.train_view(*images[0], p, 520, (0.5, 2.0), 480, 0.5, 255)
                        for images in (reduced, seg.SegImages(data)))
    assert torch.equal(y, yf) and (x.float() - xf.float()).abs().mean() < 2.0
    bright = x.float().mean(0) > 100
    assert (bright == (y == 1)).float().mean() > 0.99  # the view's bright pixels are the map's class 1
