"""Fused instance normalisation + activation (+ reflect padding of the output).

    y = pad_reflect(act(w[c] * (x - mean[n, c]) * rstd[n, c] + b[c]))

with mean / biased variance per (sample, channel) over the H x W plane,
``rstd = 1 / sqrt(var + eps)``, act in {none, relu, leaky_relu}, optional
affine, optional reflect padding of the output (``pad``), NCHW or
channels_last (output and gradient keep the input's memory format),
fp32 / bf16 / fp16 storage with fp32 statistics and arithmetic.

Design trade-off
----------------
* Statistics are two-pass from centred values (mean first, then the sum of
  squared deviations), never E[x^2] - E[x]^2.  Partial statistics of split
  planes are merged with Chan's parallel formula (count, mean, M2).
* Fused path (the plane, or a block of whole planes, fits one register tile
  of <= 16384 elements): one program per (sample, block of channels) loads
  its tile once, computes mean/var in registers, writes y.
  HBM bytes: forward read x + write y (2 x numel x elt) + mean/rstd;
  backward read x + dy, write dx (3 x numel x elt).  Optimal.
* Split path (planes over one tile, or a large tile with too few programs
  to fill the GPU, e.g. batch 1; channels_last planes of 64x64 and up): the
  plane is cut into S tiles along H*W and three launches run: (1) per-tile
  partials (count/mean/M2 forward; sum g and sum g*x_hat backward) into an
  (N, S, C) fp32 workspace, (2) one program per (sample, channel block)
  merges them into (N, C), (3) every tile normalises / computes dx.  The
  samples are processed in chunks of ~24 MB of activations so that the
  second read of x (and dy) hits L2.  HBM bytes: as the fused path when the
  chunk stays in L2, else one more read of x (and dy); the workspace is
  ~1/16 of an activation or less.
* One grid dimension: program = (sample, channel block) x tile.  Grid y
  and z allow only 65535 programs, which the tiles of a 2048 x 2048 plane
  exceed; x allows 2**31 - 1.
* Launches are planned from shapes alone (``NormProblem`` ->
  ``heuristic_plan`` / ``candidate_plans`` -> ``plan_launches``): the
  launcher runs those records, and CI compiles the same records for sm_90a
  and sm_80 (``tests/test_gpu_compile.py``).
* Block sizes come from a fixed heuristic (``_plan``; no autotuning, so a
  first call during CUDA-graph capture is safe).  PIX2PIX_FAST_AUTOTUNE=1
  times a few candidate plans per shape on first use instead (never while
  a CUDA graph is being captured); ``benchmarks/bench_ops.py --sweep``
  reports the best candidate per shape for tuning the heuristic.
* Saved for backward: the input x (not y) and fp32 mean/rstd (N x C each).
  The output would do for leaky_relu without affine (x_hat = y or y/slope),
  but not for relu (x_hat is lost where y = 0) nor for affine (needs w != 0),
  and the bytes per pass are the same either way (one activation-sized read),
  so one rule for all.  Backward recomputes x_hat = (x - mean) * rstd and the
  pre-activation w * x_hat + b; the activation derivative is taken from its
  sign exactly as PyTorch does (leaky_relu: slope where pre-act <= 0; relu:
  0 where pre-act <= 0).  With g = dy * act'(pre):
      dbias[c]   = sum_{n,hw} g          dweight[c] = sum_{n,hw} g * x_hat
      dx = rstd * w * (g - mean_hw(g) - x_hat * mean_hw(g * x_hat))
  per-(n, c) sums come out of the kernel (N x C fp32), summed over n by torch.
* Output padding (``pad``): each normalised element is stored at its own
  padded position and at its up to 8 mirror positions with masked stores, so
  a padded activation costs no extra pass; backward gathers the reflected
  gradient copies (masked loads) before the activation derivative.
* A 1x1 plane normalises to exactly 0 (mean = x, var = 0): output act(b),
  dx = 0, dweight = 0.  (``F.instance_norm`` refuses 1x1 planes in training with a
  ValueError; the underlying ``torch.instance_norm`` returns ~0 and dx = 0.)
* eps and negative_slope are runtime arguments; ACT, HAS_*, CL, PHASE and
  block sizes are compile-time.
* Register use of every kernel variant at the U-Net / PatchGAN / ResNet
  shapes was checked with ptxas for sm_90 (no spills beyond 4 bytes).
* Double backward is not supported (the backward op has no autograd formula).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from pix2pix_fast.ops._common import (
    Launch,
    Ptr,
    act_code,
    act_ref,
    as_memory_format,
    cdiv,
    make_launch,
    next_power_of_2,
    normalize_pad,
    num_sms,
    run_launch,
    suggest_memory_format,
    tl,
    triton,
    use_triton,
)
from pix2pix_fast.ops._helpers import (
    act_grad,
    apply_act,
    chan_merge,
    gather_reflected,
    pixel_offsets,
    reflected_copy,
    sample_channel_tile,
    tile_stats,
)

__all__ = ["instance_norm_act", "instance_norm_act_ref", "instance_norm_act_reflect_pad"]

PadArg = Union[int, Sequence[int]]
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------
# PyTorch reference
# ---------------------------------------------------------------------------
def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _stats_ref(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    xf = x.to(_stat_dtype(x))
    mean = xf.mean(dim=(2, 3))
    xc = xf - mean[:, :, None, None]
    var = (xc * xc).mean(dim=(2, 3))
    return mean, torch.rsqrt(var + eps)


def instance_norm_act_ref(
    x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
    act: str = "leaky_relu", negative_slope: float = 0.2, pad: PadArg = 0,
) -> Tensor:
    """Differentiable PyTorch reference: fp32 (fp64 for fp64 input) arithmetic, output in x's dtype and format."""
    act_code(act)
    pads = normalize_pad(pad)
    mean, rstd = _stats_ref(x, eps)
    xf = x.to(mean.dtype)
    y = (xf - mean[:, :, None, None]) * rstd[:, :, None, None]
    if weight is not None:
        y = y * weight.to(y.dtype)[None, :, None, None]
    if bias is not None:
        y = y + bias.to(y.dtype)[None, :, None, None]
    y = act_ref(y, act, negative_slope).to(x.dtype)
    if any(pads):
        y = F.pad(y, pads, mode="reflect")
    return as_memory_format(y, suggest_memory_format(x))


