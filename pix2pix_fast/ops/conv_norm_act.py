"""Convolution with fused instance-norm statistics and a normalise+activate prologue.

What is fused
-------------
``conv_norm_act`` is an implicit-GEMM convolution (NHWC / channels_last; any
KH x KW, stride, zero padding; M = output pixels of one sample, N = output
channels, K = KH*KW*C_in; bf16/fp16 on tensor cores through ``tl.dot`` with
fp32 accumulation, fp32 as exact fp32 ``ieee`` dots).

* Prologue: while loading its input tile the kernel can apply the previous
  layer's pending instance norm and activation, ``act((x - mean[n,c]) *
  rstd[n,c])``, with the zero padding applied *after* it (as a separate
  norm -> act -> conv would).  So the normalised activation of a
  conv -> IN -> act -> conv chain is never written to memory.
* Epilogue: adds the bias, stores the raw output ``y`` (x's dtype,
  channels_last) and per-(sample, tile, channel) statistics of the stored
  values: the tile mean and the *centred* sum of squares (fp32).  A tiny
  second kernel merges the tiles of each (sample, channel) in fixed order
  with Chan's parallel formula (never ``E[x^2] - E[x]^2``) into mean and
  ``rstd = 1 / sqrt(var + eps)``.  Deterministic, no atomics.
* The normalisation of ``y`` itself is deferred: ``defer=True`` returns a
  :class:`PendingNormAct` that the next ``conv_norm_act`` consumes in its
  prologue; otherwise a light elementwise pass (``norm_act_apply``) writes
  ``act(IN(y))``.

Bytes per conv-norm-act block (s = dtype size, chained with ``defer``): the
conv reads its input once (s per element, plus the (N, C) fp32 statistics)
and writes y once; the statistics cost (N, tiles, C) fp32 partials.  Against
cuDNN conv + a fused instance-norm op this saves the norm's read of y
(statistics) and its read + write of the normalised tensor.  What it costs:
the convolution itself is a Triton implicit GEMM rather than cuDNN's, and
batch-1 layers with small spatial maps get few programs (no split-K, since
split-K would break the fused statistics).  ``benchmarks/bench_ops_loss_conv.py``
measures whether the trade pays at the U-Net / PatchGAN shapes.

Backward (correctness first): PyTorch.  Saved: x, weight, the input's
(mean, rstd), y and its (mean, rstd).  The incoming gradients of y, mean and
rstd are folded into one gradient of y (mean and rstd are differentiable
outputs, so the chain rule through the next layer's prologue is exact),
the normalised input is recomputed, ``aten.convolution_backward`` gives the
input / weight / bias gradients (cuDNN on GPU), and the prologue's
norm/activation backward gives the gradients of x and of the input's mean
and rstd.  Costs one recompute of the prologue and cuDNN's backward.
"""
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pix2pix_fast.ops._common import (
    Launch,
    Ptr,
    act_code,
    act_ref,
    cdiv,
    dense_strides,
    make_launch,
    next_power_of_2,
    run_launch,
    tl,
    triton,
    use_triton,
)
from pix2pix_fast.ops._helpers import apply_act, chan_merge, tile_stats

__all__ = [
    "InputNormAct",
    "PendingNormAct",
    "conv_norm_act",
    "conv_norm_act_ref",
    "norm_act_apply",
    "norm_act_apply_ref",
]


class InputNormAct(NamedTuple):
    """A pending ``act((x - mean) * rstd)`` on a tensor x (mean/rstd None: the activation only)."""

    mean: Optional[Tensor]  # (N, C) fp32
    rstd: Optional[Tensor]  # (N, C) fp32
    act: str = "none"
    negative_slope: float = 0.2


class PendingNormAct(NamedTuple):
    """A conv output whose instance norm + activation is still to be applied.

    Pass it as the input of the next ``conv_norm_act`` (it applies the norm in
    its prologue), or call :meth:`materialize` for the normalised tensor.
    """

    raw: Tensor  # (N, C, H, W) channels_last, the conv output before normalisation
    mean: Tensor  # (N, C) fp32
    rstd: Tensor  # (N, C) fp32
    act: str
    negative_slope: float

    @property
    def norm(self) -> InputNormAct:
        return InputNormAct(self.mean, self.rstd, self.act, self.negative_slope)

    def materialize(self) -> Tensor:
        return norm_act_apply(self.raw, self.mean, self.rstd, self.act, self.negative_slope)


