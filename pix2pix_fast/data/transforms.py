"""The pix2pix input transform, in NumPy: the reference the native loader is held to.

Per sample, the reference pipeline resizes A and B (``load_size``), crops a
random ``crop_size`` window and maybe flips it, with the same parameters for A
and B. This module is the readable, slow version of exactly what
``csrc/resample.cpp`` + ``csrc/transform.h`` compute; the tests hold the C++
output to it (bit-exact for crop and flip, within 1 grey level where a resize
is involved) and ``PairedLoader(backend="python")`` runs on it.

Preprocess modes (the reference's ``--preprocess``):

- ``resize_and_crop`` (default): resize to load_size x load_size, random crop_size crop.
- ``crop``: random crop_size crop of the image as it is (an image smaller than
  the crop is an error; the reference would pad or skip the crop).
- ``scale_width``: width to load_size, height ``max(load_size * h // w, crop_size)``.
- ``scale_width_and_crop``: as scale_width, then a random crop_size crop.
- Load and crop sizes are an int (square) or a (height, width) pair
  (rectangular crops; scale_width then scales to the load width).
- ``none``: no resize except rounding both sides to a multiple of 4 (Python's
  round half to even, as the reference's ``__make_power_2(base=4)``).

Resize filter: Pillow's ``BICUBIC`` -- Keys' cubic convolution with a = -0.5,
half-pixel sample centres (output x samples the input at (x + 0.5) * in/out
- 0.5), the kernel widened by in/out when shrinking (antialiasing), taps that
fall outside the image dropped and the rest renormalised: the coefficients of
Pillow's ``resample.c``, so the result is the reference's bicubic. Pillow
applies them in two passes with a uint8 rounding in between; this reference
and the C++ kernel round once at the end (``clip(floor(v + 0.5), 0, 255)``),
so they differ from Pillow by at most a grey level or two at sharp edges.

Randomness: no shared sequential generator. Every draw is a counter-based hash
(the splitmix64 finaliser ``mix``) of (seed, epoch, sample index), so a sample
gets the same crop and flip whichever thread renders it::

    key  = mix(mix(mix(seed ^ SAMPLE_DOMAIN) ^ epoch) ^ index)
    x    = (mix(key + 0) * (x_max + 1)) >> 64      # Lemire's multiply-shift
    y    = (mix(key + 1) * (y_max + 1)) >> 64
    flip = flip_enabled and mix(key + 2) >> 63

The epoch's sample order is ``argsort`` (stable) of ``mix(mix(mix(seed ^
ORDER_DOMAIN) ^ epoch) + j)`` over j = 0 .. n - 1: a fresh permutation every
epoch, a function of (seed, epoch) only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
SAMPLE_DOMAIN = 0x5A3C9E1D2B4F6071  # csrc/transform.h kSampleDomain
ORDER_DOMAIN = 0x1F83D9ABFB41BD6B


def mix(z: int) -> int:
    """splitmix64 finaliser of z + 0x9E3779B97F4A7C15, all mod 2^64."""
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    """`mix` over a uint64 array (NumPy's uint64 arithmetic wraps mod 2^64)."""
    z = z + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Params:
    """One sample's transform: resize to (resize_h, resize_w), crop, flip."""

    resize_h: int
    resize_w: int
    crop_y: int
    crop_x: int
    crop_h: int
    crop_w: int
    flip: bool


@dataclass(frozen=True)
class Geometry:
    """Where an image goes: resized size, the crop's offset ranges and size."""

    resize_h: int
    resize_w: int
    max_y: int
    max_x: int
    crop_h: int
    crop_w: int


def _round_to_4(v: int) -> int:
    return int(round(v / 4) * 4)  # Python rounds half to even, like the reference


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """A load or crop size as (height, width): an int is a square."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _size_text(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]} (HxW)"


def output_geometry(in_h: int, in_w: int, load_size: int | tuple[int, int], crop_size: int | tuple[int, int],
                    preprocess: str) -> Geometry:
    """Resize target and crop range of an in_h x in_w image; ValueError if it cannot be used.
    load_size, crop_size: an int (square) or (height, width); scale_width scales to the load width."""
    if in_h <= 0 or in_w <= 0:
        raise ValueError("empty image")
    (load_h, load_w), (crop_h, crop_w) = size_hw(load_size), size_hw(crop_size)

    def check_crop_fits_load(height_too: bool) -> None:
        if crop_w > load_w or (height_too and crop_h > load_h):
            raise ValueError(f"crop_size {_size_text((crop_h, crop_w))} > load_size {_size_text((load_h, load_w))}")

    if preprocess == "resize_and_crop":
        check_crop_fits_load(True)
        return Geometry(load_h, load_w, load_h - crop_h, load_w - crop_w, crop_h, crop_w)
    if preprocess == "crop":
        if in_h < crop_h or in_w < crop_w:
            raise ValueError(f"image {in_h}x{in_w} (HxW) is smaller than crop_size {_size_text((crop_h, crop_w))}")
        return Geometry(in_h, in_w, in_h - crop_h, in_w - crop_w, crop_h, crop_w)
    if preprocess in ("scale_width", "scale_width_and_crop"):
        h_scaled = load_w * in_h // in_w
        h = max(h_scaled, crop_h)
        if preprocess == "scale_width":
            return Geometry(h, load_w, 0, 0, h, load_w)
        check_crop_fits_load(False)
        return Geometry(h, load_w, max(0, h_scaled - crop_h), load_w - crop_w, crop_h, crop_w)
    if preprocess == "none":
        h, w = _round_to_4(in_h), _round_to_4(in_w)
        if h == 0 or w == 0:
            raise ValueError(f"image {in_h}x{in_w} (HxW) rounds to an empty size for preprocess=none")
        return Geometry(h, w, 0, 0, h, w)
    raise ValueError(f"unknown preprocess mode '{preprocess}' ({' | '.join(PREPROCESS_MODES)})")


def sample_params(
    seed: int,
    epoch: int,
    index: int,
    in_size: tuple[int, int],
    load_size: int | tuple[int, int],
    crop_size: int | tuple[int, int],
    preprocess: str,
    flip: bool,
) -> Params:
    """The transform of sample `index` in `epoch`; in_size = (H, W) of its A image."""
    g = output_geometry(in_size[0], in_size[1], load_size, crop_size, preprocess)
    key = mix(mix(mix((seed & _MASK) ^ SAMPLE_DOMAIN) ^ (epoch & _MASK)) ^ (index & _MASK))
    x = (mix((key + 0) & _MASK) * (g.max_x + 1)) >> 64
    y = (mix((key + 1) & _MASK) * (g.max_y + 1)) >> 64
    f = bool(flip) and (mix((key + 2) & _MASK) >> 63) == 1
    return Params(g.resize_h, g.resize_w, y, x, g.crop_h, g.crop_w, f)


def permutation(seed: int, epoch: int, n: int, shuffle: bool = True) -> np.ndarray:
    """The order of the n samples in `epoch` (int64); 0 .. n-1 when not shuffling."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    base = mix(mix((seed & _MASK) ^ ORDER_DOMAIN) ^ (epoch & _MASK))
    keys = _mix_array(np.uint64(base) + np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable").astype(np.int64)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of Pillow's bicubic coefficients (rows sum to 1)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = _bicubic((np.arange(xmin, xmax) - center + 0.5) * ss)
        total = k.sum()
        w[xx, xmin:xmax] = k / total if total != 0.0 else k
    return w


def resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bicubic resize (the filter above) of an (H, W, C) uint8 image, in float64, one rounding."""
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError("resize: expected an (H, W, C) uint8 image")
    h, w, _ = img.shape
    if (h, w) == (out_h, out_w):
        return img.copy()
    wy = resize_weights(h, out_h)
    wx = resize_weights(w, out_w)
    out = np.einsum("yh,hwc,xw->yxc", wy, img.astype(np.float64), wx, optimize=True)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def apply(img: np.ndarray, params: Params) -> np.ndarray:
    """Resize, crop and flip one (H, W, C) uint8 image; returns (crop_h, crop_w, C) uint8."""
    p = params
    out = resize(img, p.resize_h, p.resize_w)
    if not (0 <= p.crop_y <= p.resize_h - p.crop_h and 0 <= p.crop_x <= p.resize_w - p.crop_w):
        raise ValueError(f"crop window {params} outside the resized image")
    out = out[p.crop_y : p.crop_y + p.crop_h, p.crop_x : p.crop_x + p.crop_w]
    if p.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