def _fwd_ref(x, weight, bias, eps, act, negative_slope, pads):
    mean, rstd = _stats_ref(x, eps)
    y = instance_norm_act_ref(x, weight, bias, eps, act, negative_slope, pads)
    return y, mean, rstd


def _bwd_ref(dy, x, weight, bias, mean, rstd, act, negative_slope, pads):
    """dx (x's dtype/format) and per-channel fp32 sums (dweight, dbias) without autograd."""
    fmt = suggest_memory_format(x)
    if any(pads):
        dy = torch.ops.aten.reflection_pad2d_backward(dy, x, list(pads))
    sd = mean.dtype
    xhat = (x.to(sd) - mean[:, :, None, None]) * rstd[:, :, None, None]
    pre = xhat
    if weight is not None:
        pre = pre * weight.to(sd)[None, :, None, None]
    if bias is not None:
        pre = pre + bias.to(sd)[None, :, None, None]
    g = dy.to(sd)
    if act == "relu":
        g = torch.where(pre > 0, g, torch.zeros_like(g))
    elif act == "leaky_relu":
        g = torch.where(pre > 0, g, g * negative_slope)
    sg = g.sum(dim=(2, 3))
    sgx = (g * xhat).sum(dim=(2, 3))
    hw = x.shape[2] * x.shape[3]
    scale = rstd if weight is None else rstd * weight.to(sd)[None, :]
    dx = scale[:, :, None, None] * (g - (sg / hw)[:, :, None, None] - xhat * (sgx / hw)[:, :, None, None])
    dx = as_memory_format(dx.to(x.dtype), fmt)
    return dx, sgx.sum(0).float(), sg.sum(0).float()


