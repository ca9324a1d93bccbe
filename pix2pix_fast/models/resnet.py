"""The ResNet generator (Johnson et al.; CycleGAN's resnet_6blocks/9blocks).

Same layers and parameter order as the reference ResnetGenerator/ResnetBlock
(junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py): 7x7 conv, two
stride-2 3x3 convs, n_blocks residual blocks, two x2 upsamplings, 7x7 conv,
tanh. Every norm is a NormAct carrying the ReLU that follows it, so the fused
InstanceNormAct can replace it with the same state_dict keys.

Padding follows the reference: the two 7x7 convs are always reflect-padded,
the stride-2 down convs always zero-padded, and `padding` selects the
residual blocks' padding (and that of the 3x3 conv after a resize upsample).
"""
from __future__ import annotations

import torch
from torch import nn

from pix2pix_fast.models.layers import REFERENCE, Blocks, Generator, check_min, conv_bias


class ResnetBlock(nn.Module):
    """x + [conv3x3 -> norm -> relu -> (dropout) -> conv3x3 -> norm](x)."""

    def __init__(self, channels: int, *, norm: str, padding: str, dropout: bool, blocks: Blocks = REFERENCE):
        super().__init__()
        bias = conv_bias(norm)
        self.conv1 = blocks.conv(
            channels, channels, kernel_size=3, padding=padding, bias=bias, norm=norm, act="relu", dropout=dropout,
        )
        self.conv2 = blocks.conv(channels, channels, kernel_size=3, padding=padding, bias=bias, norm=norm, act="none")
        blocks.link(self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class ResnetGenerator(Generator):
    """ResNet generator; input H and W must be multiples of `multiple` = 4.

    norm: instance | batch | none.  padding: reflect (the reference default)
    | zero, for the residual blocks.  upsample: transposed (3x3 stride-2,
    output_padding 1, as the reference) | nearest | bilinear (resize + 3x3).
    dropout: Dropout(0.5) inside each residual block.  blocks: as UNetGenerator.
    """

    n_downsampling = 2

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", padding: str = "reflect", upsample: str = "transposed",
                 dropout: bool = False, blocks: Blocks = REFERENCE):
        super().__init__(in_channels=in_channels, out_channels=out_channels, ngf=ngf, norm=norm, padding=padding,
                         upsample=upsample, multiple=2**self.n_downsampling)
        check_min("n_blocks", n_blocks, 0)
        bias = conv_bias(norm)

        self.stem = blocks.conv(in_channels, ngf, kernel_size=7, padding="reflect", bias=bias, norm=norm, act="relu")
        self.down = nn.ModuleList(
            blocks.conv(ngf * 2**i, ngf * 2 ** (i + 1), kernel_size=3, stride=2, padding="zero",
                        bias=bias, norm=norm, act="relu")
            for i in range(self.n_downsampling)
        )
        width = ngf * 2**self.n_downsampling
        self.blocks = nn.ModuleList(
            ResnetBlock(width, norm=norm, padding=padding, dropout=dropout, blocks=blocks)
            for _ in range(n_blocks)
        )
        up = []
        for i in range(self.n_downsampling):
            cin = ngf * 2 ** (self.n_downsampling - i)
            cout = cin // 2
            up.append(blocks.up(
                cin, cout, upsample=upsample,
                transposed=nn.ConvTranspose2d(
                    cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias,
                ),
                padding=padding, bias=bias, norm=norm, act="relu",
            ))
        self.up = nn.ModuleList(up)
        self.head = blocks.conv(ngf, out_channels, kernel_size=7, padding="reflect", bias=True, act="tanh")
        # Where one block's output is the next one's whole input (an output that also
        # feeds a residual sum, the input of each ResnetBlock, is not).
        seq = [self.stem, *self.down] + ([] if len(self.blocks) else [*self.up, self.head])
        for a, b in zip(seq[:-1], seq[1:]):
            blocks.link(a, b)
        if len(self.blocks):
            seq = [*self.up, self.head]
            for a, b in zip(seq[:-1], seq[1:]):
                blocks.link(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.down:
            x = block(x)
        for block in self.blocks:
            x = block(x)
        for block in self.up:
            x = block(x)
        return self.head(x)
