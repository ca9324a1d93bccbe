"""Reflect padding of 4-D NCHW / channels_last tensors, forward and backward.

Semantics are ``F.pad(x, (left, right, top, bottom), mode="reflect")``: the
border mirrors the interior without repeating the edge pixel, and every pad
must be smaller than the padded dimension.

Design
------
* Forward: a program per (sample, block of channels, block of *output*
  pixels) computes the source pixel of each output pixel by reflection and
  gathers it: x is read once from HBM (border pixels a second time, from
  cache), y written once.  Bytes: numel(x) + numel(y) elements.
* One grid dimension (program = (sample, channel block) x pixel tile): grid
  y and z are limited to 65535 programs, which large planes would exceed.
* Backward: a program per tile of *input* pixels gathers the up to nine
  gradient copies of each pixel from dy (itself, its top/bottom mirror x its
  left/right mirror) with masked loads and writes dx once: dy read once, dx
  written once, no atomics, deterministic.  Bytes: numel(dy) + numel(dx).
* Nothing is saved for backward (the input shape follows from dy and pad).
* NCHW and channels_last share one kernel body (``CL`` constexpr); output and
  gradient keep the input's memory format.  Any dtype the hardware loads.
The reflected-gradient gather is also used, inlined, by the fused
``instance_norm_act(..., pad=...)`` backward in ``instance_norm_act.py``.
"""

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from pix2pix_fast.ops._common import (
    Launch,
    Ptr,
    as_memory_format,
    cdiv,
    make_launch,
    next_power_of_2,
    normalize_pad,
    run_launch,
    suggest_memory_format,
    tl,
    use_triton,
)

__all__ = ["reflect_pad", "reflect_pad_ref"]

PadArg = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------
# PyTorch reference
# ---------------------------------------------------------------------------
def reflect_pad_ref(x: Tensor, pad: PadArg) -> Tensor:
    """``F.pad(x, (left, right, top, bottom), mode="reflect")``, output in x's memory format."""
    pads = normalize_pad(pad)
    y = F.pad(x, pads, mode="reflect")
    return as_memory_format(y, suggest_memory_format(x))