# ---------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------
@triton.jit
def _instance_norm_act_fwd_kernel(
    x_ptr,  # (N, C, H, W) fp32/bf16/fp16, NCHW or channels_last (CL)
    y_ptr,  # (N, C, Ho, Wo) = (N, C, H + pad_t + pad_b, W + pad_l + pad_r), x's dtype and format
    w_ptr,  # (C,) any float dtype (read only if HAS_WEIGHT)
    b_ptr,  # (C,) any float dtype (read only if HAS_BIAS)
    mean_ptr,  # (N, C) fp32: written in PHASE 0 and 2, read in PHASE 3
    rstd_ptr,  # (N, C) fp32: as mean_ptr
    pmean_ptr,  # (N, S, C) fp32 per-tile means: written in PHASE 1, read in PHASE 2
    pm2_ptr,  # (N, S, C) fp32 per-tile centred sums of squares, as pmean_ptr
    C,
    H, W, HW,  # the plane; HW = H * W on its own so that its divisibility by 16 is specialised
    S,  # tiles per plane along H*W (1 in PHASE 0)
    Ho, Wo,  # the output plane: H + pad_t + pad_b, W + pad_l + pad_r
    pad_l, pad_r, pad_t, pad_b,  # reflect padding of the output (HAS_PAD)
    eps,
    negative_slope,
    PHASE: tl.constexpr,  # 0 fused; split: 1 tile stats, 2 merge stats, 3 normalise
    CL: tl.constexpr,  # channels_last (else NCHW)
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # the affine transform
    HAS_PAD: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu
    BLOCK_HW: tl.constexpr,  # pixels per tile (>= H*W in PHASE 0)
    BLOCK_C: tl.constexpr,  # channels per tile
    BLOCK_S: tl.constexpr,  # partials merged per step (PHASE 2)
):
    # One grid dimension: program = (sample, channel block) * S + tile, so the
    # S tiles of a plane are adjacent; PHASE 2 has one program per (sample, channel block).
    n, c, c_mask, tile = sample_channel_tile(tl.program_id(0), 1 if PHASE == 2 else S, C, BLOCK_C)
    if PHASE == 2:
        # Merge the S tile partials of these channels, BLOCK_S at a time.
        mean = tl.zeros([BLOCK_C], dtype=tl.float32)
        m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_C], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_mask = s < S
            cnt_s = tl.where(s_mask, tl.minimum(HW - s * BLOCK_HW, BLOCK_HW), 0).to(tl.float32)
            p_mask = s_mask[:, None] & c_mask[None, :]
            p_off = (n * S + s[:, None]) * C + c[None, :]
            pm = tl.load(pmean_ptr + p_off, mask=p_mask, other=0.0)
            pq = tl.load(pm2_ptr + p_off, mask=p_mask, other=0.0)
            # (count, mean, M2) of the BLOCK_S partials, then merged into the running triple.
            nb = tl.sum(cnt_s, axis=0)
            mean_b = tl.sum(cnt_s[:, None] * pm, axis=0) / nb
            dm = tl.where(p_mask, pm - mean_b[None, :], 0.0)
            m2_b = tl.sum(pq, axis=0) + tl.sum(cnt_s[:, None] * dm * dm, axis=0)
            mean, m2, cnt = chan_merge(mean, m2, cnt, mean_b, m2_b, nb)
        tl.store(mean_ptr + n * C + c, mean, mask=c_mask)
        tl.store(rstd_ptr + n * C + c, tl.rsqrt(m2 / HW + eps), mask=c_mask)
    else:
        hw = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        mask = hw_mask[:, None] & c_mask[None, :]
        # Scalar base pointer of the sample, int32 offsets inside it.
        x_off = pixel_offsets(hw, c, HW, C, CL)
        x = tl.load(x_ptr + n * C * HW + x_off, mask=mask, other=0.0).to(tl.float32)
        if PHASE == 3:
            mean = tl.load(mean_ptr + n * C + c, mask=c_mask, other=0.0)
            rstd = tl.load(rstd_ptr + n * C + c, mask=c_mask, other=0.0)
        else:
            # Statistics of this tile, centred: count, mean, M2.
            mean, m2 = tile_stats(x, mask, tl.minimum(HW - tile * BLOCK_HW, BLOCK_HW).to(tl.float32))
            if PHASE == 1:
                p_off = (n * S + tile) * C + c
                tl.store(pmean_ptr + p_off, mean, mask=c_mask)
                tl.store(pm2_ptr + p_off, m2, mask=c_mask)
            else:
                rstd = tl.rsqrt(m2 / HW + eps)
                tl.store(mean_ptr + n * C + c, mean, mask=c_mask)
                tl.store(rstd_ptr + n * C + c, rstd, mask=c_mask)
        if PHASE != 1:  # 0 or 3: normalise and store
            y = (x - mean[None, :]) * rstd[None, :]
            if HAS_WEIGHT:
                w = tl.load(w_ptr + c, mask=c_mask, other=1.0).to(tl.float32)
                y = y * w[None, :]
            if HAS_BIAS:
                b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
                y = y + b[None, :]
            y = apply_act(y, negative_slope, ACT).to(y_ptr.dtype.element_ty)
            if HAS_PAD:
                # Every element is stored at each of its up to nine padded positions.
                h = hw // W
                w_ = hw - h * W
                y_base = y_ptr + n * C * Ho * Wo
                for k in tl.static_range(9):
                    o, m = reflected_copy(h, w_, hw_mask, H, W, Wo, pad_l, pad_r, pad_t, pad_b, k)
                    tl.store(y_base + pixel_offsets(o, c, Ho * Wo, C, CL), y, mask=m[:, None] & c_mask[None, :])
            else:
                tl.store(y_ptr + n * C * HW + x_off, y, mask=mask)


