"""Tests of the reference models (pix2pix_fast.models).

The models are checked against a straightforward transcription of the
reference recursive structure (junyanz/pytorch-CycleGAN-and-pix2pix,
models/networks.py) written below, loaded with the same weights by parameter
order. The transcription adds the two options the reference lacks the way
the brief defines them (reflect padding via ReflectionPad2d + unpadded conv;
resize upsampling via Upsample + pad + 3x3 conv), and follows this package's
one deliberate deviation: convs keep their bias with norm "none" (the
reference drops it whenever the norm is not InstanceNorm).
"""
from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.models import (
    REFERENCE,
    PatchGANDiscriminator,
    ResnetGenerator,
    UNetGenerator,
    build_discriminator,
    build_generator,
    init_weights,
    parse_netG,
)
from pix2pix_fast.interop import reference_nets as ref
from pix2pix_fast.models.fast import FastBlocks

# Tiny models: a second OpenMP thread only adds spin-waits on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = ("instance", "batch", "none")
PADDINGS = ("zero", "reflect")
UPSAMPLES = ("transposed", "nearest", "bilinear")


# --------------------------------------------------------------------------
# The reference structure, transcribed.
# --------------------------------------------------------------------------

def reference(cls, *args, norm="batch", **kw):
    """A network of the reference implementation's layout (interop.reference_nets) with a norm named
    as here and this package's bias rule (biases kept without a norm)."""
    return cls(*args, norm_layer=ref.get_norm_layer(norm), use_bias=norm != "batch", **kw)


RefUnetGenerator = functools.partial(reference, ref.UnetGenerator)
RefResnetGenerator = functools.partial(reference, ref.ResnetGenerator)
RefNLayerDiscriminator = functools.partial(reference, ref.NLayerDiscriminator)
RefPixelDiscriminator = functools.partial(reference, ref.PixelDiscriminator)


# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------

def n_params(model):
    return sum(p.numel() for p in model.parameters())


def copy_by_order(src, dst):
    """Copy src's parameters and buffers into dst, matched by order and shape."""
    sp, dp = list(src.parameters()), list(dst.parameters())
    sb, db = list(src.buffers()), list(dst.buffers())
    assert len(sp) == len(dp) and len(sb) == len(db)
    with torch.no_grad():
        for a, b in itertools.chain(zip(sp, dp), zip(sb, db)):
            assert a.shape == b.shape
            b.copy_(a)


def random_init(model, seed):
    # Non-trivial weights everywhere (BatchNorm affine too), so every
    # parameter influences the output.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def assert_grads_close(grads, grads_ref, rtol, atol):
    # atol relative to the largest gradient: the graphs sum contributions in
    # different orders, and some true values are exactly zero (the bias of a
    # conv feeding an instance norm), where only rounding noise remains.
    assert len(grads) == len(grads_ref)
    scale = max(b.abs().max().item() for b in grads_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)