# ---------------------------------------------------------------------------
# Triton kernels (undecorated: see _common.kernel_for)
# ---------------------------------------------------------------------------
def _reflect_pad_fwd_kernel(
    x_ptr,  # (N, C, H, W) any dtype, NCHW or channels_last (CL)
    y_ptr,  # (N, C, Ho, Wo) = (N, C, H + pad_t + pad_b, W + pad_l + pad_r), x's dtype and format
    C,
    H,
    W,
    Ho,
    Wo,
    pad_l,
    pad_t,
    CL: tl.constexpr,  # channels_last (else NCHW)
    BLOCK_HW: tl.constexpr,  # output pixels per program
    BLOCK_C: tl.constexpr,  # channels per program
):
    # One grid dimension (x allows 2**31 - 1 programs; y and z only 65535):
    # program = (sample, channel block) * tiles + tile of output pixels.
    pid = tl.program_id(0)
    num_hw = tl.cdiv(Ho * Wo, BLOCK_HW)
    pid_nc = pid // num_hw
    pid_hw = pid - pid_nc * num_hw
    num_cb = tl.cdiv(C, BLOCK_C)
    n = (pid_nc // num_cb).to(tl.int64)
    c = (pid_nc % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    o = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ho = o // Wo
    wo = o - ho * Wo
    # Source pixel: mirror about the first / last row and column.
    h = ho - pad_t
    h = tl.where(h < 0, -h, h)
    h = tl.where(h >= H, 2 * H - 2 - h, h)
    w = wo - pad_l
    w = tl.where(w < 0, -w, w)
    w = tl.where(w >= W, 2 * W - 2 - w, w)
    mask = (o < Ho * Wo)[:, None] & (c < C)[None, :]
    if CL:
        src = n * H * W * C + (h * W + w)[:, None] * C + c[None, :]
        dst = n * Ho * Wo * C + o[:, None] * C + c[None, :]
    else:
        src = n * C * H * W + c[None, :] * (H * W) + (h * W + w)[:, None]
        dst = n * C * Ho * Wo + c[None, :] * (Ho * Wo) + o[:, None]
    v = tl.load(x_ptr + src, mask=mask)
    tl.store(y_ptr + dst, v, mask=mask)


def _reflect_pad_bwd_kernel(
    dy_ptr,  # (N, C, Ho, Wo) any float dtype, NCHW or channels_last (CL)
    dx_ptr,  # (N, C, H, W) dy's dtype and format
    C,
    H,
    W,
    Ho,
    Wo,
    pad_l,
    pad_r,
    pad_t,
    pad_b,
    CL: tl.constexpr,  # channels_last (else NCHW)
    BLOCK_HW: tl.constexpr,  # input pixels per program
    BLOCK_C: tl.constexpr,  # channels per program
):
    # One grid dimension, as in the forward: (sample, channel block) * tiles + tile of input pixels.
    pid = tl.program_id(0)
    num_hw = tl.cdiv(H * W, BLOCK_HW)
    pid_nc = pid // num_hw
    pid_hw = pid - pid_nc * num_hw
    num_cb = tl.cdiv(C, BLOCK_C)
    n = (pid_nc // num_cb).to(tl.int64)
    c = (pid_nc % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_mask = hw < H * W
    h = hw // W
    w = hw - h * W
    # Scalar base pointer of the sample, int32 offsets inside it (fewer registers).
    dy_base = dy_ptr + n * C * Ho * Wo
    if CL:
        c_off = c[None, :]
    else:
        c_off = c[None, :] * (Ho * Wo)
    acc = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    # Input row h appears in output row h + pad_t, in the top mirror (row
    # pad_t - h, for 1 <= h <= pad_t) and in the bottom mirror (row
    # pad_t + 2H - 2 - h, for H - 1 - pad_b <= h <= H - 2); likewise columns.
    for i in tl.static_range(3):
        if i == 0:
            ho = h + pad_t
            mh = hw_mask
        elif i == 1:
            ho = pad_t - h
            mh = hw_mask & (h >= 1) & (h <= pad_t)
        else:
            ho = pad_t + 2 * H - 2 - h
            mh = hw_mask & (h >= H - 1 - pad_b) & (h <= H - 2)
        for j in tl.static_range(3):
            if j == 0:
                wo = w + pad_l
                mw = mh
            elif j == 1:
                wo = pad_l - w
                mw = mh & (w >= 1) & (w <= pad_l)
            else:
                wo = pad_l + 2 * W - 2 - w
                mw = mh & (w >= W - 1 - pad_r) & (w <= W - 2)
            o = ho * Wo + wo
            if CL:
                offs = o[:, None] * C + c_off
            else:
                offs = o[:, None] + c_off
            acc += tl.load(dy_base + offs, mask=mw[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
    mask = hw_mask[:, None] & c_mask[None, :]
    if CL:
        dst = n * H * W * C + hw[:, None] * C + c[None, :]
    else:
        dst = n * C * H * W + c[None, :] * (H * W) + hw[:, None]
    tl.store(dx_ptr + dst, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------
_TILE = 2048  # elements per program: 8 KB fp32 in, 8 KB out (forward, 4 warps)
_TILE_BWD = 1024  # the backward's nine masked gathers keep more per element live


def _tile(C: int, HW: int, cl: bool, tile: int = _TILE) -> Tuple[int, int]:
    """(BLOCK_HW, BLOCK_C) for an elementwise pass over planes of HW pixels."""
    if cl:
        # Rows of up to 64 contiguous channels (128-256 B), pixels fill the rest.
        block_c = min(next_power_of_2(C), 64)
        block_hw = min(next_power_of_2(HW), max(1, tile // block_c))
    else:
        # Contiguous pixels; pack several channels into a program for small planes.
        block_hw = min(next_power_of_2(HW), tile)
        block_c = min(next_power_of_2(C), max(1, tile // block_hw))
    return block_hw, block_c


_NUM_WARPS = 4


def _check_4d(x: Tensor, pads: Tuple[int, int, int, int]) -> None:
    if x.dim() != 4:
        raise ValueError(f"reflect_pad expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    pl, pr, pt, pb = pads
    if pl >= W or pr >= W or pt >= H or pb >= H:
        raise ValueError(
            f"reflect padding {pads} must be smaller than the padded dimension (H, W) = ({H}, {W})"
        )


def plan_reflect_pad(
    kind: str, shape: Tuple[int, int, int, int], dtype: torch.dtype, channels_last: bool,
    pads: Tuple[int, int, int, int],
) -> Launch:
    """The one launch of reflect_pad's forward (``kind="fwd"``) or backward (``"bwd"``).

    ``shape``: the *unpadded* (N, C, H, W); no tensor or device needed.
    """
    N, C, H, W = shape
    pl, pr, pt, pb = pads
    Ho, Wo = H + pt + pb, W + pl + pr
    if kind == "fwd":
        block_hw, block_c = _tile(C, Ho * Wo, channels_last)
        grid = (N * cdiv(C, block_c) * cdiv(Ho * Wo, block_hw),)
        return make_launch(
            _reflect_pad_fwd_kernel, grid,
            dict(x_ptr=Ptr(dtype), y_ptr=Ptr(dtype), C=C, H=H, W=W, Ho=Ho, Wo=Wo, pad_l=pl, pad_t=pt),
            dict(CL=channels_last, BLOCK_HW=block_hw, BLOCK_C=block_c), num_warps=_NUM_WARPS,
        )
    block_hw, block_c = _tile(C, H * W, channels_last, _TILE_BWD)
    grid = (N * cdiv(C, block_c) * cdiv(H * W, block_hw),)
    return make_launch(
        _reflect_pad_bwd_kernel, grid,
        dict(dy_ptr=Ptr(dtype), dx_ptr=Ptr(dtype), C=C, H=H, W=W, Ho=Ho, Wo=Wo,
             pad_l=pl, pad_r=pr, pad_t=pt, pad_b=pb),
        dict(CL=channels_last, BLOCK_HW=block_hw, BLOCK_C=block_c), num_warps=_NUM_WARPS,
    )


def _fwd_triton(x: Tensor, pads: Tuple[int, int, int, int]) -> Tensor:
    fmt = suggest_memory_format(x)
    x = as_memory_format(x, fmt)
    N, C, H, W = x.shape
    pl, pr, pt, pb = pads
    Ho, Wo = H + pt + pb, W + pl + pr
    y = torch.empty((N, C, Ho, Wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    launch = plan_reflect_pad("fwd", (N, C, H, W), x.dtype, fmt == torch.channels_last, pads)
    run_launch(launch, x.device, dict(x_ptr=x, y_ptr=y))
    return y


def _bwd_triton(dy: Tensor, pads: Tuple[int, int, int, int]) -> Tensor:
    fmt = suggest_memory_format(dy)
    dy = as_memory_format(dy, fmt)
    N, C, Ho, Wo = dy.shape
    pl, pr, pt, pb = pads
    H, W = Ho - pt - pb, Wo - pl - pr
    dx = torch.empty((N, C, H, W), dtype=dy.dtype, device=dy.device, memory_format=fmt)
    if dx.numel() == 0:
        return dx
    launch = plan_reflect_pad("bwd", (N, C, H, W), dy.dtype, fmt == torch.channels_last, pads)
    run_launch(launch, dy.device, dict(dy_ptr=dy, dx_ptr=dx))
    return dx


def _bwd_ref(dy: Tensor, pads: Tuple[int, int, int, int]) -> Tensor:
    fmt = suggest_memory_format(dy)
    N, C, Ho, Wo = dy.shape
    pl, pr, pt, pb = pads
    shape = (N, C, Ho - pt - pb, Wo - pl - pr)
    like = torch.empty(shape, dtype=dy.dtype, device=dy.device)
    dx = torch.ops.aten.reflection_pad2d_backward(dy, like, list(pads))
    return as_memory_format(dx, fmt)


# ---------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------
@torch.library.custom_op("pix2pix_fast::reflect_pad", mutates_args=())
def _reflect_pad_op(x: Tensor, pad: List[int]) -> Tensor:
    pads = normalize_pad(pad)
    if use_triton(x):
        return _fwd_triton(x, pads)
    return reflect_pad_ref(x, pads)


@_reflect_pad_op.register_fake
def _(x: Tensor, pad: List[int]) -> Tensor:
    pl, pr, pt, pb = pad
    N, C, H, W = x.shape
    return torch.empty(
        (N, C, H + pt + pb, W + pl + pr), dtype=x.dtype, device=x.device,
        memory_format=suggest_memory_format(x),
    )


@torch.library.custom_op("pix2pix_fast::reflect_pad_backward", mutates_args=())
def _reflect_pad_backward_op(dy: Tensor, pad: List[int]) -> Tensor:
    """Gradient of reflect_pad: dx in dy's memory format (the autograd formula passes dy in x's)."""
    pads = normalize_pad(pad)
    if use_triton(dy):
        return _bwd_triton(dy, pads)
    return _bwd_ref(dy, pads)


@_reflect_pad_backward_op.register_fake
def _(dy: Tensor, pad: List[int]) -> Tensor:
    pl, pr, pt, pb = pad
    N, C, Ho, Wo = dy.shape
    return torch.empty(
        (N, C, Ho - pt - pb, Wo - pl - pr), dtype=dy.dtype, device=dy.device,
        memory_format=suggest_memory_format(dy),
    )


def _setup_context(ctx, inputs, output):
    x, pad = inputs
    ctx.pad = list(pad)
    ctx.fmt = suggest_memory_format(x)


def _backward(ctx, dy):
    dy = as_memory_format(dy, ctx.fmt)
    # Gradients for (x, pad).
    return _reflect_pad_backward_op(dy, ctx.pad), None


_reflect_pad_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# Functional wrapper
# ---------------------------------------------------------------------------
def reflect_pad(x: Tensor, pad: PadArg) -> Tensor:
    """Reflect-pad a 4-D tensor like ``F.pad(x, pad, mode="reflect")``.

    ``pad`` is an int (all four sides) or ``(left, right, top, bottom)``.
    The output keeps x's memory format (NCHW or channels_last).  CUDA tensors
    run the Triton kernels; CPU tensors run ``F.pad`` (see ``ops/_common.py``).
    """
    pads = normalize_pad(pad)
    _check_4d(x, pads)
    return _reflect_pad_op(x, list(pads))
