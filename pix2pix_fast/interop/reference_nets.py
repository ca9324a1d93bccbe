"""The reference implementation's networks, in its own module layout.

pytorch-CycleGAN-and-pix2pix (models/networks.py) builds UnetGenerator,
ResnetGenerator, NLayerDiscriminator and PixelDiscriminator as nested
``nn.Sequential``s; these classes are written here from that structure, with
its constructor arguments, defaults and state_dict keys, so that a
``latest_net_G.pth`` it saved loads into them as it is. They are what a user
of that code has in hand: `fuse()` takes them as they are
(examples/cyclegan_fused.py), `import-reference` maps their keys onto this
package's models, and the tests check both against them.

Beyond the reference (keyword-only, off by default): ``use_bias`` (the
reference puts conv biases only where instance norm follows; this package
also keeps them without a norm), reflect ``padding`` for the U-Net and the
PatchGAN, and resize-conv ``upsample`` for both generators, each written the
way the reference writes layers, to check the package's own options against.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["get_norm_layer", "UnetSkipConnectionBlock", "UnetGenerator", "ResnetBlock", "ResnetGenerator",
           "NLayerDiscriminator", "PixelDiscriminator"]


def get_norm_layer(norm_type: str = "instance"):
    """The reference's norm factory: batch | instance | none."""
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"normalization layer {norm_type!r} is not found")


def _reference_bias(norm_layer) -> bool:
    base = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return base is nn.InstanceNorm2d


def _conv(cin: int, cout: int, kernel_size: int, stride: int, padding: str, bias: bool) -> list[nn.Module]:
    """A conv with padding (kernel_size - 1) // 2 of kind `padding` (reflect: an explicit pad in front)."""
    amount = (kernel_size - 1) // 2
    if padding == "reflect":
        return [nn.ReflectionPad2d(amount), nn.Conv2d(cin, cout, kernel_size, stride, 0, bias=bias)]
    return [nn.Conv2d(cin, cout, kernel_size, stride, amount, bias=bias)]


def _up(cin: int, cout: int, upsample: str, pad_kind: str, bias: bool, **transposed) -> list[nn.Module]:
    """x2 upsampling: the reference's transposed conv (`transposed`: its arguments), or resize + 3x3 conv."""
    if upsample == "transposed":
        return [nn.ConvTranspose2d(cin, cout, bias=bias, **transposed)]
    align = False if upsample == "bilinear" else None
    return [nn.Upsample(scale_factor=2, mode=upsample, align_corners=align)] + _conv(cin, cout, 3, 1, pad_kind, bias)


class UnetSkipConnectionBlock(nn.Module):
    """One level of the recursive U-Net: down, submodule, up, skip by concat."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False, *, use_bias=None, padding="zero",
                 upsample="transposed"):
        super().__init__()
        self.outermost = outermost
        use_bias = _reference_bias(norm_layer) if use_bias is None else use_bias
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = _conv(input_nc, inner_nc, 4, 2, padding, use_bias)
        up = functools.partial(_unet_up, upsample=upsample, padding=padding)
        if outermost:
            model = downconv + [submodule, nn.ReLU(True)] + up(inner_nc * 2, outer_nc, True) + [nn.Tanh()]
        elif innermost:
            model = ([nn.LeakyReLU(0.2, True)] + downconv + [nn.ReLU(True)] + up(inner_nc, outer_nc, use_bias)
                     + [norm_layer(outer_nc)])
        else:
            model = ([nn.LeakyReLU(0.2, True)] + downconv + [norm_layer(inner_nc), submodule, nn.ReLU(True)]
                     + up(inner_nc * 2, outer_nc, use_bias) + [norm_layer(outer_nc)]
                     + ([nn.Dropout(0.5)] if use_dropout else []))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def _unet_up(cin, cout, bias, *, upsample, padding):
    return _up(cin, cout, upsample, padding, bias, kernel_size=4, stride=2, padding=1)


class UnetGenerator(nn.Module):
    """The pix2pix U-Net: num_downs levels, innermost first; ``**options`` go to every level."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False,
                 **options):
        super().__init__()
        block = functools.partial(UnetSkipConnectionBlock, norm_layer=norm_layer, **options)
        unet = block(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            unet = block(ngf * 8, ngf * 8, submodule=unet, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            unet = block(ngf * mult, ngf * mult * 2, submodule=unet)
        self.model = block(output_nc, ngf, input_nc=input_nc, submodule=unet, outermost=True)

    def forward(self, x):
        return self.model(x)


class ResnetBlock(nn.Module):
    """x + conv_block(x), conv_block = [pad, conv, norm, relu, (dropout), pad, conv, norm]."""

    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        layers = []
        for k in range(2):
            layers += _conv(dim, dim, 3, 1, padding_type, use_bias) + [norm_layer(dim)]
            if k == 0:
                layers += [nn.ReLU(True)] + ([nn.Dropout(0.5)] if use_dropout else [])
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: one flat ``self.model`` Sequential, the blocks inside it."""

    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False, n_blocks=6,
                 padding_type="reflect", *, use_bias=None, upsample="transposed"):
        super().__init__()
        use_bias = _reference_bias(norm_layer) if use_bias is None else use_bias
        model = _conv(input_nc, ngf, 7, 1, "reflect", use_bias) + [norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            model += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias), norm_layer(2 * c), nn.ReLU(True)]
        model += [ResnetBlock(ngf * 4, padding_type, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            model += _up(c, c // 2, upsample, padding_type, use_bias, kernel_size=3, stride=2, padding=1,
                         output_padding=1)
            model += [norm_layer(c // 2), nn.ReLU(True)]
        model += _conv(ngf, output_nc, 7, 1, "reflect", True) + [nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """The PatchGAN: n_layers strided 4x4 convs, then two stride-1 ones down to one logit map."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d, *, use_bias=None, padding="zero"):
        super().__init__()
        use_bias = _reference_bias(norm_layer) if use_bias is None else use_bias
        seq = _conv(input_nc, ndf, 4, 2, padding, True) + [nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            seq += _conv(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, padding, use_bias)
            seq += [norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += _conv(ndf * mult, 1, 4, 1, padding, True)
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """The 1x1 PixelGAN."""

    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d, *, use_bias=None):
        super().__init__()
        use_bias = _reference_bias(norm_layer) if use_bias is None else use_bias
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, 2 * ndf, 1, bias=use_bias), norm_layer(2 * ndf), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * ndf, 1, 1, bias=use_bias),
        )

    def forward(self, x):
        return self.net(x)
