"""``InstanceNormAct``: instance norm + activation (+ reflect padding) in one fused op."""

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from pix2pix_fast.ops._common import act_code, normalize_pad
from pix2pix_fast.ops.instance_norm_act import instance_norm_act

__all__ = ["InstanceNormAct"]


class InstanceNormAct(nn.Module):
    """Drop-in for ``nn.InstanceNorm2d(num_features, affine, eps)`` followed by an activation.

    ``act``: "none" | "relu" | "leaky_relu" (``negative_slope``).  With
    ``affine=True`` the parameters are ``weight`` (ones) and ``bias`` (zeros),
    as in ``nn.InstanceNorm2d``.  ``pad`` (int or (left, right, top, bottom))
    reflect-pads the output in the same pass, replacing a following
    ``nn.ReflectionPad2d(pad)``.  Always uses the statistics of the input
    (``track_running_stats=False``, as in pix2pix).  Input (N, C, H, W),
    NCHW or channels_last; the output keeps the input's memory format.
    """

    def __init__(
        self,
        num_features: int,
        affine: bool = False,
        eps: float = 1e-5,
        act: str = "leaky_relu",
        negative_slope: float = 0.2,
        pad: Union[int, Sequence[int]] = 0,
    ):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        act_code(act)
        self.num_features = int(num_features)
        self.affine = bool(affine)
        self.eps = float(eps)
        self.act = act
        self.negative_slope = float(negative_slope)
        self.pad = normalize_pad(pad)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_norm(cls, norm: nn.Module, act: str = "none", negative_slope: float = 0.2,
                  pad: Union[int, Sequence[int]] = 0) -> "InstanceNormAct":
        """The fused layer computing ``norm`` (an ``nn.InstanceNorm2d`` without running statistics,
        or an ``InstanceNormAct`` without padding) followed by ``act`` and a reflect ``pad``.

        The one way a norm becomes fused, for ``fuse()`` and the fast models alike. An affine
        norm's ``Parameter`` objects are taken over, not copied: same keys, values, device and
        identity, so a state_dict and an optimizer of the original keep working.
        """
        if isinstance(norm, InstanceNormAct):
            assert not any(norm.pad) and norm.act in ("none", act), (norm, act)
        new = cls(norm.num_features, affine=norm.affine, eps=norm.eps, act=act, negative_slope=negative_slope,
                  pad=pad)
        if norm.affine:
            new.weight, new.bias = norm.weight, norm.bias
        return new.train(norm.training)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"InstanceNormAct({self.num_features}) expects (N, {self.num_features}, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        return instance_norm_act(
            x, self.weight, self.bias, self.eps, self.act, self.negative_slope, self.pad
        )

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, affine={self.affine}, act={self.act!r}"
        if self.act == "leaky_relu":
            s += f", negative_slope={self.negative_slope}"
        if any(self.pad):
            s += f", pad={self.pad}"
        return s
