"""``ReflectPad2d``: reflect padding with Triton forward/backward kernels on CUDA."""

from typing import Sequence, Union

from torch import Tensor, nn

from pix2pix_fast.ops._common import normalize_pad
from pix2pix_fast.ops.reflect_pad import reflect_pad

__all__ = ["ReflectPad2d"]


class ReflectPad2d(nn.Module):
    """Drop-in for ``nn.ReflectionPad2d(padding)`` on 4-D tensors.

    ``padding``: an int or (left, right, top, bottom).  The output keeps the
    input's memory format (NCHW or channels_last).
    """

    def __init__(self, padding: Union[int, Sequence[int]]):
        super().__init__()
        self.padding = normalize_pad(padding)

    def forward(self, x: Tensor) -> Tensor:
        return reflect_pad(x, self.padding)

    def extra_repr(self) -> str:
        return f"{self.padding}"
