"""The NumPy reference transform (transforms.py) and the C++ kernel held to it."""
import numpy as np
import pytest
from PIL import Image

from pix2pix_fast.data import transforms as T

_C = pytest.importorskip("pix2pix_fast._C")
native = _C.loader

MODES = T.PREPROCESS_MODES


@pytest.fixture(params=["avx2", "baseline"])
def isa(request):
    """Run a test on the AVX2 kernels and on the baseline (SSE2 / NEON) ones."""
    native.set_avx2_enabled(request.param == "avx2")
    try:
        if native.kernel_isa() != request.param:
            pytest.skip(f"no {request.param} kernels on this CPU")
        yield request.param
    finally:
        native.set_avx2_enabled(True)


def _native_params(seed, epoch, index, in_size, load, crop, mode, flip):
    return T.Params(*native.sample_params(seed % 2**64, epoch, index, in_size[0], in_size[1], load, crop, mode, flip))


def _native_apply(img, p):
    out = native.apply(img, p.resize_h, p.resize_w, p.crop_y, p.crop_x, p.crop_h, p.crop_w, p.flip)
    return out.transpose(1, 2, 0)


def _smooth(h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(x / 7.0 + rng.uniform(0, 3)) * np.cos(y / 11.0)
    img = base[..., None] + np.linspace(-20, 20, c)[None, None, :] + rng.normal(0, 6, (h, w, c))
    return img.clip(0, 255).astype(np.uint8)


def test_hash_matches_native():
    for z in [0, 1, 12345, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]:
        assert T.mix(z) == native.mix64(z)


def test_sample_params_equal_native():
    rng = np.random.default_rng(1)
    checked = 0
    for t in range(1500):
        mode = MODES[t % len(MODES)]
        h, w = (int(v) for v in rng.integers(1, 700, 2))
        load = int(rng.integers(1, 400))
        crop = int(rng.integers(1, load + 1))
        seed = int(rng.integers(-(2**62), 2**62))
        epoch, index, flip = int(rng.integers(0, 500)), int(rng.integers(0, 10**6)), bool(t % 3)
        try:
            ref = T.sample_params(seed, epoch, index, (h, w), load, crop, mode, flip)
        except ValueError:
            with pytest.raises(ValueError):
                _native_params(seed, epoch, index, (h, w), load, crop, mode, flip)
            continue
        assert _native_params(seed, epoch, index, (h, w), load, crop, mode, flip) == ref
        checked += 1
    assert checked > 1000


def test_geometry_follows_the_reference():
    # resize_and_crop: load x load, crop range 0 .. load - crop
    g = T.output_geometry(256, 512, 286, 256, "resize_and_crop")
    assert (g.resize_h, g.resize_w, g.max_y, g.max_x, g.crop_h, g.crop_w) == (286, 286, 30, 30, 256, 256)
    # scale_width: h = max(load * h // w, crop); no crop
    g = T.output_geometry(400, 600, 286, 128, "scale_width")
    assert (g.resize_h, g.resize_w, g.crop_h, g.crop_w) == (190, 286, 190, 286)
    g = T.output_geometry(100, 600, 286, 128, "scale_width")
    assert (g.resize_h, g.resize_w) == (128, 286)
    # scale_width_and_crop: y range from load * h // w without the max
    g = T.output_geometry(100, 600, 286, 40, "scale_width_and_crop")
    assert (g.resize_h, g.resize_w, g.max_y, g.max_x) == (47, 286, 7, 246)
    # none: Python's round(v / 4) * 4, half to even
    for v, r in [(10, 8), (14, 16), (6, 8), (9, 8), (11, 12), (256, 256)]:
        assert T.output_geometry(v, v, 1, 1, "none").resize_h == r
    with pytest.raises(ValueError, match="empty"):
        T.output_geometry(2, 40, 1, 1, "none")
    with pytest.raises(ValueError, match="smaller than crop_size"):
        T.output_geometry(20, 40, 286, 32, "crop")
    with pytest.raises(ValueError, match="crop_size"):
        T.output_geometry(20, 40, 16, 32, "resize_and_crop")


@pytest.mark.parametrize(
    "h, w, out_h, out_w, c",
    [
        (37, 53, 61, 45, 3),  # up in y, down in x
        (23, 29, 286 // 4, 286 // 5, 1),
        (64, 64, 31, 17, 4),  # shrinking: antialiased (wider kernel)
        (11, 13, 29, 31, 5),  # N channels
        (9, 9, 3, 3, 2),
        (5, 7, 5, 40, 3),  # identity in y, 8x up in x
        (29, 290, 31, 286, 3),  # slight shrink in x: 5 taps
        (9, 13, 40, 13, 3),  # identity in x: 1 tap
        (256, 256, 286, 286, 3),  # the real one
    ],
)
def test_resize_matches_reference_within_one_level(h, w, out_h, out_w, c, isa):
    rng = np.random.default_rng(h * w + c)
    img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)  # noise: the worst case for overshoot
    ref = T.resize(img, out_h, out_w)
    out = _native_apply(img, T.Params(out_h, out_w, 0, 0, out_h, out_w, False))
    assert out.shape == ref.shape
    diff = np.abs(out.astype(np.int16) - ref)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01  # only values at a .5 rounding boundary differ


def test_identity_resize_is_exact(isa):
    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(T.resize(img, 17, 23), img)
    assert np.array_equal(_native_apply(img, T.Params(17, 23, 0, 0, 17, 23, False)), img)
    w = T.resize_weights(9, 9)
    assert np.array_equal(w, np.eye(9))


@pytest.mark.parametrize("c", [1, 3, 4, 6])
def test_crop_and_flip_are_exact(c, isa):
    img = np.random.default_rng(c).integers(0, 256, (31, 45, c), dtype=np.uint8)
    for seed in range(6):
        p = T.sample_params(seed, 0, 7, img.shape[:2], 0, 16, "crop", True)
        ref = T.apply(img, p)
        expect = img[p.crop_y : p.crop_y + 16, p.crop_x : p.crop_x + 16]
        assert np.array_equal(ref, expect[:, ::-1] if p.flip else expect)
        assert np.array_equal(_native_apply(img, p), ref)


@pytest.mark.parametrize("mode", MODES)
def test_apply_matches_reference(mode, isa):
    img = np.random.default_rng(3).integers(0, 256, (41, 67, 3), dtype=np.uint8)
    for index in range(8):
        p = T.sample_params(5, 2, index, img.shape[:2], 47, 24, mode, True)
        ref = T.apply(img, p)
        out = _native_apply(img, p)
        assert out.shape == ref.shape == (p.crop_h, p.crop_w, 3)
        assert np.abs(out.astype(np.int16) - ref).max() <= 1


def test_reference_filter_is_pillows_bicubic():
    # Pillow rounds to uint8 between its two passes; on a natural image that
    # costs at most one grey level against the single-rounding reference.
    img = _smooth(64, 96, 3)
    for out_h, out_w in [(72, 107), (286 // 4, 286 // 4), (30, 50)]:
        pil = np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.BICUBIC))
        assert np.abs(pil.astype(np.int16) - T.resize(img, out_h, out_w)).max() <= 1


def test_flip_frequency_and_crop_coverage():
    n = 4000
    params = [_native_params(11, 0, i, (256, 256), 286, 256, "resize_and_crop", True) for i in range(n)]
    flips = np.mean([p.flip for p in params])
    assert abs(flips - 0.5) < 0.04  # ~5 sigma
    xs = np.bincount([p.crop_x for p in params], minlength=31)
    ys = np.bincount([p.crop_y for p in params], minlength=31)
    assert len(xs) == len(ys) == 31  # never beyond load - crop = 30
    assert xs.min() > 0 and ys.min() > 0  # every offset 0 .. 30 drawn
    assert not any(p.flip for p in (_native_params(11, 0, i, (9, 9), 9, 9, "resize_and_crop", False) for i in range(50)))


def test_params_depend_on_seed_epoch_and_index():
    base = T.sample_params(0, 0, 0, (256, 256), 286, 256, "resize_and_crop", True)
    others = [
        T.sample_params(1, 0, 0, (256, 256), 286, 256, "resize_and_crop", True),
        T.sample_params(0, 1, 0, (256, 256), 286, 256, "resize_and_crop", True),
        T.sample_params(0, 0, 1, (256, 256), 286, 256, "resize_and_crop", True),
    ]
    assert all((o.crop_x, o.crop_y) != (base.crop_x, base.crop_y) for o in others)


def test_permutation():
    a = T.permutation(3, 0, 50)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, T.permutation(3, 0, 50))
    assert not np.array_equal(a, T.permutation(3, 1, 50))
    assert not np.array_equal(a, T.permutation(4, 0, 50))
    assert np.array_equal(T.permutation(3, 5, 7, shuffle=False), np.arange(7))
