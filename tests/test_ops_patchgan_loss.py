"""Fused PatchGAN loss: kernel (Triton interpreter on CPU, compiled on GPU) and
PyTorch path against the fp64 reference; targets, smoothing and flipping."""
import pytest
import torch

from lowp import assert_rule, kernel_rounder
from pix2pix_fast.nn import PatchGANLoss
from pix2pix_fast.ops._common import tl, triton, triton_available, use_triton
from pix2pix_fast.ops.patchgan_loss import (
    _patchgan_loss_backward_op,
    _patchgan_loss_op,
    patchgan_loss,
    patchgan_loss_ref,
    patchgan_targets_ref,
    randint4x_ref,
)

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

# backend -> how the op runs: Triton interpreter on CPU, PyTorch path on CPU,
# compiled Triton on a GPU.
BACKENDS = [
    pytest.param("interpret", marks=needs_triton),
    "torch",
    pytest.param("cuda", marks=pytest.mark.gpu),
]


# `device` (indirectly parametrised with BACKENDS) is the shared fixture in conftest.py.


def _seed(device, value=0x1234_5678_9ABC):
    return torch.tensor([value], dtype=torch.int64, device=device)


def _loss_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


CASES = {
    "plain": dict(),
    "label": dict(real_label=0.9),
    "smooth_range_flip": dict(smoothing=(0.7, 1.0), flip_prob=0.3),
    "smooth_fixed_flip": dict(smoothing=0.9, flip_prob=0.5),
    "generator": dict(for_discriminator=False, smoothing=(0.7, 1.0), flip_prob=0.5),
}


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("shape", [(1, 1, 30, 30), (3, 1, 7, 5), (2, 3, 5, 4)])
@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("real", [True, False])
def test_fp32_matches_fp64_reference(device, shape, mode, case, real):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device) * 3
    kw = dict(CASES[case], seed=_seed(device))
    loss, grad = _loss_and_grad(patchgan_loss, x, real, mode, **kw)
    ref_loss, ref_grad = _loss_and_grad(patchgan_loss_ref, x.double(), real, mode, **kw)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == torch.float32 and grad.shape == x.shape
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
def test_multi_program_reduction(device, mode):
    # More patches than one program reduces: partial sums + finalize kernel.
    torch.manual_seed(1)
    x = torch.randn(5, 1, 60, 60, device=device)
    kw = dict(smoothing=(0.8, 1.0), flip_prob=0.25, seed=_seed(device))
    loss, grad = _loss_and_grad(patchgan_loss, x, True, mode, **kw)
    ref_loss, ref_grad = _loss_and_grad(patchgan_loss_ref, x.double(), True, mode, **kw)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_batch64_patch_map(mode, dtype):
    torch.manual_seed(2)
    x = (torch.randn(64, 1, 30, 30, device="cuda") * 3).to(dtype)
    kw = dict(smoothing=(0.7, 1.0), flip_prob=0.3, seed=_seed("cuda"))
    if dtype != torch.float32:
        _check_low_precision_rule(x, mode, kw)
    loss, grad = _loss_and_grad(patchgan_loss, x, False, mode, **kw)
    ref_loss, ref_grad = _loss_and_grad(patchgan_loss_ref, x.double(), False, mode, **kw)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == dtype


def _check_low_precision_rule(x, mode, kw):
    """kernel error <= 2 x (the same computation's error in x's dtype) + small atol, both against fp64.

    That computation is emulated (tests/lowp.py): the loss is fp32 math on the
    low-precision logits, so its only rounding is fp32's; the gradient is the
    exact one stored once in x's dtype, rounded as the kernel stores it.
    """
    loss, grad = _loss_and_grad(patchgan_loss, x, True, mode, **kw)
    ref_loss, ref_grad = _loss_and_grad(patchgan_loss_ref, x.double(), True, mode, **kw)
    assert loss.dtype == torch.float32 and grad.dtype == x.dtype
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    emulated = kernel_rounder(x.dtype, x.device.type, triton_path=use_triton(x))(ref_grad)
    assert_rule("grad", grad, emulated, ref_grad, 1e-3 * ref_grad.abs().max().item())


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(device, mode, dtype):
    torch.manual_seed(3)
    x = (torch.randn(3, 1, 17, 13, device=device) * 3).to(dtype)
    _check_low_precision_rule(x, mode, dict(smoothing=(0.7, 1.0), flip_prob=0.3, seed=_seed(device)))


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vanilla_large_logits_stable(device, dtype):
    x = torch.tensor([100.0, -100.0, 100.0, -100.0, 30.0, -30.0, 0.0, 1e-3], device=device).reshape(2, 1, 2, 2)
    x = x.to(dtype)
    for real in (True, False):
        loss, grad = _loss_and_grad(patchgan_loss, x, real, "vanilla")
        ref_loss, ref_grad = _loss_and_grad(patchgan_loss_ref, x.double(), real, "vanilla")
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=0)
        # atol: gradients below 1e-12 (exp(-30) and beyond) underflow differently.
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=1e-12)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_vanilla_tiny_loss_relative_accuracy(device):
    # Confident, correct logits: each patch's loss is log1p(exp(-20)) ~ 2e-9;
    # a log(1 + e) formulation would return 0 here.
    x = torch.full((2, 1, 4, 4), 20.0, device=device)
    loss, _ = _loss_and_grad(patchgan_loss, x, True, "vanilla")
    ref, _ = _loss_and_grad(patchgan_loss_ref, x.double(), True, "vanilla")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)