# --------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------


def _act_grad_torch(z: Tensor, act: str, slope: float) -> Optional[Tensor]:
    """d act / d z as a float tensor (None for the identity)."""
    if act == "relu":
        return (z > 0).to(z.dtype)
    if act == "leaky_relu":
        return torch.where(z > 0, 1.0, slope).to(z.dtype)
    return None


def _up(t: Tensor) -> Tensor:
    """t in fp32, or fp64 if it is fp64 (the statistics' and the math's dtype)."""
    return t if t.dtype == torch.float64 else t.float()


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bc(s: Tensor) -> Tensor:
    """(N, C) -> (N, C, 1, 1)."""
    return s[:, :, None, None]


def norm_act_apply_ref(y: Tensor, mean: Tensor, rstd: Tensor, act: str = "none", negative_slope: float = 0.2) -> Tensor:
    """``act((y - mean) * rstd)`` in fp32, returned in y's dtype; differentiable in all three tensors."""
    z = (_up(y) - _bc(mean)) * _bc(rstd)
    return act_ref(z, act, negative_slope).to(y.dtype)


def conv_norm_act_ref(
    x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 2, padding: int = 1,
    act: str = "leaky_relu", negative_slope: float = 0.2, eps: float = 1e-5, in_norm: Optional[InputNormAct] = None,
    norm: bool = True,
) -> Tensor:
    """Plain PyTorch ``act(IN(conv(in_norm(x))))`` (IN without affine), in x's dtype."""
    if in_norm is not None:
        if in_norm.mean is not None:
            x = norm_act_apply_ref(x, in_norm.mean, in_norm.rstd, in_norm.act, in_norm.negative_slope)
        else:
            x = act_ref(x, in_norm.act, in_norm.negative_slope)
    y = F.conv2d(x, weight, bias, stride, padding)
    if norm:
        y = F.instance_norm(y, eps=eps)
    return act_ref(y, act, negative_slope)


def _prologue_torch(
    x: Tensor, in_mean: Optional[Tensor], in_rstd: Optional[Tensor], in_act: str, in_slope: float
) -> Tensor:
    """The kernel's prologue in PyTorch: fp32 math, rounded to x's dtype (the dot's input)."""
    if in_mean is None and in_act == "none":
        return x
    z = _up(x)
    if in_mean is not None:
        z = (z - _bc(in_mean)) * _bc(in_rstd)
    return act_ref(z, in_act, in_slope).to(x.dtype)


def _conv_normact_ref(
    x, weight, bias, in_mean, in_rstd, stride, padding, in_act, in_slope, norm, out_act, out_slope, eps
) -> Tuple[Tensor, Tensor, Tensor]:
    """The op's PyTorch path (CPU without the interpreter): (y, mean, rstd) like the kernels."""
    x_eff = _prologue_torch(x, in_mean, in_rstd, in_act, in_slope)
    y = F.conv2d(x_eff, weight, bias, stride, padding).contiguous(memory_format=torch.channels_last)
    if not norm:
        y = act_ref(y, out_act, out_slope).contiguous(memory_format=torch.channels_last)
        empty = y.new_empty((0,), dtype=_stat_dtype(y.dtype))
        return y, empty, empty.clone()
    var, mean = torch.var_mean(_up(y), dim=(2, 3), correction=0)
    return y, mean, torch.rsqrt(var + eps)


# --------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------


