"""Fused instance norm + activation (+ reflect pad): Triton kernels against the PyTorch reference.

CPU tests run the Triton kernels under Triton's interpreter (the ``kernels``
fixture of conftest.py: PIX2PIX_FAST_FORCE_TRITON=1 set per test, with
TRITON_INTERPRET=1 set for the whole session where there is no CUDA device).
GPU tests carry the ``gpu`` marker; a process with a GPU compiles the kernels
and skips the interpreter tests.

Tolerances: fp32 against an fp64 reference, 1e-5 relative to the tensor's
largest magnitude; bf16/fp16 against the fp64 reference with the rule
"kernel error <= 2 x (PyTorch-in-the-same-dtype error) + small atol".
Triton's interpreter converts fp32 -> bf16 by truncating the mantissa where
the GPU rounds to nearest even, so a bf16 output of the interpreter may sit
one bf16 ulp from the GPU's: for those outputs only, the rule allows one
bf16 ulp of the output's largest magnitude on top (``_interpreter_bf16_ulp``).
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from lowp import assert_rule, kernel_rounder
from pix2pix_fast.nn import InstanceNormAct
from pix2pix_fast.ops import instance_norm_act, instance_norm_act_ref, instance_norm_act_reflect_pad
from pix2pix_fast.ops._common import FORCE_TRITON_ENV, triton_available

INA = importlib.import_module("pix2pix_fast.ops.instance_norm_act")

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

CL = torch.channels_last
NCHW = torch.contiguous_format
FORMATS = [pytest.param(NCHW, id="nchw"), pytest.param(CL, id="cl")]
LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
# (affine, act): every activation, with and without the affine transform.
CONFIGS = [
    pytest.param(True, "leaky_relu", id="affine-lrelu"),
    pytest.param(False, "relu", id="relu"),
    pytest.param(True, "none", id="affine-none"),
]
ODD_SHAPES = [(1, 3, 37, 53), (2, 64, 30, 30), (1, 512, 1, 1), (2, 5, 2, 3), (1, 1, 1, 1), (2, 3, 1, 7)]
# Norm layers of U-Net-256 and the 70x70 PatchGAN (C@HxW), batch 1 on CPU.
REAL_CPU = [(1, 128, 64, 64), (1, 256, 32, 32), (1, 512, 2, 2)]
REAL_GPU = [(64, 128), (128, 64), (256, 32), (512, 16), (512, 8), (512, 4), (512, 2), (512, 31)]
FP32_RTOL = 1e-5


def _inputs(shape, fmt, dtype, affine, device, pad=(0, 0, 0, 0), seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    # An offset and a spread per channel: statistics must be centred.
    x = torch.randn(shape, generator=g) * (1 + torch.rand(C, 1, 1, generator=g)) + 3 * torch.randn(C, 1, 1, generator=g)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = b = None
    if affine:
        w = (1 + 0.5 * torch.randn(C, generator=g)).to(device)
        b = (0.5 * torch.randn(C, generator=g)).to(device)
    pl, pr, pt, pb = pad
    dy = torch.randn((N, C, H + pt + pb, W + pl + pr), generator=g).to(device=device, dtype=dtype)
    return x, w, b, dy.contiguous(memory_format=fmt)


def _run(fn, x, w, b, dy, **kw):
    """Output and gradients (dx, dweight, dbias) of fn, leaves cloned so calls do not share grads."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_() if w is not None else None
    b = b.detach().clone().requires_grad_() if b is not None else None
    y = fn(x, w, b, **kw)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    out = {"y": y, "dx": grads[0]}
    if w is not None:
        out["dw"], out["db"] = grads[1], grads[2]
    return out


def _reference64(x, w, b, dy, **kw):
    return _run(
        instance_norm_act_ref, x.double(), None if w is None else w.double(),
        None if b is None else b.double(), dy.double(), **kw,
    )


def _err(a, r):
    return (a.double() - r.double()).abs().max().item()


def _check_fp32(out, ref):
    for k, r in ref.items():
        scale = r.abs().max().item()
        err = _err(out[k], r)
        assert err <= FP32_RTOL * scale + 1e-6, f"{k}: max error {err:.3g} at scale {scale:.3g}"


