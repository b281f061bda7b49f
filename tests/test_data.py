"""Reading image folders: layouts, formats, bad files, the decoded-image cache."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from moco.data.cache import decode_images
from moco.data.folder import DataError, find_split, load_rgb, scan_images


def save(path, img, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def rgb(size=(20, 14), color=(200, 30, 60)):
    return Image.new("RGB", size, color)


def test_imagefolder_gets_labels_and_flat_tree_does_not(tmp_path):
    for cls in ("b", "a"):
        for i in range(3):
            save(tmp_path / "folder" / cls / "deep" / f"{i}.png", rgb())
    imgs = scan_images(tmp_path / "folder")
    assert imgs.classes == ["a", "b"] and imgs.labels == [0, 0, 0, 1, 1, 1]
    assert imgs.paths[0] == os.path.join("a", "deep", "0.png")
    save(tmp_path / "flat" / "x.jpg", rgb())
    save(tmp_path / "flat" / "sub" / "y.webp", rgb())
    (tmp_path / "flat" / "notes.txt").write_text("hi")
    flat = scan_images(tmp_path / "flat")
    assert flat.labels is None and sorted(flat.paths) == ["sub/y.webp", "x.jpg"]


def test_max_images_is_a_deterministic_subset(tmp_path):
    for i in range(30):
        save(tmp_path / f"{i:02d}.png", rgb())
    a, b = scan_images(tmp_path, max_images=7), scan_images(tmp_path, max_images=7)
    assert a.paths == b.paths and len(a) == 7
    assert scan_images(tmp_path, max_images=7, seed=1).paths != a.paths


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_images(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        scan_images(tmp_path / "empty")
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan_images(tmp_path / "file.jpg")


def test_unusual_modes_become_rgb(tmp_path):
    cases = {
        "gray.png": Image.new("L", (9, 7), 128),
        "palette.png": rgb().convert("P"),
        "rgba.png": Image.new("RGBA", (9, 7), (10, 20, 30, 0)),
        "cmyk.jpg": Image.new("CMYK", (9, 7), (0, 255, 0, 0)),
        "bw.bmp": Image.new("1", (9, 7), 1),
        "pic.webp": rgb(),
    }
    for name, img in cases.items():
        out = load_rgb(save(tmp_path / name, img))
        assert out.mode == "RGB", name
    # 16-bit PNG: scaled to 8 bits, not clipped to white
    arr = np.full((6, 6), 32768, dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    px = np.asarray(load_rgb(p))
    assert abs(int(px[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied(tmp_path):
    img = rgb((30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert load_rgb(p).size == (10, 30)


def bad_files(folder):
    save(folder / "ok1.png", rgb())
    save(folder / "ok2.jpg", rgb((50, 40)))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    good = folder / "ok2.jpg"
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:40])


def test_bad_files_are_skipped_with_a_warning(tmp_path, caplog):
    bad_files(tmp_path / "d")
    with caplog.at_level(logging.WARNING, logger="moco"):
        dec = decode_images(scan_images(tmp_path / "d"), 16, tmp_path / "cache", workers=0, progress=False)
    assert dec.array.shape == (2, 16, 16, 3)
    assert sorted(p for p, _ in dec.skipped) == ["text.jpg", "truncated.jpg", "zero.jpg"]
    assert "skipped 3 unreadable image(s)" in caplog.text and "zero.jpg" in caplog.text
    # reuse reports them again without re-reading
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="moco"):
        again = decode_images(scan_images(tmp_path / "d"), 16, tmp_path / "cache", workers=0, progress=False)
    assert np.array_equal(np.asarray(again.array), np.asarray(dec.array))
    assert "skipped 3" in caplog.text


def test_strict_mode_names_the_bad_file(tmp_path):
    bad_files(tmp_path / "d")
    with pytest.raises(DataError, match=r"unreadable image: .*(text|truncated|zero)\.jpg"):
        decode_images(scan_images(tmp_path / "d"), 16, tmp_path / "cache", workers=0, strict=True, progress=False)


def test_all_bad_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_text("nope")
    with pytest.raises(DataError, match="could be read"):
        decode_images(scan_images(tmp_path / "d"), 16, tmp_path / "cache", workers=0, progress=False)


def test_cache_decodes_center_square_and_refreshes_on_change(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = 255  # white center square of a 40x20 image
    save(tmp_path / "d" / "a.png", Image.fromarray(img))
    save(tmp_path / "d" / "b.png", Image.new("RGB", (5, 5), (0, 0, 255)))  # smaller than the crop
    dec = decode_images(scan_images(tmp_path / "d"), 10, tmp_path / "cache", workers=0, progress=False)
    assert dec.array.shape == (2, 10, 10, 3)
    assert dec.array[0, :, 1:-1].min() >= 250 and dec.array[0].min() > 200  # the white center square
    assert tuple(dec.array[1, 5, 5]) == (0, 0, 255)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    os.utime(tmp_path / "d" / "b.png", ns=(1, 1))
    decode_images(scan_images(tmp_path / "d"), 10, tmp_path / "cache", workers=0, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_parallel_decode_matches_serial(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(300):
        save(tmp_path / "d" / f"{i:03d}.png", Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)))
    imgs = scan_images(tmp_path / "d")
    a = decode_images(imgs, 12, tmp_path / "c1", workers=0, progress=False)
    b = decode_images(imgs, 12, tmp_path / "c2", workers=2, progress=False)
    assert np.array_equal(np.asarray(a.array), np.asarray(b.array))


def test_find_split(tmp_path):
    for s in ("train", "test"):
        (tmp_path / "c" / s).mkdir(parents=True)
    assert find_split(tmp_path / "c") == (tmp_path / "c" / "train", tmp_path / "c" / "test")
    assert find_split(tmp_path / "c" / "train") == (tmp_path / "c" / "train", tmp_path / "c" / "test")
    assert find_split(tmp_path / "c" / "test") == (tmp_path / "c" / "test", None)
    (tmp_path / "c" / "val").mkdir()  # test/ before val/ when both are there
    assert find_split(tmp_path / "c") == (tmp_path / "c" / "train", tmp_path / "c" / "test")
    (tmp_path / "v" / "train").mkdir(parents=True)
    (tmp_path / "v" / "val").mkdir()
    assert find_split(tmp_path / "v") == (tmp_path / "v" / "train", tmp_path / "v" / "val")


def png_claiming(path, width, height):
    """A real 1x1 PNG whose header is rewritten to claim ``width x height`` pixels."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_extreme_sizes(tmp_path, caplog):
    d = tmp_path / "d"
    save(d / "tiny.png", Image.new("RGB", (1, 1), (9, 99, 199)))  # smaller than any crop
    save(d / "big.jpg", Image.new("RGB", (10000, 10000), (50, 60, 70)), quality=50)  # 100 MP: allowed
    png_claiming(d / "bomb.png", 40000, 40000)  # 1.6 GP claimed: refused by the bomb guard
    with caplog.at_level(logging.WARNING, logger="moco"):
        dec = decode_images(scan_images(d), 8, tmp_path / "cache", workers=0, progress=False)
    assert sorted(dec.images.paths) == ["big.jpg", "tiny.png"]
    assert [p for p, _ in dec.skipped] == ["bomb.png"] and "DecompressionBomb" in dec.skipped[0][1]
    tiny = dec.array[dec.images.paths.index("tiny.png")]
    assert tiny.shape == (8, 8, 3) and tuple(tiny[4, 4]) == (9, 99, 199)
    big = dec.array[dec.images.paths.index("big.jpg")]
    assert np.abs(big.astype(int) - [50, 60, 70]).max() <= 3
