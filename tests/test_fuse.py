"""fuse() on GANs that were not written for this package.

The models below are written the way the reference implementation
(pytorch-CycleGAN-and-pix2pix, models/networks.py) and pix2pixHD build them:
nested nn.Sequential lists with their key names (``model.10.conv_block.2``),
in-place ReLUs, reflection padding as separate modules, conv biases in front
of instance norms.  Each fused model must compute the same outputs and
gradients as the original (fp32: 1e-5 relative to the tensor's largest
magnitude, 1e-6 absolute), keep its state_dict, and say what it did.
"""
import copy
import functools

import pytest
import torch
from torch import nn

from pix2pix_fast.interop.reference_nets import (
    NLayerDiscriminator,
    PixelDiscriminator,
    ResnetGenerator,
    get_norm_layer,
)
from pix2pix_fast.nn import GANLoss, InstanceNormAct, ReflectPad2d, explain_fuse, fuse
from pix2pix_fast.ops._common import triton_available

BACKENDS = ["torch", pytest.param("interpret", marks=pytest.mark.skipif(
    not triton_available(), reason="triton is not installed"))]



# --------------------------------------------------------------------------
# Models in the reference implementation's layout
# --------------------------------------------------------------------------
class HDResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, activation):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm_layer(dim), activation,
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), norm_layer(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class GlobalGenerator(nn.Module):
    """pix2pixHD's global generator: 3 downsamplings, affine instance norms, ReLU."""

    def __init__(self, input_nc=3, output_nc=3, ngf=4, n_down=3, n_blocks=2):
        super().__init__()
        norm_layer = functools.partial(nn.InstanceNorm2d, affine=True)
        act = nn.ReLU(True)  # one module object at every place, as pix2pixHD does
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), norm_layer(ngf), act]
        for i in range(n_down):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm_layer(2 * c), act]
        layers += [HDResnetBlock(ngf * 2**n_down, norm_layer, act) for _ in range(n_blocks)]
        for i in range(n_down):
            c = ngf * 2 ** (n_down - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       norm_layer(c // 2), act]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class NormUsedTwice(nn.Module):
    """A norm whose output feeds both the activation and a skip: must not be folded."""

    def __init__(self, c=5):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.act = nn.LeakyReLU(0.2)
        self.pad = nn.ReflectionPad2d((1, 2, 0, 1))

    def forward(self, x):
        h = self.norm(self.conv(x))
        return self.pad(self.act(h) + 0.5 * h)


class GANLossRef(nn.Module):
    """The reference implementation's GANLoss (it overrides __call__, as there)."""

    def __init__(self, gan_mode, target_real_label=1.0, target_fake_label=0.0):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.gan_mode = gan_mode
        self.loss = {"lsgan": nn.MSELoss(), "vanilla": nn.BCEWithLogitsLoss()}.get(gan_mode)

    def __call__(self, prediction, target_is_real):
        if self.gan_mode == "wgangp":
            return -prediction.mean() if target_is_real else prediction.mean()
        target = (self.real_label if target_is_real else self.fake_label).expand_as(prediction)
        return self.loss(prediction, target)


GANLossRef.__name__ = "GANLoss"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine norm parameters (their defaults are 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, terms: bool = False):
    """Output, input gradient, every parameter gradient and (``terms``), per
    conv bias, the sum over (N, H, W) of |dL/d(conv output)|: the magnitude of
    the terms its gradient adds up."""
    outs = {}
    convs = [(n, m) for n, m in model.named_modules() if terms and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o)) for name, m in convs]
    try:
        x = x.detach().clone().requires_grad_()
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    # A compiled module's parameters carry the prefix "_orig_mod.".
    names, params = zip(*((n.removeprefix("_orig_mod."), p) for n, p in model.named_parameters()))
    conv_names = list(outs)
    grads = torch.autograd.grad(y, [x, *params, *outs.values()], dy)
    result = {"output": y, "grad_input": grads[0], **{f"grad {n}": g for n, g in zip(names, grads[1:])}}
    sums = {f"grad {n}.bias": g.abs().sum(dim=(0, 2, 3)) for n, g in zip(conv_names, grads[1 + len(params):])}
    return result, sums
