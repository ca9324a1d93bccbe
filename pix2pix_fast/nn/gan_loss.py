"""``GANLoss``: drop-in for the reference implementation's ``GANLoss`` criterion.

Same constructor (``gan_mode``, ``target_real_label``, ``target_fake_label``),
the same ``real_label`` / ``fake_label`` buffers and the same call
(``loss(prediction, target_is_real)``).  vanilla (BCE with logits) and lsgan
(MSE) run on the fused ``pix2pix_fast.ops.patchgan_loss`` (one pass over the
patch map computing the loss and its gradient) when the fake target is 0, the
only fake target the fused op has; every other case (wgangp, a non-zero fake
label) computes exactly what the reference computes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pix2pix_fast.ops.patchgan_loss import gan_loss_from_targets, patchgan_loss

__all__ = ["GANLoss", "GAN_MODES", "FUSED_GAN_MODES"]

GAN_MODES = ("vanilla", "lsgan", "wgangp")
FUSED_GAN_MODES = ("vanilla", "lsgan")


class GANLoss(nn.Module):
    """Mean GAN loss of a discriminator's output against a real or fake target.

    gan_mode: "vanilla" (BCE with logits), "lsgan" (MSE) or "wgangp"
    (``-mean`` for real, ``mean`` for fake).  The fused path returns an fp32
    scalar; the others return the prediction's dtype, as the reference.
    ``fused`` tells which path a call takes.
    """

    def __init__(self, gan_mode: str, target_real_label: float = 1.0, target_fake_label: float = 0.0):
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {', '.join(GAN_MODES)}, got {gan_mode!r}")
        self.gan_mode = gan_mode
        self.register_buffer("real_label", torch.tensor(float(target_real_label)))
        self.register_buffer("fake_label", torch.tensor(float(target_fake_label)))
        self._sync_labels()

    def _sync_labels(self) -> None:
        # Python copies of the buffers: reading a tensor's value in forward
        # would synchronise the device and break torch.compile graphs.
        self._real = float(self.real_label)
        self._fake = float(self.fake_label)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_labels()

    @property
    def fused(self) -> bool:
        return self.gan_mode in FUSED_GAN_MODES and self._fake == 0.0

    def forward(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        if self.gan_mode == "wgangp":
            return -prediction.mean() if target_is_real else prediction.mean()
        if self.fused:
            return patchgan_loss(prediction, bool(target_is_real), self.gan_mode, real_label=self._real)
        target = (self.real_label if target_is_real else self.fake_label).to(prediction.dtype)
        return gan_loss_from_targets(prediction, target.expand_as(prediction), None, self.gan_mode)

    def extra_repr(self) -> str:
        return f"gan_mode={self.gan_mode!r}, real_label={self._real}, fake_label={self._fake}, fused={self.fused}"
