"""Building blocks shared by the generators and the discriminator, and `Blocks`,
the factory the model builders make them with.

Design: every normalisation is paired with the activation that *follows* it
in the network (`NormAct`), so that a fused norm+activation kernel can take
its place without changing the module tree. Padding is a separate,
parameterless `pad` module (reflect) or the conv's own zero padding. The
models build every block through a `Blocks` factory and tell it which
block's output is the next one's whole input (`Blocks.link`): the reference
factory here builds the reference layers and ignores the links; the fast
one (`models/fast.py`) builds fused blocks with the same keys and uses the
links to fuse across blocks. So a state_dict saved from one model loads
into the other and back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute

from pix2pix_fast.config import CHOICES

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
    Keys: `norm.*` (batch norm's weight, bias and running statistics).
    """

    def __init__(self, kind: str, channels: int, act: str = "none"):
        super().__init__()
        check_choice("norm", kind)
        check_choice("act", act, ACTIVATIONS)
        self.kind = kind
        self.act = act
        self.negative_slope = NEGATIVE_SLOPE
        if kind == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        elif kind == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=True)
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(self.norm(x), self.act, self.negative_slope)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, act={self.act}"


def _activate(x: torch.Tensor, act: str, negative_slope: float) -> torch.Tensor:
    if act == "leaky_relu":
        return F.leaky_relu(x, negative_slope)
    if act == "relu":
        return F.relu(x)
    if act == "tanh":
        return torch.tanh(x)
    return x


class ConvBlock(nn.Module):
    """[upsample] -> [pad] -> conv -> NormAct -> [dropout(0.5)].

    Keys: `conv.weight`, `conv.bias`, `norm_act.norm.*`; upsample, pad and
    dropout hold no parameters (they are nn.Identity when unused).
    Dropout after the activation equals the reference's dropout before a ReLU
    (dropout scales by 0 or 2, which commutes with ReLU) and draws the same
    random numbers.

    checkpoint: while training with gradients on, keep only the block's input
    and recompute the rest in the backward pass (torch.utils.checkpoint,
    non-reentrant; the RNG state is saved and restored around the recompute, so
    dropout draws the same mask twice and the gradients are those without it).
    """

    def __init__(
        self,
        conv: nn.Module,
        norm_act: NormAct,
        *,
        pad: nn.Module | None = None,
        upsample: nn.Module | None = None,
        dropout: bool = False,
        checkpoint: bool = False,
    ):
        super().__init__()
        self.upsample = nn.Identity() if upsample is None else upsample
        self.pad = nn.Identity() if pad is None else pad
        self.conv = conv
        self.norm_act = norm_act
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()
        self.checkpoint = checkpoint

    def forward(self, x):
        if not (self.checkpoint and self.training and torch.is_grad_enabled()):
            return self.compute(x)
        calls = []

        def run(x):
            calls.append(True)
            if len(calls) == 1:
                return self.compute(x)
            with _running_stats_kept(self):  # the recompute: batch norm counts each batch once
                return self.compute(x)

        return recompute(run, x, use_reentrant=False, preserve_rng_state=True)

    def compute(self, x):
        """The block's function (what `forward` runs, or recomputes with `checkpoint`)."""
        return self.dropout(self.norm_act(self.conv(self.pad(self.upsample(x)))))


class _running_stats_kept:
    """Restores the running statistics of the batch norms in `module` on exit."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [[b.clone() for b in m.buffers()] for m in self.norms]

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, saved in zip(self.norms, self.saved):
                for b, s in zip(m.buffers(), saved):
                    b.copy_(s)


class Blocks:
    """The factory the models build their blocks with: here, the reference layers.

    `conv` and `up` make a block; `link(producer, consumer, shared)` is told,
    after the blocks are built, that the producer's output is the consumer's
    whole input (`shared`: that output is also used elsewhere, e.g. a U-Net
    skip) and returns the module the model passes the producer's output
    through for that other use. The reference factory changes nothing there
    (an nn.Identity); `models.fast.FastBlocks` builds the fast model.
    checkpoint: every block recomputes its activations in the backward pass
    (see ConvBlock).
    """

    def __init__(self, *, checkpoint: bool = False):
        self.checkpoint = checkpoint

    def conv(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1,
             padding: str = "zero", bias: bool, norm: str = "none", act: str = "none",
             dropout: bool = False) -> ConvBlock:
        """A conv with `(kernel_size - 1) // 2` padding of kind `padding`: zero padding is the
        conv's own, reflect padding an explicit pad module in front of an unpadded conv."""
        amount = (kernel_size - 1) // 2
        pad = self.reflect_pad(amount) if padding == "reflect" and amount > 0 else None
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                         padding=0 if pad is not None else amount, bias=bias)
        return self.block(conv, self.norm_act(norm, out_channels, act), pad=pad, dropout=dropout)

    def up(self, in_channels: int, out_channels: int, *, upsample: str, transposed: nn.ConvTranspose2d,
           padding: str, bias: bool, norm: str, act: str, dropout: bool = False) -> ConvBlock:
        """Upsample by 2: `transposed` as given, or resize + 3x3 conv.

        With upsample "nearest"/"bilinear" the block is Upsample(x2) -> pad(1) ->
        3x3 conv (no checkerboard artifacts); the conv sits at the same key.
        """
        check_choice("upsample", upsample)
        if upsample == "transposed":
            return self.block(transposed, self.norm_act(norm, out_channels, act), dropout=dropout)
        amount = 1
        pad = self.reflect_pad(amount) if padding == "reflect" else None
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=0 if pad is not None else amount, bias=bias)
        align = False if upsample == "bilinear" else None
        return self.block(conv, self.norm_act(norm, out_channels, act), pad=pad, dropout=dropout,
                          upsample=nn.Upsample(scale_factor=2, mode=upsample, align_corners=align))

    def link(self, producer: ConvBlock, consumer: ConvBlock, shared: bool = False) -> nn.Module:
        return nn.Identity()

    # What a block is made of; the fast factory makes its own.
    def norm_act(self, kind: str, channels: int, act: str) -> nn.Module:
        return NormAct(kind, channels, act)

    def reflect_pad(self, amount: int) -> nn.Module:
        return nn.ReflectionPad2d(amount)

    def block(self, conv: nn.Module, norm_act: nn.Module, **kw) -> ConvBlock:
        return ConvBlock(conv, norm_act, checkpoint=self.checkpoint, **kw)


REFERENCE = Blocks()


class Generator(nn.Module):
    """What the generators share: their checked options and `multiple`, which input H and W must be
    multiples of."""

    def __init__(self, *, in_channels: int, out_channels: int, ngf: int, norm: str, padding: str, upsample: str,
                 multiple: int):
        super().__init__()
        for option, value in (("in_channels", in_channels), ("out_channels", out_channels), ("ngf", ngf)):
            check_min(option, value, 1)
        for option, value in (("norm", norm), ("padding", padding), ("upsample", upsample)):
            check_choice(option, value)
        self.multiple = multiple

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ValueError if an HxW input does not fit this network.

        Not called in forward (a shape check there costs a graph break or a
        recompile under torch.compile); callers check once at the edge.
        """
        m = self.multiple
        if h < 1 or w < 1 or h % m or w % m:
            raise ValueError(f"input size {h}x{w} is not a multiple of {m}")
