"""Networks laid out as the reference implementation (pytorch-CycleGAN-and-pix2pix,
models/networks.py) builds them: the same module nesting and state_dict keys,
written here from its structure. The tests of `fuse` and of reference
checkpoints use them as models that were not written for this package."""
import functools

import torch
from torch import nn


def norm_layer(kind: str):
    """The reference's get_norm_layer: batch | instance | none."""
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda channels: nn.Identity()


def uses_bias(norm) -> bool:
    """The reference puts conv biases only where instance norm follows."""
    base = norm.func if isinstance(norm, functools.partial) else norm
    return base is nn.InstanceNorm2d


class UnetSkipBlock(nn.Module):
    """One level of the reference's recursive U-Net: down, submodule, up, skip by concat."""

    def __init__(self, outer, inner, input_nc=None, sub=None, outermost=False, innermost=False,
                 norm=nn.BatchNorm2d, dropout=False):
        super().__init__()
        self.outermost = outermost
        bias = uses_bias(norm)
        input_nc = outer if input_nc is None else input_nc
        down = nn.Conv2d(input_nc, inner, 4, stride=2, padding=1, bias=bias)
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=bias), norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, norm(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1, bias=bias), norm(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf, norm, dropout):
        super().__init__()
        block = UnetSkipBlock(ngf * 8, ngf * 8, norm=norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, sub=block, norm=norm, dropout=dropout)
        for mult in (4, 2, 1):
            block = UnetSkipBlock(ngf * mult, ngf * mult * 2, sub=block, norm=norm)
        self.model = UnetSkipBlock(output_nc, ngf, input_nc=input_nc, sub=block, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class ResnetBlock(nn.Module):
    """x + conv_block(x), conv_block = [pad, conv, norm, relu, (dropout), pad, conv, norm]."""

    def __init__(self, dim, norm, dropout, bias):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm(dim), nn.ReLU(True)]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: one flat ``self.model`` Sequential, blocks inside it."""

    def __init__(self, input_nc=3, output_nc=3, ngf=4, norm=norm_layer("instance"), dropout=False, n_blocks=9):
        super().__init__()
        bias = uses_bias(norm)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, dropout, bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc=6, ndf=4, n_layers=3, norm=norm_layer("instance")):
        super().__init__()
        bias = uses_bias(norm)
        seq = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, padding=1, bias=bias),
                    norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class PixelDiscriminator(nn.Module):
    def __init__(self, input_nc=6, ndf=4, norm=norm_layer("instance")):
        super().__init__()
        bias = uses_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, 2 * ndf, 1, bias=bias), norm(2 * ndf), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * ndf, 1, 1, bias=bias),
        )

    def forward(self, x):
        return self.net(x)
