"""The fused layers under torch.compile(fullgraph=True) match eager.

On CPU inductor calls the custom ops as opaque kernels: the compiled graph
dispatches at run time, so the same compiled module runs the PyTorch
reference or (PIX2PIX_FAST_FORCE_TRITON=1, the ``kernels`` fixture) the
Triton kernels under Triton's interpreter.
"""

import pytest
import torch

from pix2pix_fast.nn import InstanceNormAct, ReflectPad2d
from pix2pix_fast.ops._common import FORCE_TRITON_ENV


class _Block(torch.nn.Module):
    """A ResNet-generator-like stem and block built from the fused layers."""

    def __init__(self, c_in=3, c=8):
        super().__init__()
        # No conv biases: instance norm removes them, their exact gradient is 0
        # and the computed one is rounding noise that differs once compiled.
        self.pad = ReflectPad2d(1)
        self.conv1 = torch.nn.Conv2d(c_in, c, 3, bias=False)
        self.norm1 = InstanceNormAct(c, affine=True, act="relu", pad=1)  # fused padding for conv2
        self.conv2 = torch.nn.Conv2d(c, c, 3, bias=False)
        self.norm2 = InstanceNormAct(c)  # leaky_relu 0.2, no affine
        self.conv3 = torch.nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False)
        self.norm3 = InstanceNormAct(c, affine=True, act="none")

    def forward(self, x):
        h = self.norm2(self.conv2(self.norm1(self.conv1(self.pad(x)))))
        return self.norm3(self.conv3(h)) + h[:, :, ::2, ::2]


def _grads(model, x):
    x = x.detach().clone().requires_grad_()
    y = model(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(y, [x] + params, dy)
    return [y] + list(grads)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    eager = _Block()
    with torch.no_grad():
        for m in eager.modules():
            if isinstance(m, InstanceNormAct) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return eager, torch.compile(eager, fullgraph=True)


def _close(a, b, rtol):
    # Relative to the tensor's largest magnitude: the convolutions' reductions
    # may run in another order once compiled.
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= rtol * scale + 1e-6, f"max error {err:.3g} at scale {scale:.3g}"


def _compare(models, x):
    eager, compiled = models
    for a, b in zip(_grads(compiled, x), _grads(eager, x)):
        _close(a, b, 1e-5)


def test_compiled_matches_eager_reference_path(models, monkeypatch):
    monkeypatch.delenv(FORCE_TRITON_ENV, raising=False)
    _compare(models, torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(0)))


def test_compiled_matches_eager_kernels(models, kernels):
    # `kernels` (conftest.py): the Triton kernels on CPU tensors, under the interpreter.
    _compare(models, torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(0)))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_gpu_compiled_matches_eager(mode, fmt, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    eager = _Block(c=64).cuda().to(memory_format=fmt)
    compiled = torch.compile(eager, fullgraph=True, mode=mode)
    x = torch.randn(4, 3, 64, 64, device="cuda").contiguous(memory_format=fmt)
    for _ in range(3):  # reduce-overhead records CUDA graphs on the later calls
        out = _grads(compiled, x)
        out = [t.clone() for t in out]
    ref = _grads(eager, x)
    for a, b in zip(out, ref):
        _close(a, b, 1e-5)
