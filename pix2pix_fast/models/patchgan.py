"""The PatchGAN discriminator (and the 1x1 PixelGAN).

Same layers and parameter order as the reference NLayerDiscriminator and
PixelDiscriminator (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py).
Every norm is a NormAct carrying the LeakyReLU(0.2) that follows it, so the
fused InstanceNormAct can replace it with the same state_dict keys. The
output is a map of raw logits (no sigmoid).

Receptive field of one output logit: n_layers 1 -> 16x16, 2 -> 34x34,
3 -> 70x70 (the paper's), 4 -> 142x142, 5 -> 286x286; n_layers 0 is the
PixelGAN (1x1).

`MultiscaleDiscriminator` is pix2pixHD's multi-scale D: K PatchGANs, the
k-th seeing the input average-pooled k times (3x3, stride 2).
Both discriminators can return every layer's output (`features=True`), the
intermediate ones for pix2pixHD's feature-matching loss.
"""
from __future__ import annotations

import torch
from torch import nn

from pix2pix_fast.models.layers import REFERENCE, Blocks, check_choice, check_min, conv_bias


class PatchGANDiscriminator(nn.Module):
    """PatchGAN D: logits of shape (N, 1, H', W') for an (N, in_channels, H, W) input.

    For n_layers >= 1, H' = H / 2^n_layers - 2 (e.g. 256 -> 30 for n_layers 3).
    in_channels: channels of cat([input, output]) (pix2pix is conditional).
    norm: instance | batch | none.  padding: zero | reflect (the 4x4 convs).
    blocks: as UNetGenerator.  Keys: `layers.{k}.conv.*`, `layers.{k}.norm_act.norm.*`.
    """

    def __init__(
        self,
        in_channels: int = 6,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        padding: str = "zero",
        blocks: Blocks = REFERENCE,
    ):
        super().__init__()
        check_min("in_channels", in_channels, 1)
        check_min("ndf", ndf, 1)
        check_min("n_layers", n_layers, 0)
        check_choice("norm", norm)
        check_choice("padding", padding)
        self.n_layers = n_layers
        bias = conv_bias(norm)
        lrelu = "leaky_relu"

        if n_layers == 0:
            # PixelGAN. As the reference, the last conv's bias follows the norm
            # rule too (dropped with batch norm).
            layers = [
                blocks.conv(in_channels, ndf, kernel_size=1, bias=True, act=lrelu),
                blocks.conv(ndf, 2 * ndf, kernel_size=1, bias=bias, norm=norm, act=lrelu),
                blocks.conv(2 * ndf, 1, kernel_size=1, bias=bias),
            ]
        else:
            def conv4(cin: int, cout: int, stride: int, **kw) -> nn.Module:
                return blocks.conv(cin, cout, kernel_size=4, stride=stride, padding=padding, **kw)

            layers = [conv4(in_channels, ndf, 2, bias=True, act=lrelu)]
            mult = 1
            for k in range(1, n_layers + 1):
                prev, mult = mult, min(2**k, 8)
                # The first n_layers-1 of these have stride 2, the last stride 1.
                stride = 2 if k < n_layers else 1
                layers.append(conv4(ndf * prev, ndf * mult, stride, bias=bias, norm=norm, act=lrelu))
            layers.append(conv4(ndf * mult, 1, 1, bias=True))
        self.layers = nn.ModuleList(layers)
        for a, b in zip(self.layers[:-1], self.layers[1:]):  # each layer's output is the next one's input
            blocks.link(a, b)

    def forward(self, x: torch.Tensor, features: bool = False):
        """The logit map; with `features`, [outputs of every layer] (one scale; the last is the logit map)."""
        outputs = []
        for layer in self.layers:
            x = layer(x)
            if features:
                outputs.append(_materialized(x))
        return [outputs] if features else x


def _materialized(x):
    """A layer's output as a tensor: a fast block may hand it on with its norm still pending
    (`models.fast`, conv_impl triton), which the feature-matching loss cannot read."""
    return x if isinstance(x, torch.Tensor) else x.materialize()


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale D: `num_D` PatchGANs, scale k on the input downsampled k times
    by 3x3 average pooling with stride 2 (padding 1, borders averaged over the pixels inside).

    Returns the list of the scales' logit maps (full scale first); with `features`, per scale
    the list of every layer's output. Keys: `scales.{k}.layers...` (scale k as a PatchGAN's
    keys); the other arguments as PatchGANDiscriminator's, the same for every scale.
    """

    def __init__(self, num_D: int = 3, **patchgan):
        super().__init__()
        check_min("num_D", num_D, 2)
        self.scales = nn.ModuleList(PatchGANDiscriminator(**patchgan) for _ in range(num_D))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor, features: bool = False) -> list:
        out = []
        for k, scale in enumerate(self.scales):
            if k > 0:
                x = self.downsample(x)
            out += scale(x, features=True) if features else [scale(x)]
        return out


def scale_logits(out) -> list:
    """A discriminator's output as a list of logit maps, one per scale (a single PatchGAN: one)."""
    return [out] if isinstance(out, torch.Tensor) else list(out)