def _close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    # Relative to the tensor's largest magnitude; the small atol covers gradients
    # that are exactly 0 in theory (conv biases in front of a norm), where both
    # sides hold rounding noise.
    assert got.shape == want.shape, what
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= rtol * scale + atol, f"{what}: max error {err:.3g} at scale {scale:.3g}"


def _assert_same_function(original: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    """Outputs and every gradient of ``fused`` match ``original`` (fp32).

    The fp32 rule (1e-5 relative to the largest magnitude) wherever PyTorch's
    own fp32 result meets it against an fp64 run of the original.  Where it
    does not, the tensor must be the bias gradient of a conv feeding an
    instance norm (exactly 0 in theory, rounding noise in practice), and the
    same rule is applied to the sum it is: per channel, error against fp64 at
    most 1e-5 of the summed terms' magnitude.
    """
    want, _ = _outputs_and_grads(original, x)
    got, _ = _outputs_and_grads(fused, x)
    ref, terms = _outputs_and_grads(copy.deepcopy(original).double(), x.double(), terms=True)
    assert got.keys() == want.keys() == ref.keys()
    for k in want:
        torch_err = (want[k].double() - ref[k]).abs().max().item()
        if torch_err <= 1e-5 * ref[k].abs().max().item():
            _close(got[k], want[k], k)
            continue
        assert k in terms, f"{k}: PyTorch's fp32 result itself is off by {torch_err:.3g} against fp64"
        bound = 1e-5 * terms[k]
        for name, t in (("fused", got[k]), ("original", want[k])):
            err = (t.double() - ref[k]).abs()
            assert bool((err <= bound).all()), f"{k} ({name}): error {err.max():.3g}, bound {bound.min():.3g}"


def _assert_same_state(original: nn.Module, fused: nn.Module) -> None:
    a, b = original.state_dict(), fused.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Checkpoints move both ways.
    fused.load_state_dict(a, strict=True)
    original.load_state_dict(b, strict=True)


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


INSTANCE = get_norm_layer("instance")


def _cycle(**kw):
    torch.manual_seed(0)
    return ResnetGenerator(3, 3, norm_layer=INSTANCE, **kw)


# (name, builder, input shape, expected counts as a function of the architecture)
def _cases():
    nb = 9
    yield ("cyclegan_resnet_9blocks", lambda: _cycle(ngf=4, n_blocks=nb), (2, 3, 20, 28), dict(
        # stem + 2 downs + 2 ups carry norm+ReLU; each block: norm+ReLU+pad, and a lone norm
        InstanceNormAct=5 + 2 * nb, ReflectPad2d=1 + nb, folded_acts=5 + nb, folded_pads=nb + 1, skipped=0))
    nd = 3
    yield ("nlayer_discriminator", lambda: NLayerDiscriminator(6, 4, n_layers=nd, norm_layer=INSTANCE), (2, 6, 37, 45), dict(
        InstanceNormAct=nd, ReflectPad2d=0, folded_acts=nd, folded_pads=0, skipped=0))
    yield ("pixel_discriminator", lambda: PixelDiscriminator(6, 4, norm_layer=INSTANCE), (2, 6, 13, 11), dict(
        InstanceNormAct=1, ReflectPad2d=0, folded_acts=1, folded_pads=0, skipped=0))
    nb_hd, n_down = 2, 3
    # One ReLU object at every place: folding it at one place changes only that place.
    yield ("pix2pixhd_global", lambda: _randomise(GlobalGenerator(n_down=n_down, n_blocks=nb_hd)), (1, 3, 24, 40), dict(
        InstanceNormAct=1 + 2 * n_down + 2 * nb_hd, ReflectPad2d=1 + nb_hd,
        folded_acts=1 + 2 * n_down + nb_hd, folded_pads=nb_hd + 1, skipped=0))
    yield ("norm_used_twice", lambda: _randomise(NormUsedTwice()), (2, 3, 9, 7), dict(
        InstanceNormAct=1, ReflectPad2d=1, folded_acts=0, folded_pads=0, skipped=0))


CASES = {name: (build, shape, counts) for name, build, shape, counts in _cases()}


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------
@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("name", list(CASES))
def test_fused_model_matches_original(name, device):
    build, shape, _ = CASES[name]
    torch.manual_seed(0)
    original = build()
    fused = fuse(original)
    assert _count(fused, InstanceNormAct) > 0
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    _assert_same_function(original, fused, x)
    _assert_same_state(original, fused)


@pytest.mark.parametrize("name", list(CASES))
def test_fuse_counts_and_report(name):
    build, _, counts = CASES[name]
    original = build()
    report = explain_fuse(original)
    got = report.counts()
    assert {k: got[k] for k in counts} == counts
    assert got["GANLoss"] == 0
    fused = fuse(original)
    # The report describes what fuse did, and the original is untouched.
    assert _count(fused, InstanceNormAct) == counts["InstanceNormAct"]
    assert _count(fused, ReflectPad2d) == counts["ReflectPad2d"]
    assert _count(fused, nn.InstanceNorm2d) == 0
    assert _count(original, InstanceNormAct) == 0
    assert len(str(report).splitlines()) == 1 + len(report)


def test_cyclegan_keys_and_layout():
    original = _cycle(ngf=2, n_blocks=2)
    fused = fuse(original)
    block = fused.model[10].conv_block
    assert isinstance(block[0], ReflectPad2d)
    assert isinstance(block[2], InstanceNormAct) and block[2].act == "relu" and block[2].pad == (1, 1, 1, 1)
    assert isinstance(block[3], nn.Identity) and isinstance(block[4], nn.Identity)
    assert isinstance(block[6], InstanceNormAct) and block[6].act == "none"
    last = fused.model[len(fused.model) - 5]  # the last up norm, folded with ReLU and ReflectionPad2d(3)
    assert isinstance(last, InstanceNormAct) and last.pad == (3, 3, 3, 3)
    assert "model.10.conv_block.1.weight" in fused.state_dict()


def test_norm_used_twice_is_not_folded():
    original = _randomise(NormUsedTwice())
    fused = fuse(original)
    assert fused.norm.act == "none" and fused.norm.pad == (0, 0, 0, 0)
    assert type(fused.act) is nn.LeakyReLU
    entry = next(e for e in explain_fuse(original) if e.path == "norm")
    assert "NormUsedTwice.forward is not nn.Sequential's" in entry.reason


def test_leaves_alone_what_it_cannot_prove():
    torch.manual_seed(0)
    running = nn.InstanceNorm2d(4, track_running_stats=True)
    hooked = nn.InstanceNorm2d(4)
    hooked.register_forward_hook(lambda m, i, o: None)
    hooked_act = nn.ReLU()
    hooked_act.register_forward_pre_hook(lambda m, i: None)

    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), running, nn.ReLU(),
        nn.Conv2d(4, 4, 3), hooked, nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.InstanceNorm2d(4), hooked_act,
        nn.BatchNorm2d(4), Custom(),
    )
    report = explain_fuse(model)
    skipped = {e.path: e.reason for e in report.skipped}
    assert "running statistics" in skipped["1"]
    assert "forward hooks" in skipped["4"]
    assert "not covered" in skipped["9"]
    assert "unknown module" in skipped["10"]
    folded = next(e for e in report.fused if e.path == "7")
    assert folded.folded == () and "forward pre hooks" in folded.reason
    fused = fuse(model)
    assert fused[1] is not running and type(fused[1]) is nn.InstanceNorm2d
    assert type(fused[4]) is nn.InstanceNorm2d and type(fused[7]) is InstanceNormAct
    x = torch.randn(2, 3, 12, 11)
    for m in (model, fused):
        m.eval()  # the running statistics are what eval mode uses
    _close(fused(x), model(x), "output")


