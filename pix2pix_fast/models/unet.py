"""The pix2pix U-Net generator, as an explicit encoder/decoder.

Same layers, parameters and function as the reference recursive
UnetGenerator / UnetSkipConnectionBlock (junyanz/pytorch-CycleGAN-and-pix2pix,
models/networks.py), rewritten in "activation-carrying" form so that every
norm is immediately followed by the activation the reference applies next,
and the pair can run as one fused kernel.

The reference computes, for levels i = 1..n (n = num_downs),
    e_1 = conv_1(x),  e_i = norm_i(conv_i(lrelu(e_{i-1}))),  e_n has no norm,
    d_n = norm(upconv_n(relu(e_n))),
    d_i = dropout?(norm(upconv_i(relu(cat[e_i, d_{i+1}])))),
    y   = tanh(upconv_1(relu(cat[e_1, d_2]))).
Because relu(cat[a, b]) = cat[relu(a), relu(b)], relu(lrelu(v)) = relu(v)
and dropout commutes with relu, this equals carrying
    a_i = lrelu(e_i) down the encoder (a_n = relu(e_n)),
    r_i = dropout?(relu(norm(upconv_i(...)))) up the decoder,
with relu(a_i) as the skip. Each encoder block thus ends in norm+LeakyReLU
and each decoder block in norm+ReLU: one NormAct each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pix2pix_fast.models.layers import REFERENCE, Blocks, Generator, check_min, conv_bias


def unet_channels(ngf: int, num_downs: int) -> list[int]:
    """Channels of encoder level i = 1..num_downs: ngf * min(2^(i-1), 8)."""
    return [ngf * min(2**i, 8) for i in range(num_downs)]


class UNetGenerator(Generator):
    """pix2pix U-Net: num_downs stride-2 4x4 convs down, as many up, skips by concat.

    num_downs 7 = unet_128, 8 = unet_256 (the paper's), 6 fits 64x64 inputs;
    input H and W must be multiples of `multiple` = 2**num_downs.
    norm: instance | batch | none.  padding: zero | reflect (encoder convs;
    and the 3x3 decoder convs with a resize upsample).  upsample: transposed
    (4x4 stride-2 transposed conv, as the paper) | nearest | bilinear
    (resize x2 + 3x3 conv).  dropout: Dropout(0.5) in the decoder blocks of the
    ngf*8-wide levels below the fourth (the paper's noise), never innermost.
    blocks: the factory that makes the blocks (models.layers.Blocks: the
    reference layers; models.fast.FastBlocks: the fast model, same keys).

    Keys: `down.{k}` is encoder level k+1 (outermost first); `up.{k}` is the
    decoder block of level num_downs-k (innermost first), so the parameter
    order is the reference's.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "instance", padding: str = "zero", upsample: str = "transposed", dropout: bool = True,
                 blocks: Blocks = REFERENCE):
        check_min("num_downs", num_downs, 2)
        super().__init__(in_channels=in_channels, out_channels=out_channels, ngf=ngf, norm=norm, padding=padding,
                         upsample=upsample, multiple=2**num_downs)
        self.num_downs = num_downs
        n = num_downs
        ch = unet_channels(ngf, n)
        bias = conv_bias(norm)

        down = []
        for i in range(n):
            outermost, innermost = i == 0, i == n - 1
            down.append(blocks.conv(
                in_channels if outermost else ch[i - 1], ch[i],
                kernel_size=4, stride=2, padding=padding, bias=bias,
                # The reference has no norm after the outermost and innermost
                # down convs; the innermost is followed by the decoder's ReLU.
                norm="none" if outermost or innermost else norm,
                act="relu" if innermost else "leaky_relu",
            ))
        self.down = nn.ModuleList(down)

        up = []
        for i in reversed(range(n)):  # innermost level first
            outermost, innermost = i == 0, i == n - 1
            cin = ch[i] if innermost else 2 * ch[i]
            cout = out_channels if outermost else ch[i - 1]
            # The outermost up conv always has a bias (no norm follows).
            b = True if outermost else bias
            up.append(blocks.up(
                cin, cout, upsample=upsample,
                transposed=nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=b),
                padding=padding, bias=b,
                norm="none" if outermost else norm,
                act="tanh" if outermost else "relu",
                # Reference: the num_downs-5 blocks between the innermost and
                # the ngf*4 level (i.e. levels 5..n-1, 1-based) carry dropout.
                dropout=dropout and 4 <= i < n - 1,
            ))
        self.up = nn.ModuleList(up)

        # Each encoder level's output is the next level's whole input and also its skip;
        # the innermost one is the first decoder block's input.
        self.skip = nn.ModuleList(blocks.link(a, b, shared=True) for a, b in zip(self.down[:-1], self.down[1:]))
        blocks.link(self.down[-1], self.up[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, skip in zip(self.down, self.skip):
            x = block(x)
            skips.append(skip(x))
        x = self.up[0](self.down[-1](x))  # the innermost output is already ReLU'd
        for block in self.up[1:]:
            x = block(torch.cat([F.relu(skips.pop()), x], 1))
        return x
