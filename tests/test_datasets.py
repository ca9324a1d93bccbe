"""PairedDataset, the image readers and combine(): layouts, channels, direction, and every bad input."""
import os

import numpy as np
import pytest
from PIL import Image

from pix2pix_fast.config import ConfigError
from pix2pix_fast.data import DataError, PairedDataset
from pix2pix_fast.data.combine import combine
from pix2pix_fast.data.datasets import find_splits
from pix2pix_fast.data.imageio import image_size, read_aligned, read_image, write_image

H, W = 12, 10  # odd shapes on purpose: one half is 12 x 10


def _rand(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _luma(rgb):
    # Pillow's RGB -> L conversion
    return ((rgb.astype(np.uint32) @ np.array([19595, 38470, 7471], dtype=np.uint32) + 0x8000) >> 16).astype(np.uint8)


def _aligned(root, split="train", n=3, ext=".png"):
    """root/split/{0..n-1}.png, A|B; returns {stem: (A, B)}."""
    pairs = {}
    for i in range(n):
        a, b = _rand(2 * i, (H, W, 3)), _rand(2 * i + 1, (H, W, 3))
        write_image(root / split / f"{i}{ext}", np.concatenate([a, b], axis=1))
        pairs[str(i)] = (a, b)
    return pairs


def _paired(folder, stems=("x", "y", "z"), b_ext=".png"):
    pairs = {}
    for i, stem in enumerate(stems):
        a, b = _rand(10 + i, (H, W, 3)), _rand(20 + i, (H, W, 3))
        write_image(folder / "A" / f"{stem}.png", a)
        write_image(folder / "B" / f"{stem}{b_ext}", b)
        pairs[stem] = (a, b)
    return pairs


def _one_line_naming(err, what):
    msg = str(err.value)
    assert "\n" not in msg
    assert str(what) in msg, msg


# --- layouts -----------------------------------------------------------------


def test_aligned_splits_halves(tmp_path):
    pairs = _aligned(tmp_path)
    (tmp_path / "train" / "README.txt").write_text("not an image")  # skipped: not an image extension
    (tmp_path / "train" / ".hidden.png").write_bytes(b"junk")  # skipped: hidden
    ds = PairedDataset(tmp_path)
    assert ds.layout == "aligned" and len(ds) == 3 and ds.names == ["0", "1", "2"]
    for i, name in enumerate(ds.names):
        a, b = ds[i]
        assert a.dtype == np.uint8 and a.shape == (H, W, 3) and a.flags.c_contiguous
        np.testing.assert_array_equal(a, pairs[name][0])
        np.testing.assert_array_equal(b, pairs[name][1])
        assert ds.sources(i) == [str(tmp_path / "train" / f"{name}.png")]
    np.testing.assert_array_equal(ds[-1][0], pairs["2"][0])
    with pytest.raises(IndexError):
        ds[3]


def test_direction_swap(tmp_path):
    pairs = _aligned(tmp_path)
    a, b = PairedDataset(tmp_path, direction="BtoA")[1]
    np.testing.assert_array_equal(a, pairs["1"][1])
    np.testing.assert_array_equal(b, pairs["1"][0])


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_grayscale_input_follows_direction(tmp_path, direction):
    pairs = _aligned(tmp_path)
    a, b = PairedDataset(tmp_path, direction=direction, input_nc=1, output_nc=3)[0]
    src_in, src_out = pairs["0"] if direction == "AtoB" else pairs["0"][::-1]
    assert a.shape == (H, W, 1) and b.shape == (H, W, 3)
    np.testing.assert_array_equal(a[:, :, 0], _luma(src_in))
    np.testing.assert_array_equal(b, src_out)


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_paired_grayscale_follows_direction(tmp_path, direction):
    pairs = _paired(tmp_path / "train")
    a, b = PairedDataset(tmp_path, direction=direction, input_nc=3, output_nc=1)[0]
    src_in, src_out = pairs["x"] if direction == "AtoB" else pairs["x"][::-1]
    np.testing.assert_array_equal(a, src_in)
    np.testing.assert_array_equal(b[:, :, 0], _luma(src_out))


def test_paired_layout(tmp_path):
    pairs = _paired(tmp_path / "val", b_ext=".jpg")  # B may use another extension
    ds = PairedDataset(tmp_path, split="val")
    assert ds.layout == "paired" and ds.names == ["x", "y", "z"]
    assert ds.sources(0) == [str(tmp_path / "val" / "A" / "x.png"), str(tmp_path / "val" / "B" / "x.jpg")]
    a, b = ds[0]
    np.testing.assert_array_equal(a, pairs["x"][0])
    assert b.shape == (H, W, 3)  # JPEG: lossy, so only the shape


def test_paired_root_folders_serve_train_only(tmp_path):
    _paired(tmp_path)  # root/A, root/B
    assert PairedDataset(tmp_path).layout == "paired"
    assert find_splits(tmp_path) == ["train"]
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path, split="val")
    _one_line_naming(e, tmp_path / "val")


