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
The reflect arithmetic (``reflect_index``, ``reflected_copy``) is shared with
the fused ``instance_norm_act(..., pad=...)`` through ``_helpers.py``.
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
    is_channels_last,
    make_launch,
    next_power_of_2,
    normalize_pad,
    run_launch,
    suggest_memory_format,
    tl,
    triton,
    use_triton,
)
from pix2pix_fast.ops._helpers import gather_reflected, pixel_offsets, reflect_index, sample_channel_tile

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
# Triton kernels
# ---------------------------------------------------------------------------
@triton.jit
def _reflect_pad_fwd_kernel(
    x_ptr,  # (N, C, H, W) any dtype, NCHW or channels_last (CL)
    y_ptr,  # (N, C, Ho, Wo) = (N, C, H + pad_t + pad_b, W + pad_l + pad_r), x's dtype and format
    C,
    H, W,  # the input plane
    Ho, Wo,  # the output plane
    pad_l, pad_t,  # left and top padding (right and bottom follow from Wo, Ho)
    CL: tl.constexpr,  # channels_last (else NCHW)
    BLOCK_HW: tl.constexpr,  # output pixels per program
    BLOCK_C: tl.constexpr,  # channels per program
):
    # Program = (sample, channel block) x tile of output pixels.
    n, c, c_mask, tile = sample_channel_tile(tl.program_id(0), tl.cdiv(Ho * Wo, BLOCK_HW), C, BLOCK_C)
    o = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ho = o // Wo
    wo = o - ho * Wo
    # Source pixel: mirror about the first / last row and column.
    h = reflect_index(ho - pad_t, H)
    w = reflect_index(wo - pad_l, W)
    mask = (o < Ho * Wo)[:, None] & c_mask[None, :]
    # Scalar base pointers of the sample, int32 offsets inside it.
    v = tl.load(x_ptr + n * C * H * W + pixel_offsets(h * W + w, c, H * W, C, CL), mask=mask)
    tl.store(y_ptr + n * C * Ho * Wo + pixel_offsets(o, c, Ho * Wo, C, CL), v, mask=mask)


@triton.jit
def _reflect_pad_bwd_kernel(
    dy_ptr,  # (N, C, Ho, Wo) any float dtype, NCHW or channels_last (CL)
    dx_ptr,  # (N, C, H, W) dy's dtype and format
    C,
    H, W,  # the input plane
    Ho, Wo,  # dy's plane: H + pad_t + pad_b, W + pad_l + pad_r
    pad_l, pad_r, pad_t, pad_b,
    CL: tl.constexpr,  # channels_last (else NCHW)
    BLOCK_HW: tl.constexpr,  # input pixels per program
    BLOCK_C: tl.constexpr,  # channels per program
):
    # Program = (sample, channel block) x tile of input pixels, as in the forward.
    n, c, c_mask, tile = sample_channel_tile(tl.program_id(0), tl.cdiv(H * W, BLOCK_HW), C, BLOCK_C)
    hw = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_mask = hw < H * W
    h = hw // W
    w = hw - h * W
    acc = gather_reflected(
        dy_ptr + n * C * Ho * Wo, h, w, hw_mask, c, c_mask, C, H, W, Ho, Wo, pad_l, pad_r, pad_t, pad_b,
        CL, BLOCK_HW, BLOCK_C,
    )
    mask = hw_mask[:, None] & c_mask[None, :]
    tl.store(dx_ptr + n * C * H * W + pixel_offsets(hw, c, H * W, C, CL), acc.to(dx_ptr.dtype.element_ty), mask=mask)


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


def _empty_padded(t: Tensor, pads: Tuple[int, int, int, int], sign: int) -> Tensor:
    """An empty tensor shaped as t padded by ``pads`` (sign 1) or with them removed (sign -1), in t's format."""
    pl, pr, pt, pb = pads
    N, C, H, W = t.shape
    return torch.empty(
        (N, C, H + sign * (pt + pb), W + sign * (pl + pr)), dtype=t.dtype, device=t.device,
        memory_format=suggest_memory_format(t),
    )


def _run_triton(kind: str, t: Tensor, pads: Tuple[int, int, int, int]) -> Tensor:
    """Forward (t = x -> y) or backward (t = dy -> dx) on the kernels; the result keeps t's memory format."""
    t = as_memory_format(t, suggest_memory_format(t))
    out = _empty_padded(t, pads, 1 if kind == "fwd" else -1)
    if out.numel() == 0:
        return out
    unpadded, names = (t, ("x_ptr", "y_ptr")) if kind == "fwd" else (out, ("dy_ptr", "dx_ptr"))
    launch = plan_reflect_pad(kind, tuple(unpadded.shape), t.dtype, is_channels_last(t), pads)
    run_launch(launch, t.device, dict(zip(names, (t, out))))
    return out


def _bwd_ref(dy: Tensor, pads: Tuple[int, int, int, int]) -> Tensor:
    like = _empty_padded(dy, pads, -1)
    dx = torch.ops.aten.reflection_pad2d_backward(dy, like, list(pads))
    return as_memory_format(dx, suggest_memory_format(dy))


# ---------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------
def _pad_or_unpad(kind: str, t: Tensor, pad: List[int]) -> Tensor:
    """The ops' body: the kernels for CUDA tensors (and forced CPU), else PyTorch."""
    pads = normalize_pad(pad)
    if use_triton(t):
        return _run_triton(kind, t, pads)
    return reflect_pad_ref(t, pads) if kind == "fwd" else _bwd_ref(t, pads)


@torch.library.custom_op("pix2pix_fast::reflect_pad", mutates_args=())
def _reflect_pad_op(x: Tensor, pad: List[int]) -> Tensor:
    return _pad_or_unpad("fwd", x, pad)


_reflect_pad_op.register_fake(lambda x, pad: _empty_padded(x, pad, 1))


@torch.library.custom_op("pix2pix_fast::reflect_pad_backward", mutates_args=())
def _reflect_pad_backward_op(dy: Tensor, pad: List[int]) -> Tensor:
    """Gradient of reflect_pad: dx in dy's memory format (the autograd formula passes dy in x's)."""
    return _pad_or_unpad("bwd", dy, pad)


_reflect_pad_backward_op.register_fake(lambda dy, pad: _empty_padded(dy, pad, -1))


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
