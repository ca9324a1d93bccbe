"""Reflect padding: Triton kernels against F.pad(mode="reflect") and its autograd.

CPU tests run the Triton kernels under Triton's interpreter (the ``kernels``
fixture of conftest.py: PIX2PIX_FAST_FORCE_TRITON=1 set per test, TRITON_INTERPRET=1
for the session); GPU tests carry the ``gpu`` marker.  The forward is a pure copy
(exact in every dtype); the backward sums up to four fp32 gradient copies
before one rounding, so it is judged with the dtype rules of the other ops.
"""

import pytest
import torch
import torch.nn.functional as F

from lowp import assert_rule, kernel_rounder
from pix2pix_fast.nn import ReflectPad2d
from pix2pix_fast.ops import reflect_pad, reflect_pad_ref
from pix2pix_fast.ops._common import FORCE_TRITON_ENV, triton_available, use_triton

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

CL = torch.channels_last
NCHW = torch.contiguous_format
FORMATS = [pytest.param(NCHW, id="nchw"), pytest.param(CL, id="cl")]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]
CASES = [
    ((1, 3, 37, 53), 3),
    ((2, 5, 7, 9), (1, 2, 3, 4)),
    ((2, 64, 30, 30), 1),
    ((1, 512, 2, 2), 1),
    ((2, 5, 2, 3), (1, 2, 1, 0)),
    ((1, 1, 3, 3), (2, 2, 2, 2)),
    ((1, 3, 5, 4), 0),
    ((1, 256, 16, 16), 1),
]


def _pads(pad):
    return (pad,) * 4 if isinstance(pad, int) else tuple(pad)


def _inputs(shape, pad, fmt, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    pl, pr, pt, pb = _pads(pad)
    N, C, H, W = shape
    dy = torch.randn((N, C, H + pt + pb, W + pl + pr), generator=g).to(device=device, dtype=dtype)
    return x, dy.contiguous(memory_format=fmt)


def _run(fn, x, dy):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, dy)
    return y, dx


def _check_dx(dx, x, dy, pad):
    # Backward: the sum of each element's copies, stored once. Low precision:
    # kernel error <= 2 x (that sum's rounding as the kernel stores it) + atol.
    _, dx64 = _run(lambda t: F.pad(t, _pads(pad), mode="reflect"), x.double(), dy.double())
    scale = dx64.abs().max().item()
    if x.dtype == torch.float32:
        assert (dx.double() - dx64).abs().max().item() <= 1e-5 * scale + 1e-6
    else:
        emulated = kernel_rounder(x.dtype, dx.device.type, triton_path=use_triton(dx))(dx64)
        assert_rule("dx", dx, emulated, dx64, 1e-5 * scale + 1e-6)


def _check(x, dy, pad, fmt):
    y, dx = _run(lambda t: reflect_pad(t, pad), x, dy)
    assert torch.equal(y, F.pad(x, _pads(pad), mode="reflect"))
    both = fmt == CL and x.is_contiguous(memory_format=CL) and not x.is_contiguous()
    expected = CL if both else NCHW
    assert y.is_contiguous(memory_format=expected) and dx.is_contiguous(memory_format=expected)
    assert dx.dtype == x.dtype
    _check_dx(dx, x, dy, pad)


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,pad", CASES, ids=str)
def test_kernel(kernels, shape, pad, dtype, fmt):
    x, dy = _inputs(shape, pad, fmt, dtype, "cpu")
    _check(x, dy, pad, fmt)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernel_real_shape(kernels, fmt):
    # ResNet-generator style reflect pad of a 64@128 activation.
    x, dy = _inputs((1, 64, 128, 128), 1, fmt, torch.float32, "cpu")
    _check(x, dy, 1, fmt)


def test_cpu_default_path(monkeypatch):
    monkeypatch.delenv(FORCE_TRITON_ENV, raising=False)
    x, dy = _inputs((2, 4, 6, 5), (1, 2, 3, 4), CL, torch.float32, "cpu")
    _check(x, dy, (1, 2, 3, 4), CL)
    torch.testing.assert_close(reflect_pad_ref(x, 2), F.pad(x, (2, 2, 2, 2), mode="reflect"), rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("device", ["torch", "interpret"], indirect=True)
def test_opcheck(device):
    for fmt in (NCHW, CL):
        x, dy = _inputs((2, 3, 5, 6), (1, 2, 3, 4), fmt, torch.float32, "cpu")
        torch.library.opcheck(torch.ops.pix2pix_fast.reflect_pad.default, (x.requires_grad_(), [1, 2, 3, 4]))
        torch.library.opcheck(torch.ops.pix2pix_fast.reflect_pad_backward.default, (dy, [1, 2, 3, 4]))


def test_bad_arguments():
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="smaller"):
        reflect_pad(x, 3)
    with pytest.raises(ValueError, match="non-negative"):
        reflect_pad(x, -1)
    with pytest.raises(ValueError, match="4-D"):
        reflect_pad(x[0], 1)
    with pytest.raises(ValueError, match="tuple"):
        reflect_pad(x, (1, 2))


def test_module_is_drop_in():
    x = torch.randn(2, 3, 7, 8)
    for padding in (2, (1, 0, 2, 3)):
        torch.testing.assert_close(ReflectPad2d(padding)(x), torch.nn.ReflectionPad2d(padding)(x), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,pad",
    CASES + [((1, 3, 256, 256), 3), ((8, 64, 256, 256), 1), ((8, 256, 64, 64), 1), ((8, 3, 256, 256), 3)],
    ids=str,
)
def test_gpu(shape, pad, dtype, fmt):
    x, dy = _inputs(shape, pad, fmt, dtype, "cuda")
    _check(x, dy, pad, fmt)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    x, dy = _inputs((2, 64, 32, 32), 1, CL, torch.bfloat16, "cuda")
    x.requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up compiles the kernels outside the capture
        y = reflect_pad(x, 1)
        torch.autograd.grad(y, x, dy)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = reflect_pad(x, 1)
        (dx,) = torch.autograd.grad(y, x, dy)
    with torch.no_grad():
        x.mul_(2.0)
    dy.mul_(-1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, F.pad(x.detach(), (1, 1, 1, 1), mode="reflect"))
    _check_dx(dx, x.detach(), dy, 1)


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_launch_grids_fit_cuda_limits_up_to_8192(kind, cl):
    # Pure planning: a 1024 x 1024 backward with 64 channels used to put
    # 65,536 tiles on grid dimension y.
    import importlib

    from pix2pix_fast.ops._common import grid_within_limits

    RP = importlib.import_module("pix2pix_fast.ops.reflect_pad")
    for size in (1024, 1448, 2048, 4096, 8192):
        for C in (3, 64, 512):
            for N in (1, 64):
                if N * C * size * size * 2 > 141 * 2**30:
                    continue  # more than a 141 GB GPU holds
                launch = RP.plan_reflect_pad(kind, (N, C, size, size), torch.bfloat16, cl, (3, 3, 3, 3))
                assert grid_within_limits(launch.grid), (size, C, N, launch.grid)