def test_auto_prefers_paired_and_layout_can_be_forced(tmp_path):
    _aligned(tmp_path)
    _paired(tmp_path / "train")
    assert PairedDataset(tmp_path).layout == "paired"
    assert len(PairedDataset(tmp_path, layout="aligned")) == 3
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path, split="test", layout="paired")
    _one_line_naming(e, tmp_path / "test" / "A")


def test_rgba_and_four_channels(tmp_path):
    a, b = _rand(0, (H, W, 4)), _rand(1, (H, W, 4))
    write_image(tmp_path / "train" / "0.png", np.concatenate([a, b], axis=1))
    ds = PairedDataset(tmp_path, input_nc=4, output_nc=3)
    got_a, got_b = ds[0]
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_b, b[:, :, :3])  # RGBA -> RGB drops alpha


@pytest.mark.parametrize("layout", ["aligned", "paired"])
def test_n_channel_npy(tmp_path, layout):
    a, b = _rand(0, (H, W, 6)), _rand(1, (H, W, 2))
    if layout == "aligned":
        b6 = np.concatenate([b, b, b], axis=2)
        np.save(tmp_path / "train.npy", np.zeros(1))  # not in the split folder: ignored
        write_image(tmp_path / "train" / "0.npy", np.concatenate([a, b6], axis=1))
        expected_b = b6
    else:
        write_image(tmp_path / "train" / "A" / "0.npy", a)
        write_image(tmp_path / "train" / "B" / "0.npy", np.concatenate([b, b, b], axis=2))
        expected_b = np.concatenate([b, b, b], axis=2)
    got_a, got_b = PairedDataset(tmp_path, input_nc=6, output_nc=6)[0]
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_b, expected_b)
    # a 6-channel array cannot become RGB
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path, input_nc=3)[0]
    _one_line_naming(e, "0.npy")


def test_npy_conversions_follow_pillow(tmp_path):
    rgba = _rand(3, (H, W, 4))
    np.save(tmp_path / "x.npy", rgba)
    write_image(tmp_path / "x.png", rgba)
    for c in (1, 2, 3, 4):
        np.testing.assert_array_equal(read_image(tmp_path / "x.npy", c), read_image(tmp_path / "x.png", c))
    gray = _rand(4, (H, W))
    np.save(tmp_path / "g.npy", gray)
    write_image(tmp_path / "g.png", gray)
    for c in (1, 3, 4):
        np.testing.assert_array_equal(read_image(tmp_path / "g.npy", c), read_image(tmp_path / "g.png", c))


def test_multipage_tiff_channels(tmp_path):
    pages = [_rand(i, (H, W)) for i in range(5)]
    imgs = [Image.fromarray(p, "L") for p in pages]
    imgs[0].save(tmp_path / "m.tif", save_all=True, append_images=imgs[1:])
    np.testing.assert_array_equal(read_image(tmp_path / "m.tif", 5), np.stack(pages, axis=2))
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "m.tif", 6)
    _one_line_naming(e, tmp_path / "m.tif")


def test_16bit_grayscale_is_scaled(tmp_path):
    a16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 500).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png", 1)[:, :, 0], (a16 >> 8).astype(np.uint8))


def test_read_aligned_panels(tmp_path):
    parts = [_rand(i, (H, W, 3)) for i in range(3)]
    write_image(tmp_path / "p.png", np.concatenate(parts, axis=1))
    for got, want in zip(read_aligned(tmp_path / "p.png", (3, 3, 3)), parts):
        np.testing.assert_array_equal(got, want)


# --- bad inputs: one DataError line naming the file or folder -----------------


def test_missing_root_and_split(tmp_path):
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path / "nope")
    _one_line_naming(e, tmp_path / "nope")
    _aligned(tmp_path)
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path, split="test")
    _one_line_naming(e, tmp_path / "test")
    assert "found: train" in str(e.value)


