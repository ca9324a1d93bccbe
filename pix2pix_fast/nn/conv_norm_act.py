"""ConvNormAct: convolution + instance norm + activation on the fused op
(``pix2pix_fast.ops.conv_norm_act``)."""
import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from pix2pix_fast.ops._common import ACT_CODES
from pix2pix_fast.ops.conv_norm_act import InputNormAct, PendingNormAct, conv_norm_act

__all__ = ["ConvNormAct", "PendingNormAct", "InputNormAct"]

_NORMS = ("instance", "none")


class ConvNormAct(nn.Module):
    """``act(InstanceNorm(Conv2d(x)))`` (norm without affine, as in pix2pix), fused.

    Parameters are named and initialised as ``nn.Conv2d``'s (``weight``,
    ``bias``), so a Conv2d's state dict loads into it.

    ``forward(x)`` takes a tensor or the :class:`PendingNormAct` of a previous
    ``ConvNormAct(defer_output=True)``, whose norm + activation it applies
    while loading (no separate pass over that activation).  With
    ``defer_output=True`` it returns a :class:`PendingNormAct` itself (only
    with ``norm="instance"``); feed it to the next ConvNormAct or call its
    ``materialize()``.  Use channels_last inputs and weights
    (``model.to(memory_format=torch.channels_last)``) for the fast path.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 4,
        stride: int = 2,
        padding: int = 1,
        norm: str = "instance",
        act: str = "leaky_relu",
        negative_slope: float = 0.2,
        bias: bool = True,
        eps: float = 1e-5,
        defer_output: bool = False,
    ):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if act not in ACT_CODES:
            raise ValueError(f"act must be one of {sorted(ACT_CODES)}, got {act!r}")
        if negative_slope < 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
        if defer_output and norm != "instance":
            raise ValueError("defer_output=True needs norm='instance' (there is nothing to defer otherwise)")
        if min(in_ch, out_ch, kernel_size, stride) < 1 or padding < 0:
            raise ValueError(f"bad conv geometry: in_ch={in_ch}, out_ch={out_ch}, kernel_size={kernel_size}, "
                             f"stride={stride}, padding={padding}")
        self.in_ch, self.out_ch = int(in_ch), int(out_ch)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.norm, self.act, self.negative_slope = norm, act, float(negative_slope)
        self.eps, self.defer_output = float(eps), bool(defer_output)
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_ch * self.kernel_size * self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Union[Tensor, PendingNormAct], in_norm: Optional[InputNormAct] = None):
        return conv_norm_act(
            x, self.weight, self.bias, self.stride, self.padding, self.act, self.negative_slope, self.eps,
            in_norm, norm=self.norm == "instance", defer=self.defer_output,
        )

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, norm={self.norm!r}, act={self.act!r}, "
                f"negative_slope={self.negative_slope}, bias={self.bias is not None}, "
                f"defer_output={self.defer_output}")
