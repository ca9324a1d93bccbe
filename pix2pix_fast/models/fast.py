"""The fast models' blocks: `FastBlocks`, the factory the model builders take to
build the fast model, and the performance levers behind TrainConfig switches.

Every instance norm + activation the fused kernels implement becomes one
`InstanceNormAct` (made by `InstanceNormAct.from_norm`, as `fuse()` makes
it), and every block a `FastConvBlock`: the reference block's submodules at
the same keys (same state_dict, so a checkpoint moves freely between lever
settings and the eager reference), computing the same function (outputs and
gradients equal up to rounding), only faster on a GPU. The levers:

* pad_channels: a conv whose input or output channel count is not a
  multiple of 8 (the 3-channel image and the 6-channel image pair, the
  3-channel output image, the 1-channel logit map) runs with the channels
  zero-padded to the next multiple of 8 (input and weight padded on the fly
  with `F.pad`; the padded weights are zero, so the result is unchanged, and
  autograd drops the gradient of the padded part), so cuDNN can use its
  tensor-core kernels. The padded output channels are sliced off before the
  norm / activation.
* fused_pad: every reflect pad runs on the package's `ReflectPad2d`; where
  a block ending in the fused instance norm + activation feeds a reflect pad
  directly (no dropout, no upsampling between), the padding moves into that
  norm (`InstanceNormAct(pad=...)`, one pass instead of two); where that
  output is also used elsewhere (a U-Net skip), `link` returns the crop that
  takes the padding off again (a view, no copy).
* conv_impl "triton": a Conv2d followed by the fused instance norm runs as
  `pix2pix_fast.ops.conv_norm_act` (norm statistics in the conv's
  epilogue); where its output feeds only the next block's zero-padded Conv2d,
  the normalisation is deferred into that conv's prologue (the normalised
  activation is never written). Transposed convs, convs without instance
  norm that receive no deferred input, and convs after batch norm keep
  cuDNN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pix2pix_fast.models.layers import Blocks, ConvBlock, NormAct
from pix2pix_fast.nn import InstanceNormAct, ReflectPad2d
from pix2pix_fast.ops._common import ACT_CODES
from pix2pix_fast.ops.conv_norm_act import PendingNormAct, conv_norm_act

CHANNEL_MULTIPLE = 8
CONV_IMPLS = ("cudnn", "triton")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _zero_pad_dim(t: torch.Tensor, dim: int, extra: int) -> torch.Tensor:
    """t with `extra` zero slices appended along dim (the memory format is kept)."""
    if extra == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, extra]
    return F.pad(t, pad)


def _drop_channels(y: torch.Tensor, extra: int) -> torch.Tensor:
    """y without its last `extra` channels, dense in y's memory format."""
    if extra == 0:
        return y
    fmt = torch.channels_last if not y.is_contiguous() and y.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format
    return y[:, : y.shape[1] - extra].contiguous(memory_format=fmt)


class FastConvBlock(ConvBlock):
    """A ConvBlock with the levers applied; the same submodules and keys.

    pad_in / pad_out: zero channels added to the conv's input / output.
    impl: "cudnn" (the conv module's op, then `norm_act`) or "triton"
    (`conv_norm_act`, with the norm and activation of `norm_act`).
    defer: return the conv_norm_act output with its norm still pending (a
    PendingNormAct), for the next block's conv_norm_act prologue.
    out_pad: the reflect padding `norm_act` applies to the output.
    """

    def __init__(self, conv: nn.Module, norm_act: nn.Module, *, pad_in: int = 0, pad_out: int = 0,
                 impl: str = "cudnn", **kw):
        super().__init__(conv, norm_act, **kw)
        self.pad_in = pad_in
        self.pad_out = pad_out
        self.impl = impl
        self.defer = False
        self.out_pad = (0, 0, 0, 0)

    @property
    def transposed(self) -> bool:
        return isinstance(self.conv, nn.ConvTranspose2d)

    def _weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.conv.weight, self.conv.bias
        # Conv2d weight: (out, in, kh, kw); ConvTranspose2d: (in, out, kh, kw).
        in_dim, out_dim = (0, 1) if self.transposed else (1, 0)
        w = _zero_pad_dim(_zero_pad_dim(w, in_dim, self.pad_in), out_dim, self.pad_out)
        if b is not None:
            b = _zero_pad_dim(b, 0, self.pad_out)
        return w, b

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.pad_in or self.pad_out):
            return self.conv(x)
        c = self.conv
        w, b = self._weight_bias()
        if self.transposed:
            return F.conv_transpose2d(x, w, b, c.stride, c.padding, c.output_padding, c.groups, c.dilation)
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def _conv_norm_act(self, x):
        na = self.norm_act
        instance = na.kind == "instance"
        eps = na.norm.eps if instance else 1e-5
        # The network's layout: the input's, or, for a pending input (always
        # channels_last), the weight's (model.to(memory_format=...) sets it).
        t = self.conv.weight if isinstance(x, PendingNormAct) else x
        channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        w, b = self._weight_bias()
        y = conv_norm_act(
            x, w, b, self.conv.stride[0], self.conv.padding[0], na.act, na.negative_slope, eps,
            norm=instance, defer=self.defer,
        )
        if self.defer:
            return y
        y = _drop_channels(y, self.pad_out)
        # conv_norm_act writes channels_last; an NCHW network stays NCHW.
        return y if channels_last else y.contiguous()

    def compute(self, x):
        if self.impl == "triton":
            if isinstance(x, torch.Tensor):
                x = _zero_pad_dim(self.pad(self.upsample(x)), 1, self.pad_in)
            return self.dropout(self._conv_norm_act(x))
        x = _zero_pad_dim(self.pad(self.upsample(x)), 1, self.pad_in)
        y = _drop_channels(self._conv(x), self.pad_out)
        return self.dropout(self.norm_act(y))

    def extra_repr(self) -> str:
        return (f"pad_in={self.pad_in}, pad_out={self.pad_out}, impl={self.impl!r}, "
                f"defer={self.defer}, out_pad={self.out_pad}")