def test_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path)
    _one_line_naming(e, tmp_path / "train")
    assert "no images" in str(e.value) and "1 other entry skipped" in str(e.value)


def test_empty_paired_folder(tmp_path):
    _paired(tmp_path / "train")
    for f in (tmp_path / "train" / "B").iterdir():
        f.unlink()
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path)
    _one_line_naming(e, tmp_path / "train" / "B")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_image_fails_at_decode(tmp_path, ext):
    _aligned(tmp_path, ext=ext)
    bad = tmp_path / "train" / f"1{ext}"
    _truncate(bad)
    ds = PairedDataset(tmp_path)  # indexing does not decode
    ds[0]
    with pytest.raises(DataError) as e:
        ds[1]
    _one_line_naming(e, bad)
    assert "cannot read image" in str(e.value)


def test_text_file_renamed_png(tmp_path):
    _aligned(tmp_path)
    bad = tmp_path / "train" / "1.png"
    bad.write_text("this is not an image\n")
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path)[1]
    _one_line_naming(e, bad)
    assert "not a PNG, JPEG, BMP, PPM, TIFF, WEBP or GIF image" in str(e.value)


def test_bad_npy(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "f.npy", 3)
    _one_line_naming(e, tmp_path / "f.npy")
    assert "uint8" in str(e.value)
    (tmp_path / "t.npy").write_bytes(np.lib.format.magic(1, 0) + b"garbage")
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "t.npy", 3)
    _one_line_naming(e, tmp_path / "t.npy")


def test_mismatched_names(tmp_path):
    _paired(tmp_path / "train", stems=[f"s{i}" for i in range(9)])
    for i in (2, 4, 5, 6, 7, 8):
        (tmp_path / "train" / "B" / f"s{i}.png").rename(tmp_path / "train" / "B" / f"t{i}.png")
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path)
    msg = str(e.value)
    _one_line_naming(e, tmp_path / "train" / "A")
    assert "6 file(s) in" in msg and "s2.png, s4.png, s5.png, s6.png, s7.png, ... (1 more)" in msg
    assert "t2.png" in msg


def test_odd_width_aligned(tmp_path):
    _aligned(tmp_path)
    bad = tmp_path / "train" / "1.png"
    write_image(bad, _rand(0, (H, 2 * W + 1, 3)))
    ds = PairedDataset(tmp_path)
    with pytest.raises(DataError) as e:
        ds[1]
    _one_line_naming(e, bad)
    assert "width 21" in str(e.value)


def test_paired_size_mismatch(tmp_path):
    _paired(tmp_path / "train")
    bad = tmp_path / "train" / "B" / "y.png"
    write_image(bad, _rand(0, (H + 1, W, 3)))
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path)[1]
    _one_line_naming(e, bad)


def test_duplicate_stems(tmp_path):
    _aligned(tmp_path)
    write_image(tmp_path / "train" / "1.jpg", _rand(0, (H, 2 * W, 3)))
    with pytest.raises(DataError) as e:
        PairedDataset(tmp_path)
    _one_line_naming(e, tmp_path / "train")
    assert "'1'" in str(e.value)


def test_validate_all(tmp_path):
    _aligned(tmp_path, n=4)
    ds = PairedDataset(tmp_path)
    ds.validate_all()
    _truncate(tmp_path / "train" / "2.png")
    _truncate(tmp_path / "train" / "3.png")
    with pytest.raises(DataError) as e:
        ds.validate_all()
    _one_line_naming(e, tmp_path / "train" / "2.png")


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"layout": "stacked"}, "--layout"), ({"direction": "AtoC"}, "--direction"), ({"input_nc": 0}, "--input-nc")],
)
def test_bad_options(tmp_path, kwargs, flag):
    _aligned(tmp_path)
    with pytest.raises(ConfigError, match=flag):
        PairedDataset(tmp_path, **kwargs)


# --- fingerprint ----------------------------------------------------------------