@triton.jit
def _conv_norm_act_fwd_kernel(
    x_ptr,  # (N, C_in, H, W) fp32/bf16/fp16, any strides (channels_last: C_in contiguous)
    w_ptr,  # (C_out, C_in, KH, KW) x's dtype, any strides (channels_last: C_in contiguous)
    b_ptr,  # (C_out,) bias, read if HAS_BIAS
    in_mean_ptr,  # (N, C_in) fp32 pending mean of x, read if HAS_IN_NORM
    in_rstd_ptr,  # (N, C_in) fp32 pending rstd of x
    y_ptr,  # (N, C_out, Ho, Wo) x's dtype, any strides (channels_last from the launcher)
    pmean_ptr,  # (N, T, C_out) fp32 per-tile mean of y, written if HAS_STATS
    pm2_ptr,  # (N, T, C_out) fp32 per-tile centred sum of squares of y
    C_in,
    H,
    W,
    C_out,
    Ho,
    Wo,
    T,  # output-pixel tiles per sample
    sx_n, sx_c, sx_h, sx_w,  # x strides (elements)
    sw_o, sw_i, sw_h, sw_w,  # weight strides
    sy_n, sy_c, sy_h, sy_w,  # y strides
    stride,
    padding,
    in_slope,  # leaky_relu slope of the prologue
    out_slope,  # leaky_relu slope of the epilogue (only without HAS_STATS)
    KH: tl.constexpr,
    KW: tl.constexpr,
    IN_ACT: tl.constexpr,  # prologue activation: 0 none, 1 relu, 2 leaky_relu
    OUT_ACT: tl.constexpr,  # epilogue activation (no norm only)
    HAS_BIAS: tl.constexpr,
    HAS_IN_NORM: tl.constexpr,
    HAS_STATS: tl.constexpr,  # instance-norm statistics of y (its act is deferred)
    DOT_F32: tl.constexpr,  # dot in exact fp32 (fp32 inputs; the CPU interpreter)
    BLOCK_M: tl.constexpr,  # output pixels per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_K: tl.constexpr,  # input channels per step
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = rm < Ho * Wo
    oh = rm // Wo
    ow = rm - oh * Wo
    ih0 = oh * stride - padding
    iw0 = ow * stride - padding
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < C_out
    rk = tl.arange(0, BLOCK_K)
    x_base = x_ptr + n * sx_n
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=tl.float32)

    num_cb = (C_in + BLOCK_K - 1) // BLOCK_K
    # One flat loop over (kh, kw, channel block) so that it software-pipelines.
    for t in range(0, KH * KW * num_cb):
        kk = t // num_cb
        cb = t - kk * num_cb
        kh = kk // KW
        kw = kk - kh * KW
        ih = ih0 + kh
        iw = iw0 + kw
        row_ok = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        c = cb * BLOCK_K + rk
        c_ok = c < C_in
        a_mask = row_ok[:, None] & c_ok[None, :]
        a = tl.load(x_base + ih[:, None] * sx_h + iw[:, None] * sx_w + c[None, :] * sx_c, mask=a_mask, other=0.0)
        if HAS_IN_NORM or IN_ACT != 0:
            z = a.to(tl.float32)
            if HAS_IN_NORM:
                mu = tl.load(in_mean_ptr + n * C_in + c, mask=c_ok, other=0.0)
                rs = tl.load(in_rstd_ptr + n * C_in + c, mask=c_ok, other=0.0)
                z = (z - mu[None, :]) * rs[None, :]
            z = apply_act(z, in_slope, IN_ACT)
            # Zero padding comes after the normalisation, as in norm -> act -> conv.
            z = tl.where(a_mask, z, 0.0)
            a = z.to(x_ptr.dtype.element_ty)
        b = tl.load(
            w_ptr + rn[None, :] * sw_o + c[:, None] * sw_i + kh * sw_h + kw * sw_w,
            mask=c_ok[:, None] & n_mask[None, :],
            other=0.0,
        )
        if DOT_F32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, b)

    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if not HAS_STATS:
        acc = apply_act(acc, out_slope, OUT_ACT)
    y = acc.to(y_ptr.dtype.element_ty)
    out_mask = m_mask[:, None] & n_mask[None, :]
    tl.store(
        y_ptr + n * sy_n + oh[:, None] * sy_h + ow[:, None] * sy_w + rn[None, :] * sy_c, y, mask=out_mask
    )
    if HAS_STATS:
        # Statistics of the stored (rounded) values, so that normalising y
        # gives exactly zero mean; centred within the tile.
        yq = tl.where(out_mask, y.to(tl.float32), 0.0)
        t_mean, t_m2 = tile_stats(yq, out_mask, tl.minimum(Ho * Wo - pid_m * BLOCK_M, BLOCK_M).to(tl.float32))
        p = (n * T + pid_m) * C_out + rn
        tl.store(pmean_ptr + p, t_mean, mask=n_mask)
        tl.store(pm2_ptr + p, t_m2, mask=n_mask)