def _is_zero_padded_conv2d(conv: nn.Module) -> bool:
    """A plain Conv2d conv_norm_act can run: groups 1, no dilation, square stride and zero padding."""
    return (
        type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
        and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1]
    )


def _takes_conv_norm_act(block: FastConvBlock) -> bool:
    """conv_norm_act can compute this block's conv + norm + activation."""
    na = block.norm_act
    return _is_zero_padded_conv2d(block.conv) and (
        isinstance(na, FusedNormAct) or (na.kind == "none" and na.act in ACT_CODES))


class FusedNormAct(NormAct):
    """NormAct whose instance norm and activation run as one InstanceNormAct (the same keys)."""

    def __init__(self, channels: int, act: str):
        super().__init__("instance", channels, act)
        self.norm = InstanceNormAct.from_norm(self.norm, act, self.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def pad_output(self, pad: tuple[int, int, int, int]) -> None:
        """Reflect-pad the output in the same pass (the next block's pad, moved here)."""
        self.norm = InstanceNormAct.from_norm(self.norm, self.act, self.negative_slope, pad)


class Crop(nn.Module):
    """Takes off the (left, right, top, bottom) reflect padding a fused norm added: a view, no copy."""

    def __init__(self, pad: tuple[int, int, int, int]):
        super().__init__()
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pad
        return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class FastBlocks(Blocks):
    """The factory of the fast model: fused norms, FastConvBlocks, cfg's levers (module docstring)."""

    def __init__(self, *, pad_channels: bool = False, fused_pad: bool = False, conv_impl: str = "cudnn",
                 checkpoint: bool = False):
        super().__init__(checkpoint=checkpoint)
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl: {conv_impl!r} is not one of {', '.join(CONV_IMPLS)}")
        self.pad_channels, self.fused_pad, self.conv_impl = pad_channels, fused_pad, conv_impl

    @classmethod
    def from_config(cls, cfg) -> "FastBlocks":
        return cls(pad_channels=cfg.pad_channels, fused_pad=cfg.fused_pad, conv_impl=cfg.conv_impl,
                   checkpoint=cfg.checkpoint_activations)

    def norm_act(self, kind: str, channels: int, act: str) -> nn.Module:
        if kind == "instance" and act in ACT_CODES:  # what the fused kernels implement
            return FusedNormAct(channels, act)
        return NormAct(kind, channels, act)

    def reflect_pad(self, amount: int) -> nn.Module:
        return ReflectPad2d(amount) if self.fused_pad else nn.ReflectionPad2d(amount)

    def block(self, conv: nn.Module, norm_act: nn.Module, **kw) -> FastConvBlock:
        pad_in = pad_out = 0
        if self.pad_channels and conv.groups == 1:
            pad_in = _round_up(conv.in_channels, CHANNEL_MULTIPLE) - conv.in_channels
            pad_out = _round_up(conv.out_channels, CHANNEL_MULTIPLE) - conv.out_channels
        block = FastConvBlock(conv, norm_act, pad_in=pad_in, pad_out=pad_out, checkpoint=self.checkpoint, **kw)
        if self.conv_impl == "triton" and isinstance(norm_act, FusedNormAct) and _takes_conv_norm_act(block):
            block.impl = "triton"
        return block

    def link(self, producer: FastConvBlock, consumer: FastConvBlock, shared: bool = False) -> nn.Module:
        # Defer a norm into the next conv's prologue where that conv reads
        # nothing else: no pad or upsampling between, zero padding of its own.
        if (
            self.conv_impl == "triton" and not shared and producer.impl == "triton"
            and producer.norm_act.kind == "instance" and isinstance(producer.dropout, nn.Identity)
            and producer.pad_out == 0 and isinstance(consumer.pad, nn.Identity)
            and isinstance(consumer.upsample, nn.Identity) and consumer.pad_in == 0
            and _takes_conv_norm_act(consumer)
        ):
            producer.defer = True
            consumer.impl = "triton"
        # Move the consumer's reflect pad into the producer's fused norm.
        if (
            self.fused_pad and producer.impl == "cudnn" and isinstance(producer.norm_act, FusedNormAct)
            and isinstance(producer.dropout, nn.Identity) and isinstance(consumer.upsample, nn.Identity)
            and isinstance(consumer.pad, ReflectPad2d)
        ):
            pad = tuple(consumer.pad.padding)
            producer.norm_act.pad_output(pad)
            producer.out_pad = pad
            consumer.pad = nn.Identity()
            return Crop(pad)
        return nn.Identity()


def lever_counts(model: nn.Module) -> dict[str, int]:
    """What the levers changed in model: blocks per kind of change."""
    blocks = [m for m in model.modules() if isinstance(m, FastConvBlock)]
    return {
        "pad_in": sum(b.pad_in > 0 for b in blocks),
        "pad_out": sum(b.pad_out > 0 for b in blocks),
        "reflect_pad": sum(isinstance(b.pad, ReflectPad2d) for b in blocks),
        "fused_pad": sum(any(b.out_pad) for b in blocks),
        "conv_norm_act": sum(b.impl == "triton" for b in blocks),
        "deferred": sum(b.defer for b in blocks),
    }