def test_fingerprint_tracks_files(tmp_path):
    _aligned(tmp_path)
    fp = PairedDataset(tmp_path).fingerprint()
    assert fp == PairedDataset(tmp_path).fingerprint()
    assert fp != PairedDataset(tmp_path, direction="BtoA").fingerprint()
    assert fp != PairedDataset(tmp_path, input_nc=1).fingerprint()

    f = tmp_path / "train" / "1.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = PairedDataset(tmp_path).fingerprint()
    assert touched != fp

    write_image(tmp_path / "train" / "3.png", _rand(9, (H, 2 * W, 3)))
    added = PairedDataset(tmp_path).fingerprint()
    assert added != touched

    ds = PairedDataset(tmp_path)
    (tmp_path / "train" / "3.png").unlink()
    assert PairedDataset(tmp_path).fingerprint() == touched
    with pytest.raises(DataError) as e:
        ds.fingerprint()  # indexed before the removal
    _one_line_naming(e, tmp_path / "train" / "3.png")


# --- combine ----------------------------------------------------------------------


def test_combine_builds_aligned_images(tmp_path):
    pairs = {}
    for split in ("train", "val"):
        pairs[split] = _paired(tmp_path / "src" / split)
    src = tmp_path / "src" / "train"
    n = combine(src / "A", src / "B", tmp_path / "out" / "train", progress=False)
    assert n == 3
    ds = PairedDataset(tmp_path / "out")
    assert ds.layout == "aligned" and ds.names == ["x", "y", "z"]
    for i, name in enumerate(ds.names):
        np.testing.assert_array_equal(ds[i][0], pairs["train"][name][0])
        np.testing.assert_array_equal(ds[i][1], pairs["train"][name][1])


def test_combine_split_folders(tmp_path):
    for split in ("train", "test"):
        _paired(tmp_path / "src" / split, stems=(f"{split}1", f"{split}2"))
    # rearrange into A/<split>, B/<split>, as the reference script expects
    for side in "AB":
        for split in ("train", "test"):
            (tmp_path / side).mkdir(exist_ok=True)
            (tmp_path / "src" / split / side).rename(tmp_path / side / split)
    assert combine(tmp_path / "A", tmp_path / "B", tmp_path / "out", progress=False) == 4
    assert find_splits(tmp_path / "out") == ["train", "test"]
    assert PairedDataset(tmp_path / "out", split="test").names == ["test1", "test2"]


def test_combine_errors(tmp_path):
    _paired(tmp_path)
    with pytest.raises(DataError) as e:
        combine(tmp_path / "A", tmp_path / "missing", tmp_path / "out", progress=False)
    _one_line_naming(e, tmp_path / "missing")

    bad = tmp_path / "B" / "y.png"
    write_image(bad, _rand(0, (H, W + 2, 3)))
    with pytest.raises(DataError) as e:
        combine(tmp_path / "A", tmp_path / "B", tmp_path / "out", progress=False)
    _one_line_naming(e, bad)
    assert "same size" in str(e.value)

    bad.rename(tmp_path / "B" / "w.png")
    with pytest.raises(DataError) as e:
        combine(tmp_path / "A", tmp_path / "B", tmp_path / "out", progress=False)
    _one_line_naming(e, "y.png")
    assert "w.png" in str(e.value)


def test_image_size_reads_only_the_header(tmp_path):
    write_image(tmp_path / "a.png", _rand(0, (H, 2 * W, 3)), fast=True)
    np.save(tmp_path / "b.npy", _rand(0, (H, W, 6)))
    assert image_size(tmp_path / "a.png") == (2 * W, H)
    assert image_size(tmp_path / "b.npy") == (W, H)
    (tmp_path / "c.png").write_text("text")
    with pytest.raises(DataError) as e:
        image_size(tmp_path / "c.png")
    _one_line_naming(e, tmp_path / "c.png")


def test_only_the_documented_formats_are_decoded_whatever_the_extension(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    reached = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: reached.append(1))
    root = tmp_path / "data"
    _aligned(root, n=2)
    eps = root / "train" / "2.png"  # an EPS file named .png
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 12\nshowpage\n%%EOF\n")
    pcx = root / "train" / "3.png"
    Image.fromarray(_rand(9, (H, 2 * W, 3))).save(pcx, format="PCX")
    ds = PairedDataset(root)
    for i, path in ((2, eps), (3, pcx)):
        with pytest.raises(DataError, match=f"{path}: cannot read image \\(not a PNG, JPEG, BMP"):
            ds[i]
        with pytest.raises(DataError, match="not a PNG, JPEG"):
            image_size(path)
    assert reached == []
    for fmt in ("GIF", "BMP", "TIFF", "WEBP", "PPM", "JPEG"):  # the accepted ones still decode
        p = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(_rand(3, (H, W, 3))).save(p, format=fmt)
        assert read_image(p, 3).shape == (H, W, 3)
