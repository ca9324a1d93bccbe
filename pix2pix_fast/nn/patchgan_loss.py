"""PatchGANLoss: the fused PatchGAN loss (``pix2pix_fast.ops.patchgan_loss``) as a module."""
from typing import Optional, Tuple, Union

import torch
from torch import nn

from pix2pix_fast.ops.patchgan_loss import MODES, patchgan_loss

__all__ = ["PatchGANLoss"]


class PatchGANLoss(nn.Module):
    """Mean GAN loss over a discriminator's patch map, as an fp32 scalar.

    mode: "vanilla" (BCE with logits), "lsgan" (MSE) or "hinge".
    real_label: target of real patches (fake patches: 0).
    smoothing: one-sided label smoothing of the discriminator's real targets:
        a float (fixed target) or (lo, hi) (a fresh uniform draw per patch).
    flip_prob: probability that a sample's real/fake target is swapped in the
        discriminator's loss.
    The generator's loss (``for_discriminator=False``) never smooths or flips.
    Random draws come from torch's default generator on the logits' device
    (capturable in a CUDA graph; fresh on every call and replay).
    """

    def __init__(
        self,
        mode: str = "vanilla",
        real_label: float = 1.0,
        smoothing: Union[None, float, Tuple[float, float]] = None,
        flip_prob: float = 0.0,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if smoothing is not None and not isinstance(smoothing, (int, float)):
            smoothing = tuple(float(s) for s in smoothing)
            if len(smoothing) != 2 or smoothing[0] > smoothing[1]:
                raise ValueError(f"smoothing must be None, a float or a (lo, hi) pair with lo <= hi, got {smoothing!r}")
        self.mode = mode
        self.real_label = float(real_label)
        self.smoothing = smoothing
        self.flip_prob = float(flip_prob)

    def forward(
        self, logits: torch.Tensor, target_is_real: bool, for_discriminator: bool = True,
        seed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return patchgan_loss(
            logits, target_is_real, self.mode, self.real_label, self.smoothing, self.flip_prob,
            for_discriminator, seed=seed,
        )

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, real_label={self.real_label}, smoothing={self.smoothing}, "
                f"flip_prob={self.flip_prob}")