def _check_low(out, ref):
    """Flash-attention rule, kernel error <= 2 x (the same computation's error in out's dtype) + atol,
    with that computation emulated (tests/lowp.py): the fp64 reference on the same low-precision
    inputs, its y and dx rounded once as the kernels store them (dw, db are fp32). atol ~ fp32
    rounding of the tensor's scale."""
    y = out["y"]
    k = kernel_rounder(y.dtype, y.device.type)
    for name, r in ref.items():
        emulated = k(r) if name in ("y", "dx") else r
        assert_rule(name, out[name], emulated, r, 1e-5 * r.abs().max().item() + 1e-6)


def _check_layout(out, x):
    fmt = CL if INA.suggest_memory_format(x) == CL else NCHW
    assert out["y"].dtype == x.dtype and out["dx"].dtype == x.dtype
    assert out["y"].is_contiguous(memory_format=fmt)
    assert out["dx"].is_contiguous(memory_format=fmt)


# ---------------------------------------------------------------------------
# Reference sanity (pure PyTorch, default CPU path)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("act", ["none", "relu", "leaky_relu"])
def test_reference_matches_pytorch(affine, act):
    x, w, b, dy = _inputs((2, 5, 9, 11), NCHW, torch.float64, affine, "cpu")
    w = None if w is None else w.double()
    b = None if b is None else b.double()

    def torch_fn(x, w, b):
        y = F.instance_norm(x, weight=w, bias=b, eps=1e-5)
        return {"none": y, "relu": F.relu(y), "leaky_relu": F.leaky_relu(y, 0.2)}[act]

    ref = _run(torch_fn, x, w, b, dy)
    out = _run(instance_norm_act_ref, x, w, b, dy, act=act)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-10, atol=1e-10)


def test_cpu_default_path_uses_reference(monkeypatch):
    monkeypatch.delenv(FORCE_TRITON_ENV, raising=False)
    x, w, b, dy = _inputs((2, 4, 6, 5), CL, torch.float32, True, "cpu")
    out = _run(instance_norm_act, x, w, b, dy)
    _check_fp32(out, _reference64(x, w, b, dy))
    _check_layout(out, x)


def test_one_by_one_plane(monkeypatch):
    # F.instance_norm refuses 1x1 planes in training; the op normalises them to 0.
    x, w, b, dy = _inputs((2, 6, 1, 1), NCHW, torch.float32, True, "cpu")
    with pytest.raises(ValueError):
        F.instance_norm(x)
    out = _run(instance_norm_act, x, w, b, dy, act="none")
    torch.testing.assert_close(out["y"], b.expand(2, 6)[:, :, None, None], rtol=0, atol=0)
    assert torch.count_nonzero(out["dx"]) == 0
    assert torch.count_nonzero(out["dw"]) == 0
    torch.testing.assert_close(out["db"], dy.sum(dim=(0, 2, 3)))