@triton.jit
def _conv_stats_kernel(
    pmean_ptr,  # (N, T, C) fp32 per-tile means
    pm2_ptr,  # (N, T, C) fp32 per-tile centred sums of squares
    mean_ptr,  # (N, C) fp32 out
    rstd_ptr,  # (N, C) fp32 out: 1 / sqrt(biased var + eps)
    C,
    T,
    HW,  # pixels per sample
    TILE,  # pixels per tile (all tiles but the last are full)
    eps,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = rc < C
    mean = tl.full([BLOCK_C], 0.0, dtype=tl.float32)
    m2 = tl.full([BLOCK_C], 0.0, dtype=tl.float32)
    cnt = tl.full([BLOCK_C], 0.0, dtype=tl.float32)
    for t in range(0, T):
        # Chan et al.: merge tile t (all tiles but the last hold TILE values) into the first t tiles.
        p = (n * T + t) * C + rc
        mb = tl.load(pmean_ptr + p, mask=c_mask, other=0.0)
        m2b = tl.load(pm2_ptr + p, mask=c_mask, other=0.0)
        mean, m2, cnt = chan_merge(mean, m2, cnt, mb, m2b, tl.minimum(HW - t * TILE, TILE).to(tl.float32))
    rstd = 1.0 / tl.sqrt_rn(m2 / HW + eps)
    tl.store(mean_ptr + n * C + rc, mean, mask=c_mask)
    tl.store(rstd_ptr + n * C + rc, rstd, mask=c_mask)


@triton.jit
def _norm_act_apply_kernel(
    y_ptr,  # (N, C, H, W) any float dtype, any strides
    mean_ptr,  # (N, C) fp32
    rstd_ptr,  # (N, C) fp32
    out_ptr,  # (N, C, H, W) y's dtype, any strides
    C,
    W,
    HW,
    sy_n, sy_c, sy_h, sy_w,
    so_n, so_c, so_h, so_w,
    slope,  # leaky_relu slope
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu
    BLOCK_P: tl.constexpr,  # pixels per program
    BLOCK_C: tl.constexpr,  # channels per program
):
    n = tl.program_id(2).to(tl.int64)
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    h = rp // W
    w = rp - h * W
    c_mask = rc < C
    mask = (rp < HW)[:, None] & c_mask[None, :]
    mu = tl.load(mean_ptr + n * C + rc, mask=c_mask, other=0.0)
    rs = tl.load(rstd_ptr + n * C + rc, mask=c_mask, other=0.0)
    v = tl.load(y_ptr + n * sy_n + h[:, None] * sy_h + w[:, None] * sy_w + rc[None, :] * sy_c, mask=mask, other=0.0)
    z = apply_act((v.to(tl.float32) - mu[None, :]) * rs[None, :], slope, ACT)
    tl.store(
        out_ptr + n * so_n + h[:, None] * so_h + w[:, None] * so_w + rc[None, :] * so_c,
        z.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


# --------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------


def _conv_blocks(hw_out: int, c_in: int, c_out: int, dtype: torch.dtype) -> Tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for an output map of hw_out pixels."""
    # Tiles kept to at most 64 x 128 outputs (8 warps from 64 x 128 up; fp32 64 x 64,
    # on 8 warps: at 4, NCHW inputs spilled 8-16 B with triton 3.6's ptxas) and fp32
    # dots to 16-deep K steps: larger tiles spill registers on sm_80 and sm_90
    # (tests/test_gpu_compile.py compiles every launch the trainer makes).
    block_m = 64 if hw_out >= 64 else max(16, next_power_of_2(hw_out))
    fp32 = dtype == torch.float32
    block_n = max(16, min(64 if fp32 else 128, next_power_of_2(c_out)))
    block_k = max(16, min(16 if fp32 else 64, next_power_of_2(c_in)))
    num_warps = 8 if block_m * block_n >= (64 * 64 if fp32 else 64 * 128) else 4
    return block_m, block_n, block_k, num_warps, 3


@dataclass(frozen=True)
class ConvProblem:
    """What the launches of one conv_norm_act call depend on (no tensors; see :func:`conv_problem`)."""

    x_shape: Tuple[int, int, int, int]  # (N, C_in, H, W)
    x_strides: Tuple[int, int, int, int]
    dtype: torch.dtype  # x's, the weight's, the bias's and y's
    weight_shape: Tuple[int, int, int, int]  # (C_out, C_in, KH, KW)
    has_bias: bool
    has_in_norm: bool  # a pending (mean, rstd) of x applied in the prologue
    stride: int
    padding: int
    in_act: str = "none"
    in_slope: float = 0.2
    norm: bool = True
    out_act: str = "none"
    out_slope: float = 0.2
    eps: float = 1e-5
    interpreted: bool = False  # the CPU interpreter (dots on fp32 copies)

    @property
    def out_shape(self) -> Tuple[int, int, int, int]:
        n, _, h, w = self.x_shape
        c_out, _, kh, kw = self.weight_shape
        return (n, c_out, (h + 2 * self.padding - kh) // self.stride + 1, (w + 2 * self.padding - kw) // self.stride + 1)


def conv_problem(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], in_mean: Optional[Tensor], stride: int, padding: int,
    in_act: str, in_slope: float, norm: bool, out_act: str, out_slope: float, eps: float,
) -> ConvProblem:
    """The :class:`ConvProblem` of an op call (real, fake or meta tensors alike)."""
    return ConvProblem(
        tuple(x.shape), tuple(x.stride()), x.dtype, tuple(weight.shape), bias is not None, in_mean is not None,
        int(stride), int(padding), in_act, float(in_slope), bool(norm), out_act, float(out_slope), float(eps),
        x.device.type == "cpu",
    )


def plan_conv_norm_act(p: ConvProblem) -> List[Launch]:
    """The conv launch and, with ``norm``, the statistics merge, in order.

    The weight is laid out channels_last and y is a dense channels_last
    tensor; the (N, tiles, C_out) fp32 partials ``pmean_ptr`` / ``pm2_ptr``
    are a workspace with tiles = ``grid[0]`` of the conv launch.
    """
    n, c_in, h, w = p.x_shape
    c_out, _, kh, kw = p.weight_shape
    _, _, ho, wo = p.out_shape
    block_m, block_n, block_k, num_warps, num_stages = _conv_blocks(ho * wo, c_in, c_out, p.dtype)
    tiles = cdiv(ho * wo, block_m)
    act = Ptr(p.dtype)
    f32 = Ptr(torch.float32)
    stats = f32 if p.norm else act  # unused without norm: y is passed
    conv = make_launch(
        _conv_norm_act_fwd_kernel, (tiles, cdiv(c_out, block_n), n),
        dict(
            x_ptr=act, w_ptr=act, b_ptr=act,
            in_mean_ptr=f32 if p.has_in_norm else act, in_rstd_ptr=f32 if p.has_in_norm else act,
            y_ptr=act, pmean_ptr=stats, pm2_ptr=stats,
            C_in=c_in, H=h, W=w, C_out=c_out, Ho=ho, Wo=wo, T=tiles,
            **dict(zip(("sx_n", "sx_c", "sx_h", "sx_w"), p.x_strides)),
            **dict(zip(("sw_o", "sw_i", "sw_h", "sw_w"), dense_strides(p.weight_shape, True))),
            **dict(zip(("sy_n", "sy_c", "sy_h", "sy_w"), dense_strides(p.out_shape, True))),
            stride=p.stride, padding=p.padding, in_slope=p.in_slope, out_slope=p.out_slope,
        ),
        dict(
            KH=kh, KW=kw, IN_ACT=act_code(p.in_act), OUT_ACT=act_code(p.out_act),
            HAS_BIAS=p.has_bias, HAS_IN_NORM=p.has_in_norm, HAS_STATS=p.norm,
            # The CPU interpreter multiplies bf16 bit patterns in tl.dot (triton
            # 3.9): it runs the dot on fp32 copies, which is exact for bf16/fp16
            # products; compiled kernels use the tensor-core dot.
            DOT_F32=p.dtype == torch.float32 or p.interpreted,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        ),
        num_warps=num_warps, num_stages=num_stages,
    )
    if not p.norm:
        return [conv]
    block_c = max(16, min(128, next_power_of_2(c_out)))
    merge = make_launch(
        _conv_stats_kernel, (n, cdiv(c_out, block_c)),
        dict(pmean_ptr=f32, pm2_ptr=f32, mean_ptr=f32, rstd_ptr=f32, C=c_out, T=tiles, HW=ho * wo,
             TILE=block_m, eps=p.eps),
        dict(BLOCK_C=block_c), num_warps=4,
    )
    return [conv, merge]


def plan_norm_act_apply(
    shape: Tuple[int, int, int, int], y_strides: Tuple[int, ...], out_strides: Tuple[int, ...],
    dtype: torch.dtype, act: str, slope: float,
) -> Launch:
    """The launch of ``norm_act_apply`` on y of ``shape`` (any strides) into ``out``."""
    n, c, h, w = shape
    block_c = max(16, min(64, next_power_of_2(c)))
    block_p = max(16, min(4096 // block_c, next_power_of_2(h * w)))
    return make_launch(
        _norm_act_apply_kernel, (cdiv(h * w, block_p), cdiv(c, block_c), n),
        dict(
            y_ptr=Ptr(dtype), mean_ptr=Ptr(torch.float32), rstd_ptr=Ptr(torch.float32), out_ptr=Ptr(dtype),
            C=c, W=w, HW=h * w,
            **dict(zip(("sy_n", "sy_c", "sy_h", "sy_w"), y_strides)),
            **dict(zip(("so_n", "so_c", "so_h", "so_w"), out_strides)),
            slope=float(slope),
        ),
        dict(ACT=act_code(act), BLOCK_P=block_p, BLOCK_C=block_c), num_warps=4,
    )


def _launch_conv(
    x, weight, bias, in_mean, in_rstd, stride, padding, in_act, in_slope, norm, out_act, out_slope, eps
) -> Tuple[Tensor, Tensor, Tensor]:
    problem = conv_problem(x, weight, bias, in_mean, stride, padding, in_act, in_slope, norm, out_act, out_slope, eps)
    launches = plan_conv_norm_act(problem)
    weight = weight.contiguous(memory_format=torch.channels_last)
    y = torch.empty(problem.out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    n, c_out = problem.out_shape[:2]
    tiles = launches[0].grid[0]
    if norm:
        pmean = torch.empty((n, tiles, c_out), dtype=torch.float32, device=x.device)
        pm2 = torch.empty_like(pmean)
        mean = torch.empty((n, c_out), dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
    else:
        pmean = pm2 = y  # unused
        mean = rstd = x.new_empty((0,), dtype=torch.float32)
    tensors = dict(
        x_ptr=x, w_ptr=weight, b_ptr=bias if bias is not None else y,
        in_mean_ptr=in_mean if in_mean is not None else y, in_rstd_ptr=in_rstd if in_rstd is not None else y,
        y_ptr=y, pmean_ptr=pmean, pm2_ptr=pm2, mean_ptr=mean, rstd_ptr=rstd,
    )
    for launch in launches:
        run_launch(launch, x.device, tensors)
    if not norm:
        return y, mean, rstd.clone()
    return y, mean, rstd


def _launch_apply(y: Tensor, mean: Tensor, rstd: Tensor, act: str, slope: float) -> Tensor:
    out = torch.empty_like(y)  # y's layout when y is dense (the kernel takes any strides)
    launch = plan_norm_act_apply(tuple(y.shape), tuple(y.stride()), tuple(out.stride()), y.dtype, act, slope)
    run_launch(launch, y.device, dict(y_ptr=y, mean_ptr=mean, rstd_ptr=rstd, out_ptr=out))
    return out


# --------------------------------------------------------------------------
# Backward helpers (PyTorch)
# --------------------------------------------------------------------------


def _norm_act_backward(
    g: Tensor, x: Tensor, mean: Optional[Tensor], rstd: Optional[Tensor], act: str, slope: float,
    need_x: bool, need_stats: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of ``act((x - mean) * rstd)`` w.r.t. x, mean and rstd (fp32 math, x in x's dtype)."""
    if mean is None:
        dact = _act_grad_torch(_up(x), act, slope)
        gx = g if dact is None else (_up(g) * dact).to(x.dtype)
        return (gx if need_x else None), None, None
    xc = _up(x) - _bc(mean)
    z = xc * _bc(rstd)
    dact = _act_grad_torch(z, act, slope)
    gz = _up(g) if dact is None else _up(g) * dact
    gx = (gz * _bc(rstd)).to(x.dtype) if need_x else None
    gmean = grstd = None
    if need_stats:
        gmean = -gz.sum(dim=(2, 3)) * rstd
        grstd = (gz * xc).sum(dim=(2, 3))
    return gx, gmean, grstd


# --------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------


@torch.library.custom_op("pix2pix_fast::conv_norm_act", mutates_args=())
def _conv_norm_act_op(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    in_mean: Optional[Tensor],
    in_rstd: Optional[Tensor],
    stride: int,
    padding: int,
    in_act: str,
    in_slope: float,
    norm: bool,
    out_act: str,
    out_slope: float,
    eps: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(y channels_last, mean (N, C_out) fp32, rstd (N, C_out) fp32); mean/rstd are (0,) without norm."""
    args = (x, weight, bias, in_mean, in_rstd, stride, padding, in_act, in_slope, norm, out_act, out_slope, eps)
    if use_triton(x) and x.dtype != torch.float64:
        return _launch_conv(*args)
    return _conv_normact_ref(*args)


@_conv_norm_act_op.register_fake
def _(x, weight, bias, in_mean, in_rstd, stride, padding, in_act, in_slope, norm, out_act, out_slope, eps):
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    y = torch.empty((n, c_out, ho, wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    shape = (n, c_out) if norm else (0,)
    sd = _stat_dtype(x.dtype)
    return y, x.new_empty(shape, dtype=sd), x.new_empty(shape, dtype=sd)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, in_mean, in_rstd, stride, padding, in_act, in_slope, norm, out_act, out_slope, eps = inputs
    y, mean, rstd = output
    ctx.conf = (stride, padding, in_act, in_slope, norm, out_act, out_slope, bias is not None, in_mean is not None)
    ctx.save_for_backward(x, weight, in_mean, in_rstd, y, mean, rstd)


def _conv_backward(ctx, gy, gmean, grstd):
    x, weight, in_mean, in_rstd, y, mean, rstd = ctx.saved_tensors
    stride, padding, in_act, in_slope, norm, out_act, out_slope, has_bias, has_in_norm = ctx.conf
    need = ctx.needs_input_grad  # (x, weight, bias, in_mean, in_rstd, ...)
    # 1. One gradient for y: its own, plus what flows back through mean and rstd.
    g = _up(gy) if gy is not None else torch.zeros(y.shape, dtype=_stat_dtype(y.dtype), device=y.device)
    if norm:
        hw = y.shape[2] * y.shape[3]
        if gmean is not None:
            g = g + _bc(gmean / hw)
        if grstd is not None:
            # d rstd / d y = -rstd^3 (y - mean) / HW
            g = g - _bc(grstd * rstd.pow(3) / hw) * (_up(y) - _bc(mean))
    else:
        dact = _act_grad_torch(_up(y), out_act, out_slope)  # act' from the output (slope >= 0)
        if dact is not None:
            g = g * dact
    g = g.to(y.dtype)
    # 2. Convolution backward on the recomputed prologue output.
    x_eff = _prologue_torch(x, in_mean, in_rstd, in_act, in_slope)
    need_x = need[0] or need[3] or need[4]
    gx_eff, gw, gb = torch.ops.aten.convolution_backward(
        g, x_eff, weight, [weight.shape[0]] if has_bias else None,
        [stride, stride], [padding, padding], [1, 1], False, [0, 0], 1,
        [need_x, need[1], has_bias and need[2]],
    )
    # 3. Prologue backward.
    gx = gin_mean = gin_rstd = None
    if need_x:
        gx, gin_mean, gin_rstd = _norm_act_backward(
            gx_eff, x, in_mean, in_rstd, in_act, in_slope, need[0], has_in_norm and (need[3] or need[4])
        )
    # Gradients for (x, weight, bias, in_mean, in_rstd, stride, padding,
    # in_act, in_slope, norm, out_act, out_slope, eps).
    return gx, gw, gb, gin_mean, gin_rstd, None, None, None, None, None, None, None, None


_conv_norm_act_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


@torch.library.custom_op("pix2pix_fast::norm_act_apply", mutates_args=())
def _norm_act_apply_op(y: Tensor, mean: Tensor, rstd: Tensor, act: str, slope: float) -> Tensor:
    """act((y - mean) * rstd), y's dtype and layout."""
    if use_triton(y) and y.dtype != torch.float64:
        return _launch_apply(y, mean, rstd, act, slope)
    return torch.empty_like(y).copy_(norm_act_apply_ref(y, mean, rstd, act, slope))


@_norm_act_apply_op.register_fake
def _(y, mean, rstd, act, slope):
    return torch.empty_like(y)


def _apply_setup_context(ctx, inputs, output):
    y, mean, rstd, act, slope = inputs
    ctx.conf = (act, slope)
    ctx.save_for_backward(y, mean, rstd)


def _apply_backward(ctx, g):
    y, mean, rstd = ctx.saved_tensors
    act, slope = ctx.conf
    need = ctx.needs_input_grad
    gy, gmean, grstd = _norm_act_backward(g, y, mean, rstd, act, slope, need[0], need[1] or need[2])
    # Gradients for (y, mean, rstd, act, slope).
    return gy, gmean, grstd, None, None


_norm_act_apply_op.register_autograd(_apply_backward, setup_context=_apply_setup_context)


# --------------------------------------------------------------------------
# Functional wrappers
# --------------------------------------------------------------------------


def _check_act(act: str, slope: float) -> None:
    act_code(act)
    if act == "leaky_relu" and slope < 0:
        raise ValueError(f"negative_slope must be >= 0, got {slope}")


def norm_act_apply(y: Tensor, mean: Tensor, rstd: Tensor, act: str = "none", negative_slope: float = 0.2) -> Tensor:
    """``act((y - mean[n, c]) * rstd[n, c])`` for (N, C, H, W) y and (N, C) fp32 statistics."""
    _check_act(act, negative_slope)
    if y.dim() != 4 or mean.shape != y.shape[:2] or rstd.shape != y.shape[:2]:
        raise ValueError(f"expected y (N, C, H, W) and mean/rstd (N, C), got {tuple(y.shape)}, "
                         f"{tuple(mean.shape)}, {tuple(rstd.shape)}")
    sd = _stat_dtype(y.dtype)
    return _norm_act_apply_op(y, mean.to(sd), rstd.to(sd), act, float(negative_slope))


def conv_norm_act(
    x,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: int = 2,
    padding: int = 1,
    act: str = "leaky_relu",
    negative_slope: float = 0.2,
    eps: float = 1e-5,
    in_norm: Optional[InputNormAct] = None,
    *,
    norm: bool = True,
    defer: bool = False,
):
    """``act(IN(conv2d(in_norm(x), weight, bias, stride, padding)))`` with the norm fused.

    ``x``: an (N, C_in, H, W) tensor (channels_last is the fast layout) or a
    :class:`PendingNormAct` from a previous ``conv_norm_act(..., defer=True)``,
    whose pending norm + activation is applied while loading.  ``in_norm``: a
    :class:`InputNormAct` to apply to a plain tensor x the same way (mean/rstd None
    for an activation only).  ``norm=False``: no instance norm; ``act`` is then
    applied in the epilogue and a tensor is returned.  ``defer=True`` returns
    a :class:`PendingNormAct` instead of the normalised tensor.  Output dtype:
    x's (under autocast: the autocast dtype); layout: channels_last.
    """
    if isinstance(x, PendingNormAct):
        if in_norm is not None:
            raise ValueError("give either a PendingNormAct input or in_norm, not both")
        x, in_norm = x.raw, x.norm
    _check_act(act, negative_slope)
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"expected x (N, C_in, H, W) and weight (C_out, C_in, KH, KW), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"x, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}, "
                         f"{None if bias is None else bias.dtype}")
    in_mean = in_rstd = None
    in_act, in_slope = "none", 0.2
    if in_norm is not None:
        sd = _stat_dtype(x.dtype)
        in_mean = None if in_norm.mean is None else in_norm.mean.to(sd)
        in_rstd = None if in_norm.rstd is None else in_norm.rstd.to(sd)
        in_act, in_slope = in_norm.act, float(in_norm.negative_slope)
        _check_act(in_act, in_slope)
    y, mean, rstd = _conv_norm_act_op(
        x, weight, bias, in_mean, in_rstd, int(stride), int(padding), in_act, in_slope,
        bool(norm), act if not norm else "none", float(negative_slope), float(eps),
    )
    if not norm:
        return y
    if defer:
        return PendingNormAct(y, mean, rstd, act, float(negative_slope))
    return _norm_act_apply_op(y, mean, rstd, act, float(negative_slope))