@triton.jit
def _instance_norm_act_bwd_kernel(
    dy_ptr,  # (N, C, Ho, Wo) x's dtype and format (the padded output's gradient if HAS_PAD)
    x_ptr,  # (N, C, H, W) fp32/bf16/fp16, NCHW or channels_last (CL)
    w_ptr,  # (C,) any float dtype (read only if HAS_WEIGHT)
    b_ptr,  # (C,) any float dtype (read only if HAS_BIAS)
    mean_ptr,  # (N, C) fp32 from the forward
    rstd_ptr,  # (N, C) fp32 from the forward
    dx_ptr,  # (N, C, H, W) x's dtype and format, written in PHASE 0 and 3
    sg_ptr,  # (N, C) fp32 sum_hw g (dbias per sample): written in PHASE 0 and 2, read in PHASE 3
    sgx_ptr,  # (N, C) fp32 sum_hw g * x_hat (dweight per sample): as sg_ptr
    psg_ptr,  # (N, S, C) fp32 per-tile sum of g: written in PHASE 1, read in PHASE 2
    psgx_ptr,  # (N, S, C) fp32 per-tile sum of g * x_hat: as psg_ptr
    C,
    H, W, HW,  # the plane; HW = H * W on its own so that its divisibility by 16 is specialised
    S,  # tiles per plane along H*W (1 in PHASE 0)
    Ho, Wo,  # dy's plane: H + pad_t + pad_b, W + pad_l + pad_r
    pad_l, pad_r, pad_t, pad_b,  # reflect padding of the forward's output (HAS_PAD)
    negative_slope,
    PHASE: tl.constexpr,  # 0 fused; split: 1 tile sums, 2 merge sums, 3 dx
    CL: tl.constexpr,  # channels_last (else NCHW)
    HAS_PAD: tl.constexpr,  # dy is the padded output's gradient
    ACT: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,  # act (0 none, 1 relu, 2 leaky_relu) of w x_hat + b
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,  # tile: pixels (>= H*W in PHASE 0) x channels
    BLOCK_S: tl.constexpr,  # partials summed per step (PHASE 2)
):
    # One grid dimension, as in the forward; PHASE 2 has one program per (sample, channel block).
    n, c, c_mask, tile = sample_channel_tile(tl.program_id(0), 1 if PHASE == 2 else S, C, BLOCK_C)
    if PHASE == 2:
        # Sum the S tile partials: one program per (sample, block of channels).
        sg = tl.zeros([BLOCK_C], dtype=tl.float32)
        sgx = tl.zeros([BLOCK_C], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            p_mask = (s < S)[:, None] & c_mask[None, :]
            p_off = (n * S + s[:, None]) * C + c[None, :]
            sg += tl.sum(tl.load(psg_ptr + p_off, mask=p_mask, other=0.0), axis=0)
            sgx += tl.sum(tl.load(psgx_ptr + p_off, mask=p_mask, other=0.0), axis=0)
        tl.store(sg_ptr + n * C + c, sg, mask=c_mask)
        tl.store(sgx_ptr + n * C + c, sgx, mask=c_mask)
    else:
        hw = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        mask = hw_mask[:, None] & c_mask[None, :]
        x_off = pixel_offsets(hw, c, HW, C, CL)
        mean = tl.load(mean_ptr + n * C + c, mask=c_mask, other=0.0)
        rstd = tl.load(rstd_ptr + n * C + c, mask=c_mask, other=0.0)
        x = tl.load(x_ptr + n * C * HW + x_off, mask=mask, other=0.0).to(tl.float32)
        xhat = (x - mean[None, :]) * rstd[None, :]

        if HAS_PAD:
            # The gradient of every padded copy of each element.
            h = hw // W
            dy = gather_reflected(
                dy_ptr + n * C * Ho * Wo, h, hw - h * W, hw_mask, c, c_mask, C, H, W, Ho, Wo,
                pad_l, pad_r, pad_t, pad_b, CL, BLOCK_HW, BLOCK_C,
            )
        else:
            dy = tl.load(dy_ptr + n * C * HW + x_off, mask=mask, other=0.0).to(tl.float32)

        # g = dy * act'(pre-activation); masked lanes have dy = 0, hence g = 0.
        if HAS_WEIGHT:
            w = tl.load(w_ptr + c, mask=c_mask, other=1.0).to(tl.float32)
        if ACT != 0:
            pre = xhat
            if HAS_WEIGHT:
                pre = pre * w[None, :]
            if HAS_BIAS:
                b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
                pre = pre + b[None, :]
            g = act_grad(dy, pre, negative_slope, ACT)
        else:
            g = dy

        if PHASE == 3:
            sg = tl.load(sg_ptr + n * C + c, mask=c_mask, other=0.0)
            sgx = tl.load(sgx_ptr + n * C + c, mask=c_mask, other=0.0)
        else:
            sg = tl.sum(g, axis=0)
            sgx = tl.sum(g * xhat, axis=0)
            if PHASE == 1:
                p_off = (n * S + tile) * C + c
                tl.store(psg_ptr + p_off, sg, mask=c_mask)
                tl.store(psgx_ptr + p_off, sgx, mask=c_mask)
            else:
                tl.store(sg_ptr + n * C + c, sg, mask=c_mask)
                tl.store(sgx_ptr + n * C + c, sgx, mask=c_mask)
        if PHASE != 1:
            scale = rstd
            if HAS_WEIGHT:
                scale = scale * w
            inv_hw = 1.0 / HW
            dx = scale[None, :] * (g - (sg * inv_hw)[None, :] - xhat * (sgx * inv_hw)[None, :])
            tl.store(dx_ptr + n * C * HW + x_off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------
_MAX_TILE = 16384  # elements one program holds in registers (64 KB fp32 per tensor)
_SPLIT_TILE = 4096  # tile of the split path
_SMALL_TILE = 4096  # fused tiles up to this size are not split for parallelism
# With fused reflect padding each element is stored (forward) or gathered
# (backward) at up to nine positions: smaller tiles, at most 8 elements per
# thread, keep that under ~128 registers without spills (checked with ptxas).
_MAX_TILE_PAD = 4096
_SPLIT_TILE_PAD = 2048
_MIN_ROW_BYTES = 32  # channels_last: at least one 32-byte sector of channels per row
_MAX_BLOCK_C_NCHW = 128  # NCHW: whole planes packed per program, at most this many
# Split path: samples per launch sequence (stats, merge, apply) chosen so the
# chunk's activations stay in L2 between the first and the second read.
_L2_BUDGET = 24 * 2**20
_AUTOTUNE_ENV = "PIX2PIX_FAST_AUTOTUNE"


@dataclass(frozen=True)
class _Plan:
    block_hw: int
    block_c: int
    split: int  # S: tiles per plane along H*W; 1 means the fused single-pass kernel
    block_s: int  # partials merged per step in the split path
    num_warps: int
    samples_per_launch: int  # split path: samples per (stats, merge, apply) sequence


def _warps(tile: int, pad: bool, elt: int) -> int:
    if pad:
        # The padded path holds more per element; 4-byte tiles of 1,024 spilled
        # 16 B at 4 warps with triton 3.6's ptxas (fp32 backward, sm_90).
        return min(16, max(4, tile // (256 if elt <= 2 else 128)))
    if tile >= 16384:
        return 16
    if tile >= 4096:
        return 8
    return 4


def _split_plan(
    N: int, C: int, HW: int, block_hw: int, block_c: int, l2_bytes_per_sample: int, elt: int, pad: bool = False
) -> _Plan:
    block_hw = min(block_hw, next_power_of_2(HW))
    split = cdiv(HW, block_hw)
    block_s = min(next_power_of_2(split), max(1, 4096 // block_c))
    chunk = max(1, min(N, _L2_BUDGET // max(1, l2_bytes_per_sample)))
    return _Plan(block_hw, block_c, split, block_s, _warps(block_hw * block_c, pad, elt), chunk)


def _plan(N: int, C: int, HW: int, cl: bool, elt: int, sms: int, tensors: int = 1, pad: bool = False) -> _Plan:
    """Tile shape and fused/split choice for planes of HW pixels (fixed heuristic: capture-safe).

    ``tensors``: activation-sized tensors read twice by the split path (1
    forward: x; 2 backward: x and dy), for the L2 chunking.  ``pad``: fused
    reflect padding (smaller tiles).
    """
    max_tile = _MAX_TILE_PAD if pad else _MAX_TILE
    bhw = next_power_of_2(HW)
    pc = next_power_of_2(C)
    if cl:
        # Rows of contiguous channels; as many as fit beside the whole plane,
        # 64 at most and at least one 32-byte sector's worth.
        min_c = min(pc, max(1, _MIN_ROW_BYTES // elt))
        block_c = min(pc, 64)
        while block_c > min_c and bhw * block_c > max_tile:
            block_c //= 2
    else:
        # Whole contiguous planes; several per program when they are small.
        block_c = min(pc, _MAX_BLOCK_C_NCHW, max(1, 2048 // bhw))
    tile = bhw * block_c
    fused = tile <= max_tile
    if fused and tile > _SMALL_TILE and N * cdiv(C, block_c) < sms:
        fused = False  # too few programs to fill the GPU: split the planes
    if fused:
        return _Plan(bhw, block_c, 1, 1, _warps(tile, pad, elt), N)
    split_tile = _SPLIT_TILE_PAD if pad else _SPLIT_TILE
    if cl:
        block_c = min(pc, 64 if elt <= 2 else 32)
        block_hw = max(1, split_tile // block_c)
    else:
        block_c = 1
        block_hw = split_tile
    return _split_plan(N, C, HW, block_hw, block_c, tensors * C * HW * elt, elt, pad)


def _candidate_plans(
    N: int, C: int, HW: int, cl: bool, elt: int, sms: int, tensors: int, pad: bool = False
) -> List[_Plan]:
    """A few alternatives to the heuristic plan, for PIX2PIX_FAST_AUTOTUNE=1 and the benchmark's sweep."""
    plans = [_plan(N, C, HW, cl, elt, sms, tensors, pad)]
    bhw = next_power_of_2(HW)
    pc = next_power_of_2(C)
    per_sample = tensors * C * HW * elt
    c_opts = (8, 16, 32, 64) if cl else (1, 2, 4, 8, 16, 32, 64, 128)
    for block_c in sorted({min(pc, c) for c in c_opts}):
        tile = bhw * block_c
        # NCHW tiles of several planes stop at 4096 elements: from 8192 up they spill
        # registers (sm_80 and sm_90; tests/test_gpu_compile.py -m slow).
        max_tile = _MAX_TILE_PAD if pad else _MAX_TILE
        if not cl and block_c > 1:
            max_tile = min(max_tile, 4096)
        if 512 <= tile <= max_tile:
            for warps in {_warps(tile, pad, elt), max(4, _warps(tile, pad, elt) // 2)}:
                plans.append(_Plan(bhw, block_c, 1, 1, warps, N))
    for split_tile in (1024, 2048) if pad else (2048, 4096, 8192):
        for block_c in ((16, 32, 64) if cl else (1,)):
            block_c = min(pc, block_c)
            block_hw = max(1, split_tile // block_c)
            if block_hw < bhw:
                plans.append(_split_plan(N, C, HW, block_hw, block_c, per_sample, elt, pad))
    unique = []
    for p in plans:
        if p not in unique:
            unique.append(p)
    return unique


@dataclass(frozen=True)
class NormProblem:
    """What the launches of one instance_norm_act call depend on: shapes, dtypes, layout, options.

    Built from tensors by :func:`norm_problem` (real, fake or meta tensors
    alike), or directly from numbers, so launches can be planned without a
    device (the GPU compile check plans every layer of the models this way).
    """

    kind: str  # "fwd" or "bwd"
    N: int
    C: int
    H: int  # input plane (before the output padding)
    W: int
    dtype: torch.dtype  # x's (and y's, dy's, dx's) dtype
    channels_last: bool
    pads: Tuple[int, int, int, int]  # (left, right, top, bottom) reflect padding of the output
    weight_dtype: Optional[torch.dtype]  # None: no affine weight
    bias_dtype: Optional[torch.dtype]  # None: no bias
    act: str
    eps: float = 1e-5
    negative_slope: float = 0.2

    @property
    def tensors(self) -> int:
        # Activation-sized tensors read twice by the split path (L2 chunking).
        return 1 if self.kind == "fwd" else 2


def norm_problem(
    kind: str, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], act: str, pads,
    eps: float = 1e-5, negative_slope: float = 0.2,
) -> NormProblem:
    """The :class:`NormProblem` of an op call on ``x`` (layout as the launcher will see it)."""
    N, C, H, W = x.shape
    return NormProblem(
        kind, N, C, H, W, x.dtype, suggest_memory_format(x) == torch.channels_last, tuple(pads),
        None if weight is None else weight.dtype, None if bias is None else bias.dtype,
        act, float(eps), float(negative_slope),
    )


def _plan_args(p: NormProblem, sms: int) -> tuple:
    return (p.N, p.C, p.H * p.W, p.channels_last, p.dtype.itemsize, sms, p.tensors, any(p.pads))


def heuristic_plan(p: NormProblem, sms: int) -> _Plan:
    """The plan the op uses by default on a GPU with ``sms`` multiprocessors."""
    return _plan(*_plan_args(p, sms))


def candidate_plans(p: NormProblem, sms: int) -> List[_Plan]:
    """The plans PIX2PIX_FAST_AUTOTUNE=1 times (the heuristic one first)."""
    return _candidate_plans(*_plan_args(p, sms))


def plan_launches(p: NormProblem, plan: _Plan) -> List[Launch]:
    """The kernel launches of one call, in order (split path: per sample chunk, phases 1, 2, 3)."""
    pl, pr, pt, pb = p.pads
    H, W, C = p.H, p.W, p.C
    Ho, Wo = H + pt + pb, W + pl + pr
    _check_int32(C * Ho * Wo)
    S = plan.split
    chunk = plan.samples_per_launch if S > 1 else p.N
    act = Ptr(p.dtype)
    f32 = Ptr(torch.float32)
    w = Ptr(p.weight_dtype) if p.weight_dtype is not None else act
    b = Ptr(p.bias_dtype) if p.bias_dtype is not None else act
    if p.kind == "fwd":
        kernel = _instance_norm_act_fwd_kernel
        ptrs = dict(x_ptr=act, y_ptr=act, w_ptr=w, b_ptr=b, mean_ptr=f32, rstd_ptr=f32, pmean_ptr=f32, pm2_ptr=f32)
        scalars = dict(eps=p.eps, negative_slope=p.negative_slope)
    else:
        kernel = _instance_norm_act_bwd_kernel
        ptrs = dict(dy_ptr=act, x_ptr=act, w_ptr=w, b_ptr=b, mean_ptr=f32, rstd_ptr=f32, dx_ptr=act,
                    sg_ptr=f32, sgx_ptr=f32, psg_ptr=f32, psgx_ptr=f32)
        scalars = dict(negative_slope=p.negative_slope)
    ints = dict(C=C, H=H, W=W, HW=H * W, S=S, Ho=Ho, Wo=Wo, pad_l=pl, pad_r=pr, pad_t=pt, pad_b=pb)
    launches = []
    for n0 in range(0, p.N, chunk):
        n1 = min(p.N, n0 + chunk)
        num_programs = (n1 - n0) * cdiv(C, plan.block_c)
        for phase in ((1, 2, 3) if S > 1 else (0,)):
            constexprs = dict(
                PHASE=phase, CL=p.channels_last,
                HAS_WEIGHT=p.weight_dtype is not None, HAS_BIAS=p.bias_dtype is not None, HAS_PAD=any(p.pads),
                ACT=act_code(p.act), BLOCK_HW=plan.block_hw, BLOCK_C=plan.block_c, BLOCK_S=plan.block_s,
            )
            grid = (num_programs * (1 if phase == 2 else S),)
            launches.append(make_launch(
                kernel, grid, {**ptrs, **ints, **scalars}, constexprs,
                num_warps=plan.num_warps, samples=(n0, n1),
            ))
    return launches


_TUNED = {}


def _autotune_enabled() -> bool:
    import os

    return os.environ.get(_AUTOTUNE_ENV, "0") == "1"


def _choose_plan(p: NormProblem, x: Tensor, run) -> _Plan:
    """The heuristic plan; with PIX2PIX_FAST_AUTOTUNE=1 on CUDA, the fastest candidate (cached per problem).

    Never benchmarks while a CUDA graph is being captured (falls back to the heuristic).
    """
    sms = num_sms(x.device)
    if not (x.is_cuda and _autotune_enabled()):
        return heuristic_plan(p, sms)
    key = (p, x.device)
    plan = _TUNED.get(key)
    if plan is None:
        if torch.cuda.is_current_stream_capturing():
            return heuristic_plan(p, sms)
        from triton.testing import do_bench

        timings = [(do_bench(lambda c=c: run(c), warmup=10, rep=30), i, c)
                   for i, c in enumerate(candidate_plans(p, sms))]
        plan = min(timings)[2]
        _TUNED[key] = plan
    return plan


def _check_int32(numel: int) -> None:
    # In-sample offsets are int32 in the kernels (the sample index is int64).
    if numel >= 2**31:
        raise ValueError("instance_norm_act: one sample has more than 2**31 elements")


def _run_plan(p: NormProblem, plan: _Plan, device: torch.device, tensors: dict, workspace: Tuple[str, str]) -> None:
    """Run the launches of ``plan``: per-sample tensors are sliced per launch, the split workspace allocated here."""
    per_sample = {k: v for k, v in tensors.items() if k not in ("w_ptr", "b_ptr")}
    fixed = {k: tensors[k] for k in ("w_ptr", "b_ptr")}
    if plan.split > 1:
        shape = (min(plan.samples_per_launch, p.N), plan.split, p.C)
        ws = {name: torch.empty(shape, dtype=torch.float32, device=device) for name in workspace}
    for launch in plan_launches(p, plan):
        n0, n1 = launch.samples
        args = {k: v[n0:n1] for k, v in per_sample.items()}
        args.update(fixed)
        if plan.split > 1:
            args.update(ws)
        else:  # unused by the fused kernel
            args[workspace[0]], args[workspace[1]] = args[_STAT_NAMES[p.kind][0]], args[_STAT_NAMES[p.kind][1]]
        run_launch(launch, device, args)


_STAT_NAMES = {"fwd": ("mean_ptr", "rstd_ptr"), "bwd": ("sg_ptr", "sgx_ptr")}


def _launch_fwd(x, y, weight, bias, mean, rstd, eps, act, negative_slope, pads, plan: _Plan) -> None:
    """Run the forward launches of ``plan`` into preallocated y, mean, rstd (x in its suggested layout)."""
    problem = norm_problem("fwd", x, weight, bias, act, pads, eps, negative_slope)
    tensors = dict(
        x_ptr=x, y_ptr=y, w_ptr=weight if weight is not None else x, b_ptr=bias if bias is not None else x,
        mean_ptr=mean, rstd_ptr=rstd,
    )
    _run_plan(problem, plan, x.device, tensors, ("pmean_ptr", "pm2_ptr"))


def _launch_bwd(dy, x, weight, bias, mean, rstd, dx, sg, sgx, act, negative_slope, pads, plan: _Plan) -> None:
    """Run the backward launches of ``plan`` into preallocated dx, sg, sgx (x and dy in x's layout)."""
    problem = norm_problem("bwd", x, weight, bias, act, pads, negative_slope=negative_slope)
    tensors = dict(
        dy_ptr=dy, x_ptr=x, w_ptr=weight if weight is not None else x, b_ptr=bias if bias is not None else x,
        mean_ptr=mean, rstd_ptr=rstd, dx_ptr=dx, sg_ptr=sg, sgx_ptr=sgx,
    )
    _run_plan(problem, plan, x.device, tensors, ("psg_ptr", "psgx_ptr"))


def _fwd_triton(x, weight, bias, eps, act, negative_slope, pads, plan: Optional[_Plan] = None):
    fmt = suggest_memory_format(x)
    x = as_memory_format(x, fmt)
    N, C, H, W = x.shape
    pl, pr, pt, pb = pads
    Ho, Wo = H + pt + pb, W + pl + pr
    _check_int32(C * Ho * Wo)
    y = torch.empty((N, C, Ho, Wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    mean = torch.empty((N, C), dtype=torch.float32, device=x.device)
    rstd = torch.empty((N, C), dtype=torch.float32, device=x.device)
    if N * C == 0:
        return y, mean, rstd
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None

    def run(p: _Plan) -> None:
        _launch_fwd(x, y, weight, bias, mean, rstd, eps, act, negative_slope, pads, p)

    if plan is None:
        plan = _choose_plan(norm_problem("fwd", x, weight, bias, act, pads, eps, negative_slope), x, run)
    run(plan)
    return y, mean, rstd


def _bwd_triton(dy, x, weight, bias, mean, rstd, act, negative_slope, pads, plan: Optional[_Plan] = None):
    fmt = suggest_memory_format(x)
    x = as_memory_format(x, fmt)
    dy = as_memory_format(dy, fmt)
    N, C, H, W = x.shape
    dx = torch.empty_like(x, memory_format=fmt)
    sg = torch.empty((N, C), dtype=torch.float32, device=x.device)
    sgx = torch.empty((N, C), dtype=torch.float32, device=x.device)
    if N * C == 0:
        return dx, sgx.sum(0), sg.sum(0)
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    mean = mean.contiguous()
    rstd = rstd.contiguous()

    def run(p: _Plan) -> None:
        _launch_bwd(dy, x, weight, bias, mean, rstd, dx, sg, sgx, act, negative_slope, pads, p)

    if plan is None:
        plan = _choose_plan(norm_problem("bwd", x, weight, bias, act, pads, negative_slope=negative_slope), x, run)
    run(plan)
    return dx, sgx.sum(0), sg.sum(0)


def _triton_ok(x: Tensor) -> bool:
    return x.dtype in _TRITON_DTYPES and use_triton(x)


# ---------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------
@torch.library.custom_op("pix2pix_fast::instance_norm_act", mutates_args=())
def _instance_norm_act_op(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    act: str,
    negative_slope: float,
    pad: List[int],
) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y in x's dtype and memory format, mean/rstd (N, C) fp32 (fp64 for fp64 x)."""
    pads = normalize_pad(pad)
    if _triton_ok(x):
        return _fwd_triton(x, weight, bias, eps, act, negative_slope, pads)
    return _fwd_ref(x, weight, bias, eps, act, negative_slope, pads)


@_instance_norm_act_op.register_fake
def _(x, weight, bias, eps, act, negative_slope, pad):
    pl, pr, pt, pb = pad
    N, C, H, W = x.shape
    y = torch.empty(
        (N, C, H + pt + pb, W + pl + pr), dtype=x.dtype, device=x.device,
        memory_format=suggest_memory_format(x),
    )
    mean = torch.empty((N, C), dtype=_stat_dtype(x), device=x.device)
    return y, mean, torch.empty_like(mean)


@torch.library.custom_op("pix2pix_fast::instance_norm_act_backward", mutates_args=())
def _instance_norm_act_backward_op(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
    act: str, negative_slope: float, pad: List[int],
) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias): dx in x's dtype and format; dweight/dbias (C,) fp32 sums over (N, H, W)."""
    pads = normalize_pad(pad)
    if _triton_ok(x) and mean.dtype == torch.float32:
        return _bwd_triton(dy, x, weight, bias, mean, rstd, act, negative_slope, pads)
    return _bwd_ref(dy, x, weight, bias, mean, rstd, act, negative_slope, pads)


@_instance_norm_act_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, act, negative_slope, pad):
    C = x.shape[1]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x))
    dw = torch.empty((C,), dtype=torch.float32, device=x.device)
    return dx, dw, torch.empty_like(dw)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, act, negative_slope, pad = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.act = act
    ctx.negative_slope = negative_slope
    ctx.pad = list(pad)


def _backward(ctx, dy, _dmean, _drstd):
    # mean and rstd are auxiliary outputs: their gradients are ignored.
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = _instance_norm_act_backward_op(
        dy, x, weight, bias, mean, rstd, ctx.act, ctx.negative_slope, ctx.pad
    )
    dw = dw.to(weight.dtype) if weight is not None else None
    db = db.to(bias.dtype) if bias is not None else None
    # Gradients for (x, weight, bias, eps, act, negative_slope, pad).
    return dx, dw, db, None, None, None, None


_instance_norm_act_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# Functional wrappers
# ---------------------------------------------------------------------------
def _check_args(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], pads) -> None:
    if x.dim() != 4:
        raise ValueError(f"instance_norm_act expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    if H * W == 0:
        raise ValueError(f"instance_norm_act needs a non-empty H x W plane, got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"{name} must have shape ({C},), got {tuple(p.shape)}")
    pl, pr, pt, pb = pads
    if pl >= W or pr >= W or pt >= H or pb >= H:
        raise ValueError(f"reflect padding {pads} must be smaller than the plane (H, W) = ({H}, {W})")


def instance_norm_act(
    x: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    act: str = "leaky_relu",
    negative_slope: float = 0.2,
    pad: PadArg = 0,
) -> Tensor:
    """Instance norm (per sample and channel over H x W) + activation, one pass.

    ``act``: "none" | "relu" | "leaky_relu" (``negative_slope``).  ``weight``
    and ``bias`` (shape (C,)) are the optional affine transform.  ``pad``: an
    int or (left, right, top, bottom) reflect padding applied to the output,
    fused (no extra pass).  Output in x's dtype (fp32/bf16/fp16 computed with
    fp32 statistics) and memory format (NCHW or channels_last).  CUDA tensors
    run the Triton kernels, CPU tensors the PyTorch reference.
    """
    act_code(act)  # ValueError for an unknown activation
    pads = normalize_pad(pad)
    _check_args(x, weight, bias, pads)
    return _instance_norm_act_op(x, weight, bias, float(eps), act, float(negative_slope), list(pads))[0]


def instance_norm_act_reflect_pad(
    x: Tensor, pad: PadArg, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
    act: str = "leaky_relu", negative_slope: float = 0.2,
) -> Tensor:
    """``reflect_pad(instance_norm_act(x, ...), pad)`` in one pass (see :func:`instance_norm_act`)."""
    return instance_norm_act(x, weight, bias, eps, act, negative_slope, pad)
