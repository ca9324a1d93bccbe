"""Building blocks shared by the generators and the discriminator.

Design: every normalisation is paired with the activation that *follows* it
in the network (`NormAct`), so that a fused norm+activation kernel
(`pix2pix_fast.nn.InstanceNormAct`) can take its place without changing the
module tree. The fused module sits at the same attribute (`norm`) as the plain
one and holds the same parameters, so a state_dict saved from the reference
model loads into the fast model and back. Padding is a separate,
parameterless `pad` module (reflect) or the conv's own zero padding, so the
fast path can swap it without touching the keys either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pix2pix_fast.config import CHOICES
from pix2pix_fast.ops._common import ACT_CODES

# The LeakyReLU slope of the pix2pix encoder and PatchGAN.
NEGATIVE_SLOPE = 0.2

ACTIVATIONS = ("leaky_relu", "relu", "tanh", "none")


def check_choice(option: str, value: str, allowed: tuple[str, ...] | None = None) -> None:
    """Raise ValueError naming `option` if `value` is not an allowed choice."""
    allowed = CHOICES[option] if allowed is None else allowed
    if value not in allowed:
        raise ValueError(f"{option}: {value!r} is not one of {', '.join(allowed)}")


def check_min(option: str, value: int, minimum: int) -> None:
    """Raise ValueError naming `option` if `value` is not an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")


def conv_bias(norm: str) -> bool:
    """Convs feeding a BatchNorm carry no bias (BatchNorm's shift replaces it).

    The reference sets use_bias = (norm is InstanceNorm), which also drops the
    bias for norm "none"; there a conv without a bias is simply weaker, so we
    keep it.
    """
    return norm != "batch"


class NormAct(nn.Module):
    """A normalisation followed by an activation: act(norm(x)).

    kind: "instance" (InstanceNorm2d, affine=False, no running stats, as the
    reference), "batch" (BatchNorm2d, affine) or "none" (identity).
    act: "leaky_relu" (slope 0.2), "relu", "tanh" or "none".
    fused: for kind "instance" and act in leaky_relu/relu/none, `self.norm` is
    `pix2pix_fast.nn.InstanceNormAct`, which applies both in one kernel; for
    every other combination it is ignored and the plain path is used.
    The state_dict keys are the same either way (`norm.weight`, ... for batch).
    """

    def __init__(self, kind: str, channels: int, act: str = "none", fused: bool = False):
        super().__init__()
        check_choice("norm", kind)
        check_choice("act", act, ACTIVATIONS)
        self.kind = kind
        self.act = act
        self.negative_slope = NEGATIVE_SLOPE
        self.fused = bool(fused) and kind == "instance" and act in ACT_CODES  # the activations the fused kernels implement
        if self.fused:
            # Imported here: the fused layer pulls in the kernels, and the
            # reference models must not depend on them.
            from pix2pix_fast.nn import InstanceNormAct

            self.norm = InstanceNormAct(channels, affine=False, act=act, negative_slope=NEGATIVE_SLOPE)
        elif kind == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        elif kind == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=True)
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.fused or self.act == "none":
            return x
        if self.act == "leaky_relu":
            return F.leaky_relu(x, self.negative_slope)
        if self.act == "relu":
            return F.relu(x)
        return torch.tanh(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, act={self.act}, fused={self.fused}"


class ConvBlock(nn.Module):
    """[upsample] -> [pad] -> conv -> NormAct -> [dropout(0.5)].

    Keys: `conv.weight`, `conv.bias`, `norm_act.norm.*`; upsample, pad and
    dropout hold no parameters (they are nn.Identity when unused).
    Dropout after the activation equals the reference's dropout before a ReLU
    (dropout scales by 0 or 2, which commutes with ReLU) and draws the same
    random numbers.

    `out_pad` (left, right, top, bottom) is the reflect padding the block's
    output carries: none here; the fast model's blocks
    (`pix2pix_fast.models.levers.FastConvBlock`) may pad their output for the
    next block, and a model that also uses that output elsewhere crops it
    with `crop(x, block.out_pad)`.
    """

    out_pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __init__(
        self,
        conv: nn.Module,
        norm_act: NormAct,
        *,
        pad: nn.Module | None = None,
        upsample: nn.Module | None = None,
        dropout: bool = False,
    ):
        super().__init__()
        self.upsample = nn.Identity() if upsample is None else upsample
        self.pad = nn.Identity() if pad is None else pad
        self.conv = conv
        self.norm_act = norm_act
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm_act(self.conv(self.pad(self.upsample(x)))))


def crop(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """The (left, right, top, bottom) padding removed from x: a view, no copy."""
    left, right, top, bottom = pad
    if not any(pad):
        return x
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def conv_block(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    stride: int = 1,
    padding: str = "zero",
    bias: bool,
    norm: str = "none",
    act: str = "none",
    fused: bool = False,
    dropout: bool = False,
) -> ConvBlock:
    """A conv with `(kernel_size - 1) // 2` padding of kind `padding`.

    Zero padding is the conv's own; reflect padding is an explicit
    ReflectionPad2d in front of an unpadded conv.
    """
    amount = (kernel_size - 1) // 2
    pad = nn.ReflectionPad2d(amount) if padding == "reflect" and amount > 0 else None
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride,
        padding=0 if pad is not None else amount, bias=bias,
    )
    return ConvBlock(conv, NormAct(norm, out_channels, act, fused), pad=pad, dropout=dropout)


def up_block(
    in_channels: int,
    out_channels: int,
    *,
    upsample: str,
    transposed: nn.ConvTranspose2d,
    padding: str,
    bias: bool,
    norm: str,
    act: str,
    fused: bool,
    dropout: bool = False,
) -> ConvBlock:
    """Upsample by 2: `transposed` as given, or resize + 3x3 conv.

    With upsample "nearest"/"bilinear" the block is Upsample(x2) -> pad(1) ->
    3x3 conv (no checkerboard artifacts); the conv sits at the same key.
    """
    check_choice("upsample", upsample)
    if upsample == "transposed":
        return ConvBlock(transposed, NormAct(norm, out_channels, act, fused), dropout=dropout)
    block = conv_block(
        in_channels, out_channels, kernel_size=3, padding=padding, bias=bias,
        norm=norm, act=act, fused=fused, dropout=dropout,
    )
    align = False if upsample == "bilinear" else None
    block.upsample = nn.Upsample(scale_factor=2, mode=upsample, align_corners=align)
    return block


class SizeCheck:
    """Mixin for generators whose input H and W must be multiples of `multiple`."""

    multiple: int

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ValueError if an HxW input does not fit this network.

        Not called in forward (a shape check there costs a graph break or a
        recompile under torch.compile); callers check once at the edge.
        """
        m = self.multiple
        if h < 1 or w < 1 or h % m or w % m:
            raise ValueError(f"input size {h}x{w} is not a multiple of {m}")
