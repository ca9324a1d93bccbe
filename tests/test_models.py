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
from pix2pix_fast.models.fast import FastBlocks

# Tiny models: a second OpenMP thread only adds spin-waits on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = ("instance", "batch", "none")
PADDINGS = ("zero", "reflect")
UPSAMPLES = ("transposed", "nearest", "bilinear")


# --------------------------------------------------------------------------
# The reference structure, transcribed.
# --------------------------------------------------------------------------

def ref_norm_layer(norm_type):
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda c: nn.Identity()


def ref_use_bias(norm_type):
    return norm_type != "batch"


def ref_down_conv(cin, cout, kernel_size, stride, padding, bias):
    if padding == "reflect":
        return [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, kernel_size, stride, 0, bias=bias)]
    return [nn.Conv2d(cin, cout, kernel_size, stride, 1, bias=bias)]


def ref_up_conv(cin, cout, upsample, padding, bias, transposed_kwargs):
    if upsample == "transposed":
        return [nn.ConvTranspose2d(cin, cout, bias=bias, **transposed_kwargs)]
    align = False if upsample == "bilinear" else None
    return [nn.Upsample(scale_factor=2, mode=upsample, align_corners=align)] + ref_down_conv(
        cin, cout, 3, 1, padding, bias
    )


UNET_UP = dict(kernel_size=4, stride=2, padding=1)


class RefUnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False,
                 innermost=False, norm="batch", use_dropout=False, padding="zero", upsample="transposed"):
        super().__init__()
        self.outermost = outermost
        norm_layer = ref_norm_layer(norm)
        use_bias = ref_use_bias(norm)
        if input_nc is None:
            input_nc = outer_nc
        downconv = ref_down_conv(input_nc, inner_nc, 4, 2, padding, use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = ref_up_conv(inner_nc * 2, outer_nc, upsample, padding, True, UNET_UP)
            model = downconv + [submodule] + [uprelu] + upconv + [nn.Tanh()]
        elif innermost:
            upconv = ref_up_conv(inner_nc, outer_nc, upsample, padding, use_bias, UNET_UP)
            model = [downrelu] + downconv + [uprelu] + upconv + [upnorm]
        else:
            upconv = ref_up_conv(inner_nc * 2, outer_nc, upsample, padding, use_bias, UNET_UP)
            down = [downrelu] + downconv + [downnorm]
            up = [uprelu] + upconv + [upnorm]
            model = down + [submodule] + up + ([nn.Dropout(0.5)] if use_dropout else [])
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class RefUnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm="batch", use_dropout=False, **kw):
        super().__init__()
        block = functools.partial(RefUnetSkipConnectionBlock, norm=norm, **kw)
        unet_block = block(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            unet_block = block(ngf * 8, ngf * 8, submodule=unet_block, use_dropout=use_dropout)
        unet_block = block(ngf * 4, ngf * 8, submodule=unet_block)
        unet_block = block(ngf * 2, ngf * 4, submodule=unet_block)
        unet_block = block(ngf, ngf * 2, submodule=unet_block)
        self.model = block(output_nc, ngf, input_nc=input_nc, submodule=unet_block, outermost=True)

    def forward(self, x):
        return self.model(x)


class RefResnetBlock(nn.Module):
    def __init__(self, dim, padding_type, norm, use_dropout, use_bias):
        super().__init__()
        norm_layer = ref_norm_layer(norm)
        conv_block = []
        for k in range(2):
            p = 0
            if padding_type == "reflect":
                conv_block += [nn.ReflectionPad2d(1)]
            else:
                p = 1
            conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]
            if k == 0:
                conv_block += [nn.ReLU(True)] + ([nn.Dropout(0.5)] if use_dropout else [])
        self.conv_block = nn.Sequential(*conv_block)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm="batch", use_dropout=False, n_blocks=6,
                 padding_type="reflect", upsample="transposed"):
        super().__init__()
        norm_layer = ref_norm_layer(norm)
        use_bias = ref_use_bias(norm)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                 norm_layer(ngf), nn.ReLU(True)]
        n_downsampling = 2
        for i in range(n_downsampling):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        mult = 2**n_downsampling
        for i in range(n_blocks):
            model += [RefResnetBlock(ngf * mult, padding_type, norm, use_dropout, use_bias)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += ref_up_conv(ngf * mult, ngf * mult // 2, upsample, padding_type, use_bias,
                                 dict(kernel_size=3, stride=2, padding=1, output_padding=1))
            model += [norm_layer(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class RefNLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, n_layers=3, norm="batch", padding="zero"):
        super().__init__()
        norm_layer = ref_norm_layer(norm)
        use_bias = ref_use_bias(norm)
        sequence = ref_down_conv(input_nc, ndf, 4, 2, padding, True) + [nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev = nf_mult
            nf_mult = min(2**n, 8)
            sequence += ref_down_conv(ndf * nf_mult_prev, ndf * nf_mult, 4, 2, padding, use_bias)
            sequence += [norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev = nf_mult
        nf_mult = min(2**n_layers, 8)
        sequence += ref_down_conv(ndf * nf_mult_prev, ndf * nf_mult, 4, 1, padding, use_bias)
        sequence += [norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += ref_down_conv(ndf * nf_mult, 1, 4, 1, padding, True)
        self.model = nn.Sequential(*sequence)

    def forward(self, x):
        return self.model(x)


class RefPixelDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, norm="batch"):
        super().__init__()
        use_bias = ref_use_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            ref_norm_layer(norm)(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, x):
        return self.net(x)


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
