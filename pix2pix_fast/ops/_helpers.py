"""``@triton.jit`` helpers shared by the kernels in ``pix2pix_fast.ops``.

Each is inlined into the kernels that call it (Triton inlines ``@jit``
callees), so a helper costs nothing at run time; it exists so that a piece
of index arithmetic or math is written once:

* ``sample_channel_tile``: program id -> (sample, channels, channel mask, tile) of
  the one-dimensional grids of the elementwise and normalisation kernels;
* ``pixel_offsets``: element offsets inside one sample of a dense NCHW or
  channels_last tensor;
* ``reflect_index`` (padded -> source coordinate), ``reflected_copy``
  (source pixel -> its up to nine positions in the padded plane) and
  ``gather_reflected`` (the gradient of reflect padding);
* ``apply_act`` / ``act_grad``: the activation and its derivative;
* ``tile_stats`` / ``chan_merge``: centred statistics of a tile and Chan's
  parallel merge of two (count, mean, M2) triples.

Activation codes (``ACT``) are those of ``_common.ACT_CODES``: 0 none,
1 relu, 2 leaky_relu.
"""

from pix2pix_fast.ops._triton import tl, triton

__all__ = [
    "sample_channel_tile",
    "pixel_offsets",
    "reflect_index",
    "reflected_copy",
    "gather_reflected",
    "apply_act",
    "act_grad",
    "tile_stats",
    "chan_merge",
]


@triton.jit
def sample_channel_tile(pid, tiles, C, BLOCK_C: tl.constexpr):
    """(sample as int64, channel indices, channel mask, tile) of program ``pid`` of a one-dimensional grid.

    pid = (sample * channel blocks + channel block) * ``tiles`` + tile, so the
    tiles of one (sample, channel block) are adjacent; one grid dimension
    because x allows 2**31 - 1 programs, y and z only 65535.
    """
    pid_nc = pid // tiles
    tile = pid - pid_nc * tiles
    num_cb = tl.cdiv(C, BLOCK_C)
    n = (pid_nc // num_cb).to(tl.int64)
    c = (pid_nc % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, c, c < C, tile


@triton.jit
def pixel_offsets(p, c, P, C, CL: tl.constexpr):
    """(len(p), len(c)) offsets of pixels ``p`` (h * W + w) and channels ``c`` inside one sample.

    The sample is a dense (C, P pixels) block, channels_last (``CL``) or NCHW.
    """
    if CL:
        offs = p[:, None] * C + c[None, :]
    else:
        offs = c[None, :] * P + p[:, None]
    return offs


@triton.jit
def reflect_index(i, size):
    """Source coordinate of padded coordinate ``i`` (already shifted by the low pad): mirror at 0 and size - 1."""
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= size, 2 * size - 2 - i, i)


@triton.jit
def _mirror(i, pad_lo, pad_hi, size, mask, K: tl.constexpr):
    """Padded coordinate of copy ``K`` of source coordinate ``i`` and where that copy exists.

    K = 0: the pixel itself (i + pad_lo); 1: its low mirror (pad_lo - i, for
    1 <= i <= pad_lo); 2: its high mirror (pad_lo + 2 size - 2 - i, for
    size - 1 - pad_hi <= i <= size - 2).
    """
    if K == 0:
        o = i + pad_lo
        m = mask
    elif K == 1:
        o = pad_lo - i
        m = mask & (i >= 1) & (i <= pad_lo)
    else:
        o = pad_lo + 2 * size - 2 - i
        m = mask & (i >= size - 1 - pad_hi) & (i <= size - 2)
    return o, m


@triton.jit
def reflected_copy(h, w, mask, H, W, Wo, pad_l, pad_r, pad_t, pad_b, K: tl.constexpr):
    """(pixel index ho * Wo + wo in the padded plane, mask) of copy ``K`` (0..8) of source pixel (h, w).

    Reflect padding puts each source pixel at up to nine places: itself, its
    top/bottom mirror rows crossed with its left/right mirror columns; copy K
    is row copy K // 3 crossed with column copy K % 3 (see ``_mirror``).
    ``mask``: the valid source pixels.
    """
    ho, mh = _mirror(h, pad_t, pad_b, H, mask, K // 3)
    wo, m = _mirror(w, pad_l, pad_r, W, mh, K % 3)
    return ho * Wo + wo, m


@triton.jit
def gather_reflected(
    base, h, w, hw_mask, c, c_mask, C, H, W, Ho, Wo, pad_l, pad_r, pad_t, pad_b,
    CL: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """fp32 sum of the up to nine padded copies of each source pixel: the gradient of reflect padding.

    ``base``: the sample's (C, Ho, Wo) block of the padded tensor; (h, w,
    hw_mask): BLOCK_HW source pixels; (c, c_mask): BLOCK_C channels.  Masked
    loads, no atomics: deterministic.
    """
    acc = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for k in tl.static_range(9):
        o, m = reflected_copy(h, w, hw_mask, H, W, Wo, pad_l, pad_r, pad_t, pad_b, k)
        acc += tl.load(
            base + pixel_offsets(o, c, Ho * Wo, C, CL), mask=m[:, None] & c_mask[None, :], other=0.0
        ).to(tl.float32)
    return acc


@triton.jit
def apply_act(y, negative_slope, ACT: tl.constexpr):
    """act(y) for fp32 y (ACT: 0 none, 1 relu, 2 leaky_relu); NaN stays NaN, like torch.relu and F.leaky_relu."""
    if ACT == 1:
        y = tl.where(y < 0.0, 0.0, y)
    elif ACT == 2:
        y = tl.where(y < 0.0, y * negative_slope, y)
    return y


@triton.jit
def act_grad(dy, pre, negative_slope, ACT: tl.constexpr):
    """dy * act'(pre) in fp32, act' taken from the sign of the pre-activation as PyTorch does (pre <= 0: 0 or the slope)."""
    if ACT == 1:
        dy = tl.where(pre > 0.0, dy, 0.0)
    elif ACT == 2:
        dy = tl.where(pre > 0.0, dy, dy * negative_slope)
    return dy


@triton.jit
def tile_stats(x, mask, count):
    """Per-column (mean, centred sum of squares M2) of the ``count`` valid rows of an fp32 tile.

    ``x`` is 0 where ``mask`` is False.  Never E[x^2] - E[x]^2.
    """
    mean = tl.sum(x, axis=0) / count
    d = tl.where(mask, x - mean[None, :], 0.0)
    return mean, tl.sum(d * d, axis=0)


@triton.jit
def chan_merge(mean_a, m2_a, count_a, mean_b, m2_b, count_b):
    """(mean, M2, count) of the union of two sets given as (mean, M2, count) (Chan et al.)."""
    count = count_a + count_b
    frac = count_b / count
    delta = mean_b - mean_a
    mean = mean_a + delta * frac
    m2 = m2_a + m2_b + delta * delta * (count_a * frac)
    return mean, m2, count