# ---------------------------------------------------------------------------
# Triton kernels on CPU (interpreter)
# ---------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("affine,act", CONFIGS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_kernel_fp32(kernels, shape, affine, act, fmt):
    x, w, b, dy = _inputs(shape, fmt, torch.float32, affine, "cpu")
    out = _run(instance_norm_act, x, w, b, dy, act=act)
    _check_fp32(out, _reference64(x, w, b, dy, act=act))
    _check_layout(out, x)


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 64, 30, 30), (1, 512, 1, 1), (2, 5, 2, 3)], ids=str)
def test_kernel_low_precision(kernels, shape, dtype, fmt):
    x, w, b, dy = _inputs(shape, fmt, dtype, True, "cpu")
    out = _run(instance_norm_act, x, w, b, dy)
    _check_low(out, _reference64(x, w, b, dy))
    _check_layout(out, x)
    assert out["dw"].dtype == w.dtype


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", REAL_CPU, ids=str)
def test_kernel_real_shapes(kernels, shape, fmt):
    x, w, b, dy = _inputs(shape, fmt, torch.float32, False, "cpu")
    out = _run(instance_norm_act, x, w, b, dy)
    _check_fp32(out, _reference64(x, w, b, dy))
    _check_layout(out, x)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_largest_plane(kernels, dtype, fmt):
    x, w, b, dy = _inputs((1, 64, 128, 128), fmt, dtype, True, "cpu")
    out = _run(instance_norm_act, x, w, b, dy)
    ref = _reference64(x, w, b, dy)
    if dtype == torch.float32:
        _check_fp32(out, ref)
    else:
        _check_low(out, ref)


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "shape,pad", [((2, 6, 9, 7), (1, 2, 3, 1)), ((1, 3, 3, 3), 2), ((1, 16, 4, 5), (0, 3, 0, 1)), ((1, 2, 2, 2), 1)],
    ids=str,
)
def test_kernel_fused_reflect_pad(kernels, shape, pad, fmt):
    pads = (pad,) * 4 if isinstance(pad, int) else pad
    x, w, b, dy = _inputs(shape, fmt, torch.float32, True, "cpu", pad=pads)
    out = _run(lambda x, w, b: instance_norm_act_reflect_pad(x, pad, w, b, act="relu"), x, w, b, dy)
    ref = _reference64(x, w, b, dy, act="relu", pad=pad)
    _check_fp32(out, ref)
    assert out["y"].shape == ref["y"].shape
    _check_layout(out, x)


@needs_triton
@pytest.mark.parametrize("dtype", LOW)
def test_kernel_fused_reflect_pad_low_precision(kernels, dtype):
    x, w, b, dy = _inputs((2, 8, 10, 9), CL, dtype, True, "cpu", pad=(1, 1, 1, 1))
    out = _run(instance_norm_act, x, w, b, dy, pad=1)
    _check_low(out, _reference64(x, w, b, dy, pad=1))


def _split_plan(block_hw, block_c, HW, samples_per_launch):
    # block_s=2: the partials are merged two at a time, exercising the merge loop.
    split = -(-HW // block_hw)
    return INA._Plan(block_hw, block_c, split, 2, 4, samples_per_launch)


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pad", [0, (2, 1, 1, 2)], ids=["nopad", "pad"])
def test_kernel_split_path(kernels, fmt, pad):
    # Planes cut into 5 tiles, partials merged 2 at a time, one sample per launch sequence.
    shape = (3, 5, 9, 7)
    pads = INA.normalize_pad(pad)
    x, w, b, dy = _inputs(shape, fmt, torch.float32, True, "cpu", pad=pads)
    plan = _split_plan(16, 4 if fmt == CL else 1, 63, samples_per_launch=1)
    mean, rstd = INA._stats_ref(x, 1e-5)
    y, m, r = INA._fwd_triton(x, w, b, 1e-5, "leaky_relu", 0.2, pads, plan=plan)
    torch.testing.assert_close(m, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r, rstd, rtol=1e-5, atol=1e-6)
    ref = _reference64(x, w, b, dy, pad=pad)
    dx, dw, db = INA._bwd_triton(dy, x, w, b, m, r, "leaky_relu", 0.2, pads, plan=plan)
    _check_fp32({"y": y, "dx": dx, "dw": dw, "db": db}, ref)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)


@needs_triton
def test_kernel_large_mean_is_centred(kernels):
    # E[x^2] - E[x]^2 would lose every digit of the variance here in fp32.
    x = 1000.0 + torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    dy = torch.randn_like(x)
    out = _run(instance_norm_act, x, None, None, dy, act="none")
    ref = _reference64(x, None, None, dy, act="none")
    # 1e-3 is 16 fp32 ulps of the data's magnitude (1000), where the fp32 mean
    # is rounded; the uncentred formula's error here is O(1) in both.
    for k in ("y", "dx"):
        assert _err(out[k], ref[k]) < 1e-3, k


@needs_triton
def test_kernel_runtime_eps_and_slope(kernels):
    x, w, b, dy = _inputs((2, 4, 5, 6), NCHW, torch.float32, True, "cpu")
    for eps, slope in [(1e-3, 0.01), (0.1, 0.3)]:
        out = _run(instance_norm_act, x, w, b, dy, eps=eps, negative_slope=slope)
        _check_fp32(out, _reference64(x, w, b, dy, eps=eps, negative_slope=slope))