@triton.jit
def _philox_words_kernel(
    seed_ptr,  # (1,) int64
    offs_ptr,  # (n,) int32 offsets
    words_ptr,  # (4, n) int32: the four words of tl.randint4x, bit for bit
    u_ptr,  # (n,) fp32: tl.rand
    n,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    seed = tl.load(seed_ptr)
    offs = tl.load(offs_ptr + i, mask=mask, other=0)
    w0, w1, w2, w3 = tl.randint4x(seed, offs)
    tl.store(words_ptr + i, w0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(words_ptr + n + i, w1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(words_ptr + 2 * n + i, w2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(words_ptr + 3 * n + i, w3.to(tl.int32, bitcast=True), mask=mask)
    tl.store(u_ptr + i, tl.rand(seed, offs), mask=mask)


@pytest.mark.parametrize("device", [b for b in BACKENDS if b != "torch"], indirect=True)
@pytest.mark.parametrize("seed_value", [0, 987654321, 2**62 - 12345])
def test_reference_philox_is_tritons(device, seed_value):
    # The reference's port of tl.randint4x / tl.rand gives Triton's words bit for bit.
    offs = torch.cat([torch.arange(3000), torch.tensor([2**31 - 1, 2**31 - 2, 2**20 + 7])]).to(torch.int32)
    offs = offs.to(device)
    seed = _seed(device, seed_value)
    words = torch.empty((4, offs.numel()), dtype=torch.int32, device=device)
    u = torch.empty(offs.numel(), dtype=torch.float32, device=device)
    _philox_words_kernel[(triton.cdiv(offs.numel(), 1024),)](seed, offs, words, u, offs.numel(), BLOCK=1024)
    ref = torch.stack([torch.where(w >= 2**31, w - 2**32, w) for w in randint4x_ref(seed, offs)]).to(torch.int32)
    assert torch.equal(words, ref)
    ref_u = patchgan_targets_ref((offs.numel(),), True, smoothing=(0.0, 1.0), seed=seed, device=device)[0]
    assert torch.equal(u[:3000], ref_u[:3000])
    assert 0.0 <= u.min().item() and u.max().item() < 1.0


def _targets_from_lsgan_grad(shape, device, real, **kw):
    """The kernel's targets, read back from the lsgan gradient at x = 0: d/dx (x - t)^2 = -2t."""
    x = torch.zeros(shape, device=device)
    _, grad = _loss_and_grad(patchgan_loss, x, real, "lsgan", **kw)
    return -grad.double() * x.numel() / 2


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_smoothing_targets_statistics_and_exact_draws(device):
    shape, lo, hi = (4, 1, 30, 30), 0.7, 1.2
    seed = _seed(device, 987654321)
    t = _targets_from_lsgan_grad(shape, device, True, smoothing=(lo, hi), seed=seed)
    ref_t, _ = patchgan_targets_ref(shape, True, smoothing=(lo, hi), seed=seed, device=device)
    # Same draws as the reference (up to the rounding of the read-back).
    torch.testing.assert_close(t, ref_t.double(), rtol=0, atol=2e-6)
    assert t.min() >= lo - 1e-6 and t.max() <= hi + 1e-6
    # 3600 uniform draws: the mean is within 5 standard errors of (lo + hi) / 2.
    sd = (hi - lo) / 12**0.5 / t.numel() ** 0.5
    assert abs(t.mean().item() - (lo + hi) / 2) < 5 * sd
    assert t.std().item() > 0.8 * (hi - lo) / 12**0.5
    # Fake patches are never smoothed (one-sided).
    t_fake = _targets_from_lsgan_grad(shape, device, False, smoothing=(lo, hi), seed=seed)
    assert (t_fake == 0).all()


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_flip_frequency_and_per_sample(device):
    shape, p = (1000, 1, 2, 3), 0.3
    seed = _seed(device, 42)
    for real in (True, False):
        t = _targets_from_lsgan_grad(shape, device, real, flip_prob=p, seed=seed)
        per_sample = t.reshape(shape[0], -1)
        # The whole sample flips together; targets are exactly 0 or 1.
        assert (per_sample == per_sample[:, :1]).all()
        torch.testing.assert_close(per_sample[:, 0], per_sample[:, 0].round(), rtol=0, atol=1e-6)
        flipped = (per_sample[:, 0].round() != float(real)).double().mean().item()
        assert abs(flipped - p) < 5 * (p * (1 - p) / shape[0]) ** 0.5
        _, ref_real = patchgan_targets_ref(shape, real, flip_prob=p, seed=seed, device=device)
        assert torch.equal(per_sample[:, 0].round().bool(), ref_real)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_generator_never_smooths_or_flips(device):
    t = _targets_from_lsgan_grad(
        (8, 1, 3, 3), device, True, smoothing=(0.5, 0.6), flip_prob=1.0, for_discriminator=False
    )
    torch.testing.assert_close(t, torch.ones_like(t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_fresh_draws_each_call_reproducible_from_generator(device):
    kw = dict(smoothing=(0.0, 1.0), flip_prob=0.5)
    torch.manual_seed(5)
    a = _targets_from_lsgan_grad((4, 1, 5, 5), device, True, **kw)
    b = _targets_from_lsgan_grad((4, 1, 5, 5), device, True, **kw)
    torch.manual_seed(5)
    a2 = _targets_from_lsgan_grad((4, 1, 5, 5), device, True, **kw)
    assert not torch.equal(a, b)
    assert torch.equal(a, a2)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_opcheck(device):
    x = torch.randn(3, 1, 7, 5, device=device, requires_grad=True)
    seed = _seed(device)
    for args in [
        (x, seed, "vanilla", True, True, 0.7, 1.0, 0.3, True),
        (x, None, "lsgan", False, True, 1.0, 1.0, 0.0, True),
        (x, seed, "hinge", True, True, 1.0, 1.0, 0.5, True),
        (x.detach(), None, "hinge", True, False, 1.0, 1.0, 0.0, False),
    ]:
        torch.library.opcheck(_patchgan_loss_op, args)
    g = torch.randn(3, 1, 7, 5, device=device)
    torch.library.opcheck(_patchgan_loss_backward_op, (g, torch.tensor(2.0, device=device)))


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_no_grad_call_and_module(device):
    x = torch.randn(2, 1, 6, 6, device=device)
    crit = PatchGANLoss("lsgan", smoothing=(0.8, 1.0), flip_prob=0.2)
    seed = _seed(device)
    with torch.no_grad():
        loss = crit(x, True, seed=seed)
    ref = patchgan_loss_ref(x.double(), True, "lsgan", smoothing=(0.8, 1.0), flip_prob=0.2, seed=seed)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-7)


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="mode"):
        PatchGANLoss("wgan")
    with pytest.raises(ValueError, match="flip_prob"):
        PatchGANLoss(flip_prob=1.5)
    with pytest.raises(ValueError, match="smoothing"):
        PatchGANLoss(smoothing=(1.0, 0.5))
    with pytest.raises(ValueError, match="logits"):
        patchgan_loss(torch.zeros(0), True)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_compile_fullgraph_matches_eager(device):
    crit = PatchGANLoss("vanilla", smoothing=(0.7, 1.0), flip_prob=0.3)
    head = torch.nn.Conv2d(3, 1, 3, padding=1).to(device)

    def step(x, seed):
        logits = head(x)
        return 0.5 * (crit(logits, True, seed=seed) + crit(logits * 0.5, False, seed=seed + 1)) + crit(
            logits, True, for_discriminator=False
        )

    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x = torch.randn(2, 3, 8, 8, device=device)
    seed = _seed(device)
    eager = step(x, seed)
    grads = torch.autograd.grad(eager, list(head.parameters()))
    out = compiled(x, seed)
    cgrads = torch.autograd.grad(out, list(head.parameters()))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(cgrads, grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graph_capture_fresh_noise_per_replay():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 30, 30, device="cuda", requires_grad=True)
    crit = PatchGANLoss("lsgan", smoothing=(0.0, 1.0), flip_prob=0.5)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up (compiles the kernels)
            x.grad = None
            crit(x, True).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        loss = crit(x, True)
        loss.backward()
    losses, grads = [], []
    for _ in range(3):
        graph.replay()
        losses.append(loss.clone())
        grads.append(x.grad.clone())
    torch.cuda.synchronize()
    assert not torch.equal(losses[0], losses[1]) and not torch.equal(losses[1], losses[2])
    assert not torch.equal(grads[0], grads[1])
    # Without randomness the replay equals eager.
    plain = PatchGANLoss("vanilla")
    g2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g2):
        out = plain(x.detach(), True)
    g2.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, plain(x.detach(), True), rtol=0, atol=0)


def test_reference_path_copies_no_scalar_from_the_host(monkeypatch):
    """The PyTorch reference runs inside the fast step's CUDA graph where Triton is
    missing: its smoothing and flipping scalars must be made on the device, not
    copied there by torch.tensor(value, device=...) (illegal during capture)."""
    def host_copy(*args, **kwargs):
        raise AssertionError("torch.tensor(...) in the loss path: a host-to-device copy on CUDA")

    logits = torch.randn(3, 1, 6, 5, requires_grad=True)
    monkeypatch.setattr(torch, "tensor", host_copy)
    loss = patchgan_loss(logits, True, mode="lsgan", smoothing=(0.7, 0.9), flip_prob=0.3)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
