"""The fast models compile whole, and the fast step never reads a value back to the host.

A CUDA graph cannot hold a host read: `.item()`, `.tolist()`, `bool(t)`,
`.cpu()` and friends synchronise, and during capture they fail. On CPU the
fast step (the same code the graph captures, without the graph) runs under
`NoHostReads`, which fails on every such read after the warm-up steps.
"""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tiny import tiny_config
from pix2pix_fast.train.fast import WARMUP_STEPS, FastStep
from pix2pix_fast.train.build import build_models

# Tensor methods that hand a value (or a host copy) to Python.
_HOST_METHODS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}
# Ops whose result needs a value from the device (a scalar, or a shape that depends on data).
_HOST_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
}


class HostRead(AssertionError):
    pass


class _NoHostMethods(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _HOST_METHODS:
            raise HostRead(f"host read: Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class _NoHostOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HOST_OPS:
            raise HostRead(f"host read: {func}")
        return func(*args, **(kwargs or {}))


class NoHostReads:
    """Fails on any host read of a tensor value while active."""

    def __enter__(self):
        self.modes = [_NoHostMethods(), _NoHostOps()]
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)
        return False


def tiny(**kw):
    return tiny_config(**{"batch_size": 2, "n_layers_D": 3, **kw})


@pytest.mark.parametrize("read", [
    lambda t: t.item(), lambda t: t.tolist(), lambda t: bool(t), lambda t: t.cpu(),
    lambda t: float(t), lambda t: torch.equal(t, t), lambda t: t.nonzero(),
])
def test_the_detector_catches_host_reads(read):
    t = torch.ones(())
    with pytest.raises(HostRead):
        with NoHostReads():
            read(t)


@pytest.mark.parametrize("options", [
    dict(),
    dict(gan_mode="lsgan", real_label_min=0.8, real_label=0.95, label_flip_prob=0.1, instance_noise=0.1),
    dict(gan_mode="hinge", norm="batch"),
    dict(gan_mode="none"),
    dict(netG="resnet_6blocks", padding="reflect", fused_pad=True, pad_channels=True),
    dict(conv_impl="triton", pad_channels=True),
])
def test_fast_step_never_reads_the_device_after_warmup(options):
    cfg = tiny(**options)
    G, D, opt_G, opt_D = build_models(cfg, "fast", torch.device("cpu"))
    step = FastStep(cfg, G, D, opt_G, opt_D, None, use_graph=False, compile=False)
    g = torch.Generator().manual_seed(0)
    A, B = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    noise = 0.05 if cfg.instance_noise > 0 else 0.0
    for _ in range(WARMUP_STEPS):
        step(A, B, noise)
    assert step.settled
    before = [p.detach().clone() for p in G.parameters()]
    with NoHostReads():
        losses = step(A, B, noise)
        step.set_lr(1e-4)  # the trainer's per-epoch LR change: a device fill, no read
    assert torch.isfinite(losses).all()
    assert any(not torch.equal(p, q) for p, q in zip(G.parameters(), before))  # the step really trained


def _outputs_and_grads(model, x):
    x = x.detach().clone().requires_grad_()
    y = model(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    grads = torch.autograd.grad(y, [x] + list(model.parameters()), dy)
    return y.detach(), grads


@pytest.mark.parametrize("net", ["G", "D"])
def test_fast_models_compile_whole_with_inductor(net):
    """torch.compile(fullgraph=True) of the fast G and D (fused layers and custom ops
    in, no graph break) on the CPU inductor backend matches eager, forward and backward.

    Judged against an fp64 run (STYLE.md): the compiled model's error may be at
    most twice eager fp32's, plus a small atol. Conv biases feeding instance
    norm have a true gradient of 0, which both fp32 runs give as rounding noise.
    """
    import copy

    cfg = tiny(dropout=False)
    G, D, _, _ = build_models(cfg, "fast", torch.device("cpu"))
    model = G if net == "G" else D
    channels = 3 if net == "G" else 6
    x = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    compiled = torch.compile(model, fullgraph=True, backend="inductor", dynamic=False)
    y_c, grads_c = _outputs_and_grads(compiled, x)
    y_e, grads_e = _outputs_and_grads(model, x)
    y_64, grads_64 = _outputs_and_grads(copy.deepcopy(model).double(), x.double())
    for got, eager, exact in zip([y_c, *grads_c], [y_e, *grads_e], [y_64, *grads_64]):
        err_c = (got.double() - exact).abs().max().item()
        err_e = (eager.double() - exact).abs().max().item()
        assert err_c <= 2 * err_e + 1e-6 * max(1.0, exact.abs().max().item()), (err_c, err_e)


def test_reference_step_the_benchmark_captures_never_reads_the_device():
    """`pix2pix-fast bench` captures the eager reference step whole in a CUDA graph
    (its `graph_ref` rows): that step, with a capturable Adam, reads nothing back
    either. (Fused Adam here: a capturable foreach Adam needs a CUDA device.)"""
    from pix2pix_fast.models import build_discriminator, build_generator
    from pix2pix_fast.train.eager import EagerStep

    cfg = tiny(real_label_min=0.8, label_flip_prob=0.1)
    G, D = build_generator(cfg), build_discriminator(cfg)
    opts = [torch.optim.Adam(m.parameters(), lr=torch.tensor(cfg.lr), betas=(cfg.beta1, cfg.beta2),
                             capturable=True, fused=True) for m in (G, D)]
    step = EagerStep(cfg, G, D, *opts, None)
    g = torch.Generator().manual_seed(0)
    A, B = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    step(A, B)  # Adam creates its state
    with NoHostReads():
        losses = step(A, B, 0.05)
    assert torch.isfinite(losses).all()
