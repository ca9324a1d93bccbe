"""conv_norm_act (implicit-GEMM conv + fused instance-norm statistics + norm/act
prologue) and norm_act_apply against plain PyTorch, forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F

from lowp import assert_rule, kernel_rounder, stored, torch_rounder
from pix2pix_fast.nn import ConvNormAct
from pix2pix_fast.ops._common import act_ref, triton_available, use_triton
from pix2pix_fast.ops.conv_norm_act import (
    InputNormAct,
    PendingNormAct,
    _conv_norm_act_op,
    _norm_act_apply_op,
    conv_norm_act,
    conv_norm_act_ref,
    norm_act_apply,
)

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

BACKENDS = [
    pytest.param("interpret", marks=needs_triton),
    "torch",
    pytest.param("cuda", marks=pytest.mark.gpu),
]


# `device` (indirectly parametrised with BACKENDS) is the shared fixture in conftest.py.


def _params(c_in, c_out, k, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) / (c_in * k * k) ** 0.5
    b = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1 if bias else None
    w = w.to(device).contiguous(memory_format=torch.channels_last)
    return w, (b.to(device) if bias else None)


def _leaves(tensors, dtype, channels_last):
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        fmt = torch.channels_last if t.dim() == 4 and channels_last else torch.contiguous_format
        out.append(t.detach().to(dtype).contiguous(memory_format=fmt).requires_grad_())
    return out


def _run(fn, tensors, dtype, grad_out, channels_last=True):
    # The references run NCHW (channels_last=False): on CPU (torch 2.13),
    # F.instance_norm's backward of a channels_last input under an NCHW
    # gradient is wrong.
    leaves = _leaves(tensors, dtype, channels_last)
    out = fn(*leaves)
    (out.double() * grad_out).sum().backward()
    return out.detach(), [None if t is None else t.grad for t in leaves]


def _assert_fp32_close(out, grads, ref_out, ref_grads, rtol=1e-5):
    torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=rtol * ref_out.abs().max().item())
    # atol scaled to the largest gradient: a conv bias followed by instance
    # norm has an exactly-zero gradient, which only an atol can judge.
    scale = max(r.abs().max().item() for r in ref_grads if r is not None)
    for g, r in zip(grads, ref_grads):
        if r is not None:
            torch.testing.assert_close(g.double(), r, rtol=rtol, atol=rtol * scale)


SHAPES = [
    # (N, C_in, H, W), C_out, kernel, stride, padding
    ((1, 8, 10, 10), 16, 4, 2, 1),
    ((1, 8, 10, 10), 16, 4, 1, 1),
    ((2, 3, 9, 11), 16, 4, 2, 1),
    ((1, 5, 7, 6), 12, 3, 1, 1),
]


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", ["leaky_relu", "relu", "none"])
def test_fp32_single_layer(device, shape, act):
    (n, c_in, h, w), c_out, k, s, p = shape
    x = torch.randn(n, c_in, h, w, dtype=torch.float64, device=device)
    wt, b = _params(c_in, c_out, k, device)

    def fused(x, wt, b):
        return conv_norm_act(x, wt, b, s, p, act, 0.1)

    def ref(x, wt, b):
        return conv_norm_act_ref(x, wt, b, s, p, act, 0.1)

    go = torch.randn(ref(x, wt, b).shape, dtype=torch.float64, device=device)
    out, grads = _run(fused, [x, wt, b], torch.float32, go)
    ref_out, ref_grads = _run(ref, [x, wt, b], torch.float64, go, channels_last=False)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    _assert_fp32_close(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("in_act", ["leaky_relu", "none"])
def test_fp32_chain_through_prologue(device, in_act):
    # conv -> IN -> act -> conv -> IN -> act, the first norm applied in the
    # second conv's prologue: output and gradients of x, both weights and biases.
    x = torch.randn(2, 6, 12, 10, dtype=torch.float64, device=device)
    w1, b1 = _params(6, 16, 4, device, seed=1)
    w2, b2 = _params(16, 8, 4, device, seed=2)

    def fused(x, w1, b1, w2, b2):
        pending = conv_norm_act(x, w1, b1, 2, 1, in_act, 0.2, defer=True)
        assert isinstance(pending, PendingNormAct)
        return conv_norm_act(pending, w2, b2, 1, 1, "relu")

    def ref(x, w1, b1, w2, b2):
        return conv_norm_act_ref(conv_norm_act_ref(x, w1, b1, 2, 1, in_act, 0.2), w2, b2, 1, 1, "relu")

    tensors = [x, w1, b1, w2, b2]
    go = torch.randn(ref(*tensors).shape, dtype=torch.float64, device=device)
    out, grads = _run(fused, tensors, torch.float32, go)
    ref_out, ref_grads = _run(ref, tensors, torch.float64, go, channels_last=False)
    _assert_fp32_close(out, grads, ref_out, ref_grads)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_fp32_no_norm_and_activation_prologue(device):
    # The U-Net down block: LeakyReLU (prologue only) -> conv (no norm, ReLU epilogue).
    x = torch.randn(1, 8, 10, 10, dtype=torch.float64, device=device)
    wt, b = _params(8, 16, 4, device)

    def fused(x, wt, b):
        return conv_norm_act(x, wt, b, 2, 1, "relu", in_norm=InputNormAct(None, None, "leaky_relu", 0.2), norm=False)

    def ref(x, wt, b):
        return F.relu(F.conv2d(F.leaky_relu(x, 0.2), wt, b, 2, 1))

    go = torch.randn(ref(x, wt, b).shape, dtype=torch.float64, device=device)
    out, grads = _run(fused, [x, wt, b], torch.float32, go)
    ref_out, ref_grads = _run(ref, [x, wt, b], torch.float64, go, channels_last=False)
    _assert_fp32_close(out, grads, ref_out, ref_grads)


def _emulated_chain(tensors, go, dtype, stride, act, device):
    """The fused chain's math in fp64, rounded to dtype wherever it stores a tensor (see tests/lowp.py).

    Forward, the kernels' stores (their rounding probed on this device): conv
    1's raw output, the prologue's output that conv 2's dot reads, conv 2's
    raw output, norm_act_apply's output. Backward, PyTorch's stores (to
    nearest): the incoming gradient, the gradient through each
    normalisation, each conv's folded output gradient, the conv backward's
    input gradient and the leaves' gradients. Statistics stay fp32 in the
    kernels, exact here.
    """
    k = kernel_rounder(dtype, device, triton_path=use_triton(go.float()))
    t = torch_rounder(dtype)
    x, w1, b1, w2, b2 = [t(v.double().cpu()).requires_grad_() for v in tensors]

    def norm_act(y):
        var, mean = torch.var_mean(y, dim=(2, 3), correction=0, keepdim=True)
        return act_ref((stored(y, bwd=t) - mean) * torch.rsqrt(var + 1e-5), act, 0.2)

    y1 = stored(F.conv2d(x, w1, b1, stride, 1), k, t)
    y2 = stored(F.conv2d(stored(norm_act(y1), k, t), w2, b2, 1, 1), k, t)
    out = stored(norm_act(y2), k, t)
    (out * go.cpu()).sum().backward()
    return out.detach(), [t(v.grad) for v in (x, w1, b1, w2, b2)]


def _low_precision_chain(device, dtype, x, c_mid, c_out, stride, act, seed):
    """Output and every gradient of a conv -> IN -> act -> conv -> IN -> act chain in dtype:
    kernel error <= 2 x (the same computation's error in dtype, emulated) + small atol, vs fp64."""
    w1, b1 = _params(x.shape[1], c_mid, 4, device, seed=seed)
    w2, b2 = _params(c_mid, c_out, 3, device, seed=seed + 1)

    def fused(x, w1, b1, w2, b2):
        return conv_norm_act(conv_norm_act(x, w1, b1, stride, 1, act, defer=True), w2, b2, 1, 1, act)

    def ref(x, w1, b1, w2, b2):
        return conv_norm_act_ref(conv_norm_act_ref(x, w1, b1, stride, 1, act), w2, b2, 1, 1, act)

    tensors = [x, w1, b1, w2, b2]
    go = torch.randn(ref(*tensors).shape, dtype=torch.float64, device=device)
    out, grads = _run(fused, tensors, dtype, go)
    ref_out, ref_grads = _run(ref, tensors, torch.float64, go, channels_last=False)
    emu_out, emu_grads = _emulated_chain(tensors, go, dtype, stride, act, device)
    assert out.dtype == dtype
    # atol relative to the output's / the largest gradient's size (see _assert_fp32_close).
    assert_rule("output", out.cpu(), emu_out, ref_out.cpu(), 1e-3 * ref_out.abs().max().item())
    if act != "none":
        # An activation's kink turns a rounding-sized difference of its input
        # into an O(1) difference of the gradient, at random elements in both
        # implementations: judge the (continuous) forward only.
        return
    g_scale = max(r.abs().max().item() for r in ref_grads)
    for name, g, e, r in zip(["x", "w1", "b1", "w2", "b2"], grads, emu_grads, ref_grads):
        assert_rule(f"grad {name}", g.cpu(), e, r.cpu(), 1e-3 * g_scale)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ["none", "leaky_relu"])