def test_shared_norm_is_left_alone():
    norm = nn.InstanceNorm2d(3, affine=True)
    model = nn.Sequential(norm, nn.ReLU(), nn.Conv2d(3, 3, 1), norm)
    report = explain_fuse(model)
    assert [e.action for e in report] == ["skipped", "skipped"]
    assert all("2 places" in e.reason for e in report)


def test_inplace_keeps_parameters_and_copy_leaves_model_untouched():
    model = _randomise(GlobalGenerator(n_down=1, n_blocks=1))
    before = {n: p for n, p in model.named_parameters()}
    copy = fuse(model)
    assert _count(model, InstanceNormAct) == 0
    assert all(p is not before[n] for n, p in copy.named_parameters())
    same = fuse(model, inplace=True)
    assert same is model and _count(model, InstanceNormAct) > 0
    assert all(p is before[n] for n, p in model.named_parameters())


def test_verbose_prints_report(capsys):
    fuse(PixelDiscriminator(6, 4, norm_layer=INSTANCE), verbose=True)
    out = capsys.readouterr().out
    assert "net.3: InstanceNorm2d + LeakyReLU -> InstanceNormAct(act='leaky_relu')" in out


def test_single_modules():
    assert isinstance(fuse(nn.InstanceNorm2d(3)), InstanceNormAct)
    assert isinstance(fuse(nn.ReflectionPad2d(2)), ReflectPad2d)
    assert isinstance(fuse(GANLossRef("lsgan")), GANLoss)
    with pytest.raises(TypeError):
        fuse(lambda x: x)


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
@pytest.mark.parametrize("gan_mode", ["vanilla", "lsgan"])
def test_gan_loss_drop_in(gan_mode, device):
    criterion = GANLossRef(gan_mode, target_real_label=0.9)
    holder = nn.Module()
    holder.criterionGAN = criterion
    fused = fuse(holder).criterionGAN
    assert isinstance(fused, GANLoss) and fused.fused
    assert list(fused.state_dict()) == list(criterion.state_dict()) == ["real_label", "fake_label"]
    logits = torch.randn(3, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    for target_is_real in (True, False):
        grads = []
        for loss_fn in (criterion, fused):
            x = logits.clone().requires_grad_()
            loss = loss_fn(x, target_is_real)
            grads.append((loss.detach(), torch.autograd.grad(loss, x)[0]))
        _close(grads[1][0], grads[0][0], "loss")
        _close(grads[1][1], grads[0][1], "grad")


def test_gan_loss_passes_through_what_is_not_fused():
    for criterion, reason in ((GANLossRef("wgangp"), "no fused loss"), (GANLossRef("lsgan", 1.0, 0.1), "fake label")):
        holder = nn.Sequential(criterion)
        assert fuse(holder, inplace=True)[0] is criterion
        assert reason in explain_fuse(holder).skipped[0].reason
    ours = GANLoss("wgangp")
    x = torch.randn(2, 1, 4, 4)
    _close(ours(x, True), -x.mean(), "wgangp real")
    lsgan = GANLoss("lsgan", 1.0, 0.1)
    assert not lsgan.fused
    _close(lsgan(x, False), ((x - 0.1) ** 2).mean(), "lsgan fake label 0.1")


@pytest.mark.parametrize("device", BACKENDS, indirect=True)
def test_compiled_fused_model_matches_original(device):
    torch.manual_seed(0)
    original = _cycle(ngf=2, n_blocks=1)
    compiled = torch.compile(fuse(original), fullgraph=True)
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(3))
    _assert_same_function(original, compiled, x)