@needs_triton
def test_kernel_noncontiguous_input(kernels):
    base, _, _, _ = _inputs((2, 8, 12, 10), NCHW, torch.float32, False, "cpu")
    x = base[:, ::2, 1:, :]  # neither NCHW- nor channels_last-contiguous
    dy = torch.randn(x.shape)
    out = _run(instance_norm_act, x, None, None, dy)
    _check_fp32(out, _reference64(x, None, None, dy))


@needs_triton
@pytest.mark.parametrize("device", ["torch", "interpret"], indirect=True)
def test_opcheck(device):
    op = torch.ops.pix2pix_fast.instance_norm_act.default
    bop = torch.ops.pix2pix_fast.instance_norm_act_backward.default
    for fmt in (NCHW, CL):
        x, w, b, _ = _inputs((2, 3, 5, 6), fmt, torch.float32, True, "cpu")
        for args in [
            (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1e-5, "leaky_relu", 0.2, [0, 0, 0, 0]),
            (x.detach().requires_grad_(), None, None, 1e-5, "relu", 0.2, [1, 2, 1, 0]),
        ]:
            torch.library.opcheck(op, args)
            y, mean, rstd = op(*args)
            dy = torch.randn_like(y)
            detach = (lambda t: None if t is None else t.detach())
            torch.library.opcheck(
                bop, (dy, args[0].detach(), detach(args[1]), detach(args[2]), mean.detach(), rstd.detach(),
                      args[4], args[5], args[6]),
            )


# ---------------------------------------------------------------------------
# Arguments and module
# ---------------------------------------------------------------------------
def test_bad_arguments():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="act"):
        instance_norm_act(x, act="gelu")
    with pytest.raises(ValueError, match="4-D"):
        instance_norm_act(x[0])
    with pytest.raises(ValueError, match="smaller"):
        instance_norm_act(x, pad=4)
    with pytest.raises(ValueError, match="weight"):
        instance_norm_act(x, weight=torch.ones(4))
    with pytest.raises(ValueError, match="InstanceNormAct"):
        InstanceNormAct(4)(x)


@pytest.mark.parametrize("act", ["none", "relu", "leaky_relu"])
def test_module_is_drop_in(act):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 7)
    acts = {"none": torch.nn.Identity(), "relu": torch.nn.ReLU(), "leaky_relu": torch.nn.LeakyReLU(0.2)}
    ref = torch.nn.Sequential(torch.nn.InstanceNorm2d(8, affine=True), acts[act])
    mod = InstanceNormAct(8, affine=True, act=act)
    assert [n for n, _ in mod.named_parameters()] == ["weight", "bias"]
    with torch.no_grad():
        ref[0].weight.uniform_(0.5, 1.5)
        ref[0].bias.uniform_(-0.5, 0.5)
    mod.load_state_dict(ref[0].state_dict())
    torch.testing.assert_close(mod(x), ref(x), rtol=1e-5, atol=1e-5)
    assert list(InstanceNormAct(8).parameters()) == []


# ---------------------------------------------------------------------------
# GPU: compiled kernels at the models' shapes
# ---------------------------------------------------------------------------
# GPU matrices are kept to what covers every code path: each distinct
# (dtype, format, plan, ACT/HAS_*) combination is a Triton compilation.
@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N", [1, 8])
@pytest.mark.parametrize("cs", REAL_GPU, ids=lambda cs: f"{cs[0]}@{cs[1]}")
def test_gpu_real_shapes(cs, N, dtype, fmt):
    C, S = cs
    x, w, b, dy = _inputs((N, C, S, S), fmt, dtype, True, "cuda")
    out = _run(instance_norm_act, x, w, b, dy)
    ref = _reference64(x, w, b, dy)
    if dtype == torch.float32:
        _check_fp32(out, ref)
    else:
        _check_low(out, ref)
    _check_layout(out, x)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(8, 64, 128, 128), (8, 512, 2, 2), (1, 256, 32, 32)], ids=str)