def test_low_precision_chain(device, dtype, act):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 10, 10, dtype=torch.float64, device=device)
    _low_precision_chain(device, dtype, x, 16, 16, 2, act, seed=3)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_statistics_centred_under_large_offset(device):
    # A conv output with mean ~1000 and std ~1: E[y^2] - E[y]^2 in fp32 would
    # lose ~6% of the variance; the per-tile centred sums + Chan merge do not.
    x = torch.randn(2, 8, 34, 34, device=device)
    wt, _ = _params(8, 16, 4, device)
    wt = wt.float()
    b = torch.full((16,), 1000.0, device=device)
    p = conv_norm_act(x, wt, b, 2, 1, defer=True)
    y64 = F.conv2d(x.double(), wt.double(), b.double(), 2, 1)
    var, mean = torch.var_mean(y64, dim=(2, 3), correction=0)
    # y itself is stored in fp32 (ulp(1000) ~ 6e-5), so the statistics of the
    # stored values are the reference's up to that rounding.
    torch.testing.assert_close(p.mean.double(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(p.rstd.double(), torch.rsqrt(var + 1e-5), rtol=1e-4, atol=0)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_norm_act_apply_and_materialize(device):
    y = torch.randn(2, 5, 7, 3, device=device, dtype=torch.float64)
    mean = torch.randn(2, 5, device=device, dtype=torch.float64)
    rstd = torch.rand(2, 5, device=device, dtype=torch.float64) + 0.5

    def fused(y, mean, rstd):
        return norm_act_apply(y, mean, rstd, "leaky_relu", 0.1)

    def ref(y, mean, rstd):
        return F.leaky_relu((y - mean[:, :, None, None]) * rstd[:, :, None, None], 0.1)

    go = torch.randn(2, 5, 7, 3, dtype=torch.float64, device=device)
    out, grads = _run(fused, [y, mean, rstd], torch.float32, go)
    ref_out, ref_grads = _run(ref, [y, mean, rstd], torch.float64, go, channels_last=False)
    _assert_fp32_close(out, grads, ref_out, ref_grads)
    pending = PendingNormAct(y.float(), mean.float(), rstd.float(), "leaky_relu", 0.1)
    torch.testing.assert_close(pending.materialize(), out)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_opcheck(device):
    x = torch.randn(1, 8, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    wt, b = _params(8, 16, 4, device)
    wt, b = wt.float().requires_grad_(), b.float().requires_grad_()
    mean = torch.randn(1, 8, device=device, requires_grad=True)
    rstd = (torch.rand(1, 8, device=device) + 0.5).requires_grad_()
    xr = x.requires_grad_()
    for args in [
        (xr, wt, b, None, None, 2, 1, "none", 0.2, True, "none", 0.2, 1e-5),
        (xr, wt, None, mean, rstd, 1, 1, "leaky_relu", 0.2, True, "none", 0.2, 1e-5),
        (xr, wt, b, None, None, 2, 1, "relu", 0.0, False, "leaky_relu", 0.2, 1e-5),
    ]:
        torch.library.opcheck(_conv_norm_act_op, args)
    y = torch.randn(1, 8, 5, 5, device=device, requires_grad=True)
    torch.library.opcheck(_norm_act_apply_op, (y, mean, rstd, "relu", 0.2))


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ConvNormAct(4, 8, defer_output=True)
        self.b = ConvNormAct(8, 16, stride=1, act="relu")
        self.head = ConvNormAct(16, 1, kernel_size=3, stride=1, norm="none", act="none")

    def forward(self, x):
        return self.head(self.b(self.a(x)))


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_module_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    net = _TinyNet().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 10, 10, device=device).contiguous(memory_format=torch.channels_last)
    eager = net(x)
    grads = torch.autograd.grad(eager.square().sum(), list(net.parameters()))
    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    out = compiled(x)
    cgrads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(cgrads, grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_module_loads_conv2d_state_and_matches_reference():
    conv = torch.nn.Conv2d(3, 8, 4, 2, 1)
    layer = ConvNormAct(3, 8)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(layer(x), F.leaky_relu(F.instance_norm(conv(x)), 0.2), rtol=1e-5, atol=1e-5)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        ConvNormAct(3, 8, norm="batch")
    with pytest.raises(ValueError, match="act"):
        ConvNormAct(3, 8, act="gelu")
    with pytest.raises(ValueError, match="defer_output"):
        ConvNormAct(3, 8, norm="none", defer_output=True)
    with pytest.raises(ValueError, match="weight"):
        conv_norm_act(torch.randn(1, 3, 8, 8), torch.randn(8, 4, 4, 4))
    with pytest.raises(ValueError, match="dtype"):
        conv_norm_act(torch.randn(1, 3, 8, 8), torch.randn(8, 3, 4, 4).double())


# Larger interpreter runs: excluded from the default run.
@pytest.mark.slow
@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_fp32_odd_shape_slow(device):
    x = torch.randn(1, 3, 37, 53, dtype=torch.float64, device=device)
    w1, b1 = _params(3, 32, 4, device, seed=5)
    w2, b2 = _params(32, 64, 4, device, seed=6)

    def fused(x, w1, b1, w2, b2):
        return conv_norm_act(conv_norm_act(x, w1, b1, 2, 1, defer=True), w2, b2, 2, 1)

    def ref(x, w1, b1, w2, b2):
        return conv_norm_act_ref(conv_norm_act_ref(x, w1, b1, 2, 1), w2, b2, 2, 1)

    tensors = [x, w1, b1, w2, b2]
    go = torch.randn(ref(*tensors).shape, dtype=torch.float64, device=device)
    out, grads = _run(fused, tensors, torch.float32, go)
    ref_out, ref_grads = _run(ref, tensors, torch.float64, go, channels_last=False)
    _assert_fp32_close(out, grads, ref_out, ref_grads)


# Real layer shapes of U-Net-256 (encoder convs) and the 70x70 PatchGAN, on a GPU.
REAL_LAYERS = [
    # name, C_in, C_out, H(=W) of the input, stride
    ("unet_e2", 64, 128, 128, 2),
    ("unet_e3", 128, 256, 64, 2),
    ("unet_e4", 256, 512, 32, 2),
    ("unet_e5", 512, 512, 16, 2),
    ("unet_e7", 512, 512, 4, 2),
    ("patchgan_l1", 6, 64, 256, 2),
    ("patchgan_l4", 256, 512, 32, 1),
]


@pytest.mark.gpu
@pytest.mark.parametrize("layer", REAL_LAYERS, ids=lambda l: l[0])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("act", ["none", "leaky_relu"])
def test_gpu_real_layers(layer, batch, dtype, act, monkeypatch):
    _, c_in, c_out, hw, s = layer
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the fp32 baseline must be fp32
    torch.manual_seed(0)
    x = torch.randn(batch, c_in, hw, hw, dtype=torch.float64, device="cuda")
    _low_precision_chain("cuda", dtype, x, c_out, c_out, s, act, seed=7)
