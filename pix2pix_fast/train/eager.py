"""The paper's training step in plain eager PyTorch (the reference path).

G forward; D on (A, fake) and (A, B); D update; G update with the GAN loss
plus lambda_L1 x L1. With a multi-scale D (--num-D) each GAN loss is the sum
over its scales; with --lambda-feat, G's step also runs D on (A, B) without
gradients and adds the feature-matching loss to G's GAN term. Written as the reference implementation writes it
(three D calls, D's requires_grad toggled for G's step) so it is both the
fallback on machines without a GPU and the baseline the fast path is
measured and checked against.

Under torchrun (`world`, see `distributed.py`) each backward is followed by
one average of that model's gradients over the ranks, before its optimizer
step: D's after D's loss, G's after G's loss (D is frozen then and has no
gradients to share), so each model is averaged once per step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.models import scale_logits
from pix2pix_fast.train.losses import gan_loss, gan_loss_kwargs, generator_gan_loss
from pix2pix_fast.train.step import set_lr

class EagerStep:
    """One D+G update per call; returns the step's losses as a (3,) fp32 device tensor (a TrainStep)."""

    backend = "eager"
    settled = True  # nothing to set up: a failure is a failure of training itself

    def __init__(self, cfg: TrainConfig, G: nn.Module, D: nn.Module, opt_G, opt_D, autocast_dtype: torch.dtype | None,
                 world=None):
        # world: a distributed.World whose ranks share the gradients (None: this process alone).
        self.cfg, self.G, self.D = cfg, G, D
        self.world = world
        self.opt_G, self.opt_D = opt_G, opt_D
        self.autocast_dtype = autocast_dtype
        self.d_kwargs = gan_loss_kwargs(cfg)
        self.scaler = (
            torch.amp.GradScaler(enabled=True) if autocast_dtype == torch.float16 else None
        )

    def set_lr(self, lr: float) -> None:
        set_lr((self.opt_G, self.opt_D), lr)

    def state_dict(self) -> dict:
        """fp16's loss scale: without it a resume restarts at 2**16 and skips steps."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        cfg = self.cfg
        use_gan = cfg.gan_mode != "none"
        with self._autocast():
            fake_B = self.G(real_A)

        loss_D = torch.zeros((), device=real_A.device)
        if use_gan:
            set_requires_grad(self.D, True)
            self.opt_D.zero_grad(set_to_none=True)
            with self._autocast():
                pred_fake = self.D(_noisy(torch.cat([real_A, fake_B.detach()], 1), noise_std))
                pred_real = self.D(_noisy(torch.cat([real_A, real_B], 1), noise_std))
            loss_D = 0.5 * (
                sum(gan_loss(p, False, cfg.gan_mode, **self.d_kwargs) for p in scale_logits(pred_fake))
                + sum(gan_loss(p, True, cfg.gan_mode, **self.d_kwargs) for p in scale_logits(pred_real))
            )
            self._backward_step(loss_D, self.opt_D, self.D)
            set_requires_grad(self.D, False)

        self.opt_G.zero_grad(set_to_none=True)
        loss_G_GAN = torch.zeros((), device=real_A.device)
        if use_gan:
            loss_G_GAN = generator_gan_loss(
                self.D, _noisy(torch.cat([real_A, fake_B], 1), noise_std),
                lambda: _noisy(torch.cat([real_A, real_B], 1), noise_std),
                lambda p: gan_loss(p, True, cfg.gan_mode, for_discriminator=False), cfg.lambda_feat, self._autocast)
        loss_G_L1 = F.l1_loss(fake_B.float(), real_B.float()) * cfg.lambda_l1
        self._backward_step(loss_G_GAN + loss_G_L1, self.opt_G, self.G)
        return torch.stack([loss_D.detach(), loss_G_GAN.detach(), loss_G_L1.detach()]).float()

    def _autocast(self):
        device_type = "cuda" if next(self.G.parameters()).is_cuda else "cpu"
        return torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None)

    def _backward_step(self, loss: torch.Tensor, opt, model: nn.Module) -> None:
        if self.scaler is None:
            loss.backward()
            self._average_gradients(model)
            opt.step()
        else:
            # Scaled gradients are averaged as they are: an inf on any rank becomes an
            # inf on every rank, so all ranks skip the same steps.
            self.scaler.scale(loss).backward()
            self._average_gradients(model)
            self.scaler.step(opt)
            self.scaler.update()

    def _average_gradients(self, model: nn.Module) -> None:
        if self.world is not None:
            self.world.average_gradients(model.parameters())


def _noisy(x: torch.Tensor, std: float) -> torch.Tensor:
    """Instance noise on D's input (a no-op at std 0)."""
    return x + std * torch.randn_like(x) if std > 0 else x


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Toggle a module's parameters (D is frozen during G's update, as the reference does)."""
    for p in module.parameters():
        p.requires_grad_(flag)