def test_gpu_fp16(shape, fmt):
    x, w, b, dy = _inputs(shape, fmt, torch.float16, True, "cuda")
    out = _run(instance_norm_act, x, w, b, dy)
    _check_low(out, _reference64(x, w, b, dy))
    _check_layout(out, x)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", ODD_SHAPES + [(3, 7, 300, 301)], ids=str)
def test_gpu_odd_shapes(shape, fmt):
    x, w, b, dy = _inputs(shape, fmt, torch.float32, True, "cuda")
    out = _run(instance_norm_act, x, w, b, dy)
    _check_fp32(out, _reference64(x, w, b, dy))
    _check_layout(out, x)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("affine,act", CONFIGS)
def test_gpu_configs(affine, act, fmt):
    x, w, b, dy = _inputs((2, 64, 30, 30), fmt, torch.float32, affine, "cuda")
    out = _run(instance_norm_act, x, w, b, dy, act=act)
    _check_fp32(out, _reference64(x, w, b, dy, act=act))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 256, 64, 64), (8, 64, 256, 256), (2, 6, 9, 7)], ids=str)
def test_gpu_fused_reflect_pad(shape, dtype, fmt):
    x, w, b, dy = _inputs(shape, fmt, dtype, True, "cuda", pad=(1, 1, 1, 1))
    out = _run(instance_norm_act, x, w, b, dy, act="relu", pad=1)
    ref = _reference64(x, w, b, dy, act="relu", pad=1)
    if dtype == torch.float32:
        _check_fp32(out, ref)
    else:
        _check_low(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_gpu_split_path_chunks(fmt):
    # Batch 64 at 64@128 bf16 channels_last takes the split path in L2-sized chunks.
    x, w, b, dy = _inputs((64, 64, 128, 128), fmt, torch.bfloat16, False, "cuda")
    out = _run(instance_norm_act, x, w, b, dy)
    _check_low(out, _reference64(x, w, b, dy))


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    x, w, b, dy = _inputs((2, 64, 32, 32), CL, torch.bfloat16, True, "cuda")
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up compiles the kernels outside the capture
            y = instance_norm_act(x, w, b)
            torch.autograd.grad(y, [x, w, b], dy)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = instance_norm_act(x, w, b)
        dx, dw, db = torch.autograd.grad(y, [x, w, b], dy)
    with torch.no_grad():
        x.copy_(x * 0.5 + 1.0)
    graph.replay()
    torch.cuda.synchronize()
    ref = _reference64(x.detach(), w.detach(), b.detach(), dy)
    _check_low({"y": y, "dx": dx, "dw": dw, "db": db}, ref)


@pytest.mark.gpu
def test_gpu_opcheck():
    x, w, b, _ = _inputs((2, 16, 9, 10), CL, torch.bfloat16, True, "cuda")
    op = torch.ops.pix2pix_fast.instance_norm_act.default
    torch.library.opcheck(op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1e-5, "leaky_relu", 0.2, [1, 1, 1, 1]))


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("pad", [0, 3], ids=["nopad", "pad"])
@pytest.mark.parametrize("fmt", [NCHW, CL], ids=["nchw", "cl"])
def test_launch_grids_fit_cuda_limits_up_to_8192(kind, pad, fmt):
    # Pure planning, no tensors: every launch of the heuristic plan and of
    # the autotune candidates keeps each grid dimension within CUDA's limits
    # (a 2048 x 2048 channels_last plane used to need 65,536 programs on
    # grid dimension y).
    from pix2pix_fast.ops._common import grid_within_limits

    pads = INA.normalize_pad(pad)
    checked = 0
    for size in (1024, 1448, 2048, 4096, 8192):
        for C in (3, 16, 64, 256):
            if C * (size + 2 * pad) ** 2 >= 2**31:
                continue  # one sample over 2**31 elements is refused by design
            for N, dtype in ((1, torch.bfloat16), (4, torch.float32)):
                p = INA.NormProblem(kind, N, C, size, size, dtype, fmt == CL, pads, None, None, "relu")
                for sms in (108, 132):
                    for plan in INA.candidate_plans(p, sms):
                        for launch in INA.plan_launches(p, plan):
                            assert grid_within_limits(launch.grid), (size, C, N, dtype, plan, launch.grid)
                            checked += 1
    assert checked > 0
