"""Weight initialisation as the reference `init_weights` (networks.py)."""
from __future__ import annotations

from torch import nn
from torch.nn import init

from pix2pix_fast.models.layers import check_choice

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def init_weights(module: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights in place; return `module`.

    Conv and linear weights: normal -> N(0, gain); xavier -> xavier_normal(gain);
    kaiming -> kaiming_normal(a=0, fan_in) (gain unused, as the reference);
    orthogonal -> orthogonal(gain). Their biases -> 0. BatchNorm weights ->
    N(1, gain), biases -> 0. Other modules (e.g. InstanceNorm) keep their
    defaults. Deterministic under torch.manual_seed: modules are visited in
    registration order.
    """
    check_choice("init_type", init_type)
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            if init_type == "normal":
                init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            init.normal_(m.weight, 1.0, gain)
            init.zeros_(m.bias)
    return module