def run(model, x, w, seed, train):
    """Output and parameter gradients of sum(model(x) * w)."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    y = model(x)
    (y * w).sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


def assert_same_function(ref, model, x, seed=0):
    """model == ref in eval and train mode (same dropout seed), outputs and grads.

    In float64: this checks that the two structures compute the same
    function, so rounding should not blur it.
    """
    ref, model, x = ref.double(), model.double(), x.double()
    random_init(ref, 1234)
    copy_by_order(ref, model)
    w = torch.randn_like(ref.eval()(x))
    for train in (False, True):
        y_ref, g_ref = run(ref, x, w, seed, train)
        y, g = run(model, x, w, seed, train)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        assert_grads_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.fixture
def instance_norm_act():
    """The fused layer the fast models use."""
    from pix2pix_fast.nn import InstanceNormAct

    return InstanceNormAct


def tiny_cfg(**kw):
    base = dict(netG="unet_8", ngf=2, ndf=2, n_layers_D=1, input_nc=3, output_nc=3)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------
# Parameter counts (meta device: no memory, no compute).
# --------------------------------------------------------------------------

def test_param_count_unet256_matches_reference():
    with torch.device("meta"):
        ours = UNetGenerator(3, 3, num_downs=8, ngf=64, norm="instance")
        ref = RefUnetGenerator(3, 3, 8, ngf=64, norm="instance", use_dropout=True)
    assert n_params(ours) == n_params(ref) == 54_409_603


def test_param_count_unet256_batch_norm():
    # Derived by hand from the reference: with batch norm, every conv loses
    # its bias except the outermost up conv, and each norm adds 2*C.
    down = [64, 128, 256, 512, 512, 512, 512, 512]  # conv out channels, outermost first
    up = [512, 512, 512, 512, 256, 128, 64, 3]  # innermost first
    normed = down[1:-1] + up[:-1]  # no norm after the outer/innermost down and the outermost up
    expected = 54_409_603 - sum(down) - sum(up) + 3 + 2 * sum(normed)
    assert expected == 54_413_955  # the "54.414 M" pix2pix prints for its default (batch) model
    with torch.device("meta"):
        ours = UNetGenerator(3, 3, num_downs=8, ngf=64, norm="batch")
        ref = RefUnetGenerator(3, 3, 8, ngf=64, norm="batch", use_dropout=True)
    assert n_params(ours) == n_params(ref) == expected


def test_param_count_patchgan70():
    with torch.device("meta"):
        inst = PatchGANDiscriminator(6, ndf=64, n_layers=3, norm="instance")
        batch = PatchGANDiscriminator(6, ndf=64, n_layers=3, norm="batch")
        ref_batch = RefNLayerDiscriminator(6, ndf=64, n_layers=3, norm="batch")
    assert n_params(inst) == 2_767_809
    # Batch norm: the three middle convs (128, 256, 512 out) lose their bias, each norm adds 2*C.
    assert n_params(batch) == n_params(ref_batch) == 2_767_809 - 896 + 2 * 896


def test_param_count_resnet9():
    with torch.device("meta"):
        ours = ResnetGenerator(3, 3, ngf=64, n_blocks=9, norm="instance")
        ref = RefResnetGenerator(3, 3, ngf=64, norm="instance", n_blocks=9)
    assert n_params(ours) == n_params(ref) == 11_378_179  # CycleGAN's "11.378 M"


# --------------------------------------------------------------------------
# Same function as the reference structure.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("upsample", UPSAMPLES)
def test_unet_matches_reference(norm, padding, upsample):
    # num_downs 7 has two dropout levels, so the order of dropout draws matters.
    kw = dict(norm=norm, padding=padding, upsample=upsample)
    ref = RefUnetGenerator(3, 2, 7, ngf=2, use_dropout=True, **kw)
    ours = UNetGenerator(3, 2, num_downs=7, ngf=2, dropout=True, **kw)
    x = torch.randn(2, 3, 128, 128)
    assert_same_function(ref, ours, x)


@pytest.mark.parametrize("num_downs", [5, 6, 8])
def test_unet_matches_reference_depths(num_downs):
    ref = RefUnetGenerator(1, 1, num_downs, ngf=2, norm="instance", use_dropout=True)
    ours = UNetGenerator(1, 1, num_downs=num_downs, ngf=2)
    s = 2**num_downs
    assert_same_function(ref, ours, torch.randn(1, 1, s, s))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("upsample", UPSAMPLES)
def test_resnet_matches_reference(norm, padding, upsample):
    ref = RefResnetGenerator(3, 3, ngf=2, norm=norm, use_dropout=True, n_blocks=2,
                             padding_type=padding, upsample=upsample)
    ours = ResnetGenerator(3, 3, ngf=2, n_blocks=2, norm=norm, padding=padding,
                           upsample=upsample, dropout=True)
    assert_same_function(ref, ours, torch.randn(2, 3, 16, 20))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_patchgan_matches_reference(norm, padding, n_layers):
    ref = RefNLayerDiscriminator(6, ndf=2, n_layers=n_layers, norm=norm, padding=padding)
    ours = PatchGANDiscriminator(6, ndf=2, n_layers=n_layers, norm=norm, padding=padding)
    assert_same_function(ref, ours, torch.randn(2, 6, 32, 40))


@pytest.mark.parametrize("norm", NORMS)
def test_pixelgan_matches_reference(norm):
    ref = RefPixelDiscriminator(4, ndf=3, norm=norm)
    ours = PatchGANDiscriminator(4, ndf=3, n_layers=0, norm=norm)
    assert_same_function(ref, ours, torch.randn(2, 4, 5, 7))


# --------------------------------------------------------------------------
# Shapes.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "netG,size",
    [("unet_64", 64), ("unet_128", 128), ("unet_256", 256), ("resnet_6blocks", 64), ("resnet_9blocks", 64)],
)
@pytest.mark.parametrize("nc", [(1, 1), (3, 3), (4, 2)])
def test_generator_output_shape(netG, size, nc):
    g = build_generator(tiny_cfg(netG=netG, input_nc=nc[0], output_nc=nc[1])).eval()
    with torch.no_grad():
        y = g(torch.randn(1, nc[0], size, 2 * size))
    assert y.shape == (1, nc[1], size, 2 * size)
    assert y.abs().max() <= 1  # tanh


def test_parse_netG():
    assert parse_netG("unet_256") == ("unet", 8)
    assert parse_netG("unet_128") == ("unet", 7)
    assert parse_netG("unet_64") == ("unet", 6)
    assert parse_netG("resnet_6blocks") == ("resnet", 6)
    assert parse_netG("resnet_9blocks") == ("resnet", 9)
    assert build_generator(tiny_cfg(netG="unet_256")).multiple == 256
    assert len(build_generator(tiny_cfg(netG="resnet_9blocks")).blocks) == 9


@pytest.mark.parametrize(
    "n_layers,size,patch",
    [(0, 64, 64), (1, 64, 30), (2, 64, 14), (3, 256, 30), (3, 64, 6), (5, 256, 6)],
)
def test_discriminator_patch_map(n_layers, size, patch):
    d = build_discriminator(tiny_cfg(n_layers_D=n_layers, input_nc=1, output_nc=3)).eval()
    with torch.no_grad():
        y = d(torch.randn(2, 4, size, size))
    assert y.shape == (2, 1, patch, patch)


def test_check_input_size():
    g = UNetGenerator(num_downs=6, ngf=2)
    assert g.multiple == 64
    g.check_input_size(64, 128)
    with pytest.raises(ValueError, match="input size 64x96 is not a multiple of 64"):
        g.check_input_size(64, 96)
    r = ResnetGenerator(ngf=2, n_blocks=1)
    assert r.multiple == 4
    r.check_input_size(12, 8)
    with pytest.raises(ValueError, match="input size 10x8 is not a multiple of 4"):
        r.check_input_size(10, 8)


# --------------------------------------------------------------------------
# Every option combination builds and trains a step.
# --------------------------------------------------------------------------

def forward_backward(model, x):
    model.train()
    y = model(x)
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return y


@pytest.mark.parametrize("netG", ["unet_8", "resnet_6blocks", "resnet_9blocks"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("upsample", UPSAMPLES)
@pytest.mark.parametrize("dropout", [True, False])
def test_generator_all_options(netG, norm, padding, upsample, dropout):
    cfg = tiny_cfg(netG=netG, norm=norm, padding=padding, upsample=upsample, dropout=dropout,
                   input_nc=2, output_nc=1)
    y = forward_backward(build_generator(cfg), torch.randn(2, 2, 8, 16))
    assert y.shape == (2, 1, 8, 16)


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_discriminator_all_options(n_layers, norm, padding):
    cfg = tiny_cfg(n_layers_D=n_layers, norm=norm, padding=padding, input_nc=1, output_nc=2)
    y = forward_backward(build_discriminator(cfg), torch.randn(2, 3, 32, 32))
    assert y.shape[:2] == (2, 1)


def test_unet_small_depths():
    # num_downs below 5 (narrower than the reference allows) also work.
    for n in (2, 3, 4):
        g = UNetGenerator(3, 3, num_downs=n, ngf=2)
        assert forward_backward(g, torch.randn(2, 3, 2**n, 2 ** (n + 1))).shape == (2, 3, 2**n, 2 ** (n + 1))


def test_unet_dropout_placement():
    def n_dropout(g):
        return sum(isinstance(m, nn.Dropout) for m in g.modules())

    with torch.device("meta"):
        assert n_dropout(UNetGenerator(num_downs=8)) == 3  # the paper's 3 noisy decoder layers
        assert n_dropout(UNetGenerator(num_downs=7)) == 2
        assert n_dropout(UNetGenerator(num_downs=5)) == 0
        assert n_dropout(UNetGenerator(num_downs=8, dropout=False)) == 0
        assert n_dropout(ResnetGenerator(n_blocks=6, dropout=True)) == 6


# --------------------------------------------------------------------------
# Fused path.
# --------------------------------------------------------------------------

FUSED_CASES = [
    ("G", dict(netG="unet_16")),
    ("G", dict(netG="resnet_6blocks")),
    ("D", dict(n_layers_D=3)),
    ("D", dict(n_layers_D=0)),
]


def build(which, cfg, fused):
    return (build_generator if which == "G" else build_discriminator)(cfg, fused=fused)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("which,kw", FUSED_CASES)
def test_fused_same_keys_and_init(instance_norm_act, which, kw, norm):
    cfg = tiny_cfg(norm=norm, **kw)
    torch.manual_seed(3)
    plain = build(which, cfg, False)
    torch.manual_seed(3)
    fused = build(which, cfg, True)
    sd, sd_fused = plain.state_dict(), fused.state_dict()
    assert list(sd) == list(sd_fused)
    for k in sd:
        torch.testing.assert_close(sd[k], sd_fused[k], rtol=0, atol=0)
    n_fused = sum(isinstance(m, instance_norm_act) for m in fused.modules())
    assert (n_fused > 0) == (norm == "instance")
    assert not any(isinstance(m, instance_norm_act) for m in plain.modules())


@pytest.mark.parametrize("which,kw", FUSED_CASES)
def test_fused_matches_plain(instance_norm_act, which, kw):
    cfg = tiny_cfg(**kw)
    plain = build(which, cfg, False)
    fused = build(which, cfg, True)
    random_init(plain, 7)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6 if which == "D" else 3, 32, 32)
    w = torch.randn_like(plain.eval()(x))
    for train in (False, True):
        y_ref, g_ref = run(plain, x, w, 0, train)
        y, g = run(fused, x, w, 0, train)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        assert_grads_close(g, g_ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Padding.
# --------------------------------------------------------------------------

def test_unet_reflect_padding_used():
    zero = UNetGenerator(3, 3, num_downs=4, ngf=4, padding="zero", dropout=False).eval()
    refl = UNetGenerator(3, 3, num_downs=4, ngf=4, padding="reflect", dropout=False).eval()
    refl.load_state_dict(zero.state_dict())  # same keys, same weights
    x = torch.randn(1, 3, 32, 32)
    # The first encoder conv is a reflect-padded 4x4 stride-2 conv + LeakyReLU.
    c = zero.down[0].conv
    expected = F.leaky_relu(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), c.weight, c.bias, stride=2), 0.2)
    with torch.no_grad():
        torch.testing.assert_close(refl.down[0](x), expected)
        yz, yr = zero(x), refl(x)
    # Borders differ between zero and reflect padding.
    assert (yz[..., 0, :] - yr[..., 0, :]).abs().max() > 1e-4
    assert (yz[..., :, -1] - yr[..., :, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("which,kw", [("G", dict(netG="resnet_6blocks")), ("D", dict(n_layers_D=2))])
def test_reflect_padding_changes_output(which, kw):
    zero = build(which, tiny_cfg(padding="zero", dropout=False, **kw), False).eval()
    refl = build(which, tiny_cfg(padding="reflect", dropout=False, **kw), False).eval()
    random_init(zero, 5)
    refl.load_state_dict(zero.state_dict())
    x = torch.randn(1, 6 if which == "D" else 3, 32, 32)
    with torch.no_grad():
        yz, yr = zero(x), refl(x)
    assert (yz[..., 0, :] - yr[..., 0, :]).abs().max() > 1e-4


# --------------------------------------------------------------------------
# Initialisation.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["G", "D"])
def test_seeded_init_is_deterministic(which):
    cfg = tiny_cfg(netG="unet_16", norm="batch")
    torch.manual_seed(11)
    a = build(which, cfg, False).state_dict()
    torch.manual_seed(11)
    b = build(which, cfg, False).state_dict()
    torch.manual_seed(12)
    c = build(which, cfg, False).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_init_normal_statistics():
    torch.manual_seed(0)
    g = build_generator(TrainConfig(netG="unet_32", ngf=16, norm="batch", init_type="normal", init_gain=0.02))
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all(m.bias is None or not m.bias.any() for m in convs)
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    bw = torch.cat([m.weight for m in bns])
    assert abs(bw.mean().item() - 1.0) < 0.005 and abs(bw.std().item() - 0.02) < 0.005
    assert not torch.cat([m.bias for m in bns]).any()


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_types(init_type):
    conv = nn.Conv2d(4, 8, 3)
    init_weights(nn.Sequential(conv), init_type, gain=0.5)
    assert not conv.bias.any()
    w = conv.weight.detach().flatten(1)  # (8, 36)
    if init_type == "orthogonal":
        torch.testing.assert_close(w @ w.T, 0.25 * torch.eye(8))
    elif init_type == "kaiming":  # std sqrt(2 / fan_in), gain unused (as the reference)
        assert 0.5 * (2 / 36) ** 0.5 < w.std().item() < 1.5 * (2 / 36) ** 0.5
    elif init_type == "xavier":  # std gain * sqrt(2 / (fan_in + fan_out))
        expected = 0.5 * (2 / (36 + 72)) ** 0.5
        assert 0.7 * expected < w.std().item() < 1.3 * expected


# --------------------------------------------------------------------------
# Bad options.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make,option",
    [
        (lambda: UNetGenerator(norm="layer"), "norm"),
        (lambda: UNetGenerator(padding="replicate"), "padding"),
        (lambda: UNetGenerator(upsample="pixelshuffle"), "upsample"),
        (lambda: UNetGenerator(num_downs=1), "num_downs"),
        (lambda: UNetGenerator(ngf=0), "ngf"),
        (lambda: UNetGenerator(in_channels=0), "in_channels"),
        (lambda: UNetGenerator(out_channels=0), "out_channels"),
        (lambda: ResnetGenerator(norm="group"), "norm"),
        (lambda: ResnetGenerator(padding="circular"), "padding"),
        (lambda: ResnetGenerator(upsample="cubic"), "upsample"),
        (lambda: ResnetGenerator(n_blocks=-1), "n_blocks"),
        (lambda: PatchGANDiscriminator(n_layers=-1), "n_layers"),
        (lambda: PatchGANDiscriminator(norm="spectral"), "norm"),
        (lambda: PatchGANDiscriminator(padding="same"), "padding"),
        (lambda: PatchGANDiscriminator(ndf=0), "ndf"),
        (lambda: init_weights(nn.Conv2d(1, 1, 1), "uniform"), "init_type"),
        (lambda: build_generator(tiny_cfg(netG="vgg16")), "netG"),
        (lambda: build_generator(tiny_cfg(netG="unet_100")), "netG"),
        (lambda: build_generator(tiny_cfg(netG="unet_2")), "netG"),
        (lambda: build_generator(tiny_cfg(norm="batchnorm")), "norm"),
        (lambda: build_generator(tiny_cfg(init_type="he")), "init_type"),
        (lambda: build_discriminator(tiny_cfg(n_layers_D=-2)), "n_layers"),
    ],
)
def test_bad_options_raise(make, option):
    with torch.device("meta"), pytest.raises(ValueError, match=option):
        make()


# --------------------------------------------------------------------------
# torch.compile.
# --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_compiled_matches_eager(instance_norm_act, fused):
    # Minutes on CPU (C++ codegen), hence slow; the fast backend compiles these.
    blocks = FastBlocks() if fused else REFERENCE
    g = UNetGenerator(3, 3, num_downs=4, ngf=4, padding="reflect", blocks=blocks).eval()
    d = PatchGANDiscriminator(6, ndf=4, n_layers=2, blocks=blocks).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = g(x)
        torch.testing.assert_close(torch.compile(g, fullgraph=True)(x), y, rtol=1e-5, atol=1e-5)
        xy = torch.cat([x, y], 1)
        torch.testing.assert_close(torch.compile(d, fullgraph=True)(xy), d(xy), rtol=1e-5, atol=1e-5)
