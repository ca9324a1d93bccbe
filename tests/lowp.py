"""Low-precision references that do not depend on the CPU running the tests.

A bf16/fp16 kernel is judged by the rule "kernel error <= 2 x (the same
computation's error in that dtype) + small atol", both errors against fp64.
"The same computation in that dtype" is emulated here, not taken from
PyTorch's own bf16 ops: fp64 math on the inputs rounded to the dtype, rounded
again to the dtype at the points where the kernel (or PyTorch, in a backward
written with PyTorch) stores a low-precision tensor. fp64 math followed by
one rounding is the same on every machine, whereas PyTorch's CPU bf16
convolutions and reductions round differently from one instruction set to
the next (an AVX-512 and an AVX2-only CPU give errors a factor of two apart),
which made a bound taken from them pass on one CPU and fail on another.

How a Triton kernel rounds fp32 to a low-precision dtype is probed, once per
(dtype, device): compiled for a GPU it rounds to nearest even; Triton's CPU
interpreter truncates fp32 -> bf16 (toward zero). The emulation rounds the
kernel's stores the same way, and PyTorch's to nearest.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from pix2pix_fast.ops._common import tl, triton

Rounder = Callable[[torch.Tensor], torch.Tensor]
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}


def round_nearest(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t rounded to dtype (to nearest even), returned in t's dtype."""
    return t.to(dtype).to(t.dtype)


def round_toward_zero(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t rounded to fp32, then to dtype toward zero (normal numbers), returned in t's dtype."""
    v = t.to(torch.float32).to(torch.float64)
    mantissa = MANTISSA_BITS[dtype]
    mag = v.abs()
    ulp = torch.exp2(torch.floor(torch.log2(torch.where(mag > 0, mag, 1.0))) - mantissa)
    return (torch.sign(v) * torch.floor(mag / ulp) * ulp).to(t.dtype)


@triton.jit
def _store_probe_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # fp32 in, stored to out's (low-precision) dtype: the cast every kernel's store makes.
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


@functools.lru_cache(maxsize=None)
def kernel_store_rounding(dtype: torch.dtype, device: str) -> str:
    """"nearest" or "toward_zero": how a Triton kernel on `device` rounds an fp32 value it stores as dtype."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, generator=g) * 4).to(device)
    out = torch.empty(256, dtype=dtype, device=device)
    _store_probe_kernel[(1,)](x, out, x.numel(), BLOCK=256)
    got = out.double().cpu()
    x64 = x.double().cpu()
    if torch.equal(got, round_nearest(x64, dtype)):
        return "nearest"
    if torch.equal(got, round_toward_zero(x64, dtype)):
        return "toward_zero"
    raise AssertionError(f"Triton on {device} stores fp32 as {dtype} with a rounding that is neither "
                         f"nearest nor toward zero")


def kernel_rounder(dtype: torch.dtype, device: str, triton_path: bool = True) -> Rounder:
    """fp64 -> fp64 rounding of a kernel's stores of dtype on `device` (PyTorch's: `triton_path=False`)."""
    mode = kernel_store_rounding(dtype, device) if triton_path else "nearest"
    if mode == "toward_zero":
        return functools.partial(round_toward_zero, dtype=dtype)
    return functools.partial(round_nearest, dtype=dtype)


def torch_rounder(dtype: torch.dtype) -> Rounder:
    return functools.partial(round_nearest, dtype=dtype)


class _Round(torch.autograd.Function):
    """Identity whose forward value and/or backward gradient is rounded (None: left exact)."""

    @staticmethod
    def forward(ctx, t, fwd, bwd):
        ctx.bwd = bwd
        return fwd(t) if fwd is not None else t.clone()

    @staticmethod
    def backward(ctx, g):
        # Gradients for (t, fwd, bwd).
        return (ctx.bwd(g) if ctx.bwd is not None else g), None, None


def stored(t: torch.Tensor, fwd: Rounder | None = None, bwd: Rounder | None = None) -> torch.Tensor:
    """t as a kernel stores it (rounded by `fwd`), its gradient as the backward stores it (`bwd`)."""
    return _Round.apply(t, fwd, bwd)


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item()


def assert_rule(name: str, kernel: torch.Tensor, emulated: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    """kernel error <= 2 x (the emulated same-dtype computation's error) + atol, both against fp64 `ref`."""
    k_err, e_err = max_err(kernel, ref), max_err(emulated, ref)
    assert k_err <= 2 * e_err + atol, (
        f"{name}: kernel error {k_err:.3g} > 2 x emulated {kernel.dtype} error {e_err:.3g} + {atol:.3g}")
