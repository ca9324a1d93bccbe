"""GAN losses for the eager (reference) training step.

As the reference implementation computes them (BCE with logits / MSE against
a target map, its targets drawn with torch's RNG), plus hinge, one-sided label
smoothing and label flipping; the formula is the package's one
(`ops.patchgan_loss.gan_loss_from_targets`). The fast trainer uses the fused
`pix2pix_fast.ops.patchgan_loss` instead; both compute the same function.
Both steps take G's adversarial term (GAN loss summed over a multi-scale D's
scales, plus pix2pixHD's feature matching) from `generator_gan_loss`.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch
from torch import nn

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.models import scale_logits
from pix2pix_fast.ops.patchgan_loss import gan_loss_from_targets


def gan_loss(
    logits: torch.Tensor,
    target_is_real: bool,
    mode: str,
    *,
    for_discriminator: bool = True,
    real_label: float = 1.0,
    real_label_min: float = -1.0,
    flip_prob: float = 0.0,
) -> torch.Tensor:
    """Mean GAN loss over a patch map (N, 1, H, W); fp32 result.

    Smoothing (`real_label` < 1, or a range from `real_label_min`) and
    flipping (`flip_prob`, per sample) apply only to the discriminator's loss.
    """
    logits = logits.float()
    if not for_discriminator:
        return gan_loss_from_targets(logits, torch.ones_like(logits), None, mode, for_discriminator=False)

    n = logits.shape[0]
    shape = (n,) + (1,) * (logits.dim() - 1)
    is_real = torch.full(shape, float(target_is_real), device=logits.device)
    if flip_prob > 0:
        flip = torch.rand(shape, device=logits.device) < flip_prob
        is_real = torch.where(flip, 1.0 - is_real, is_real)
    target = None
    if mode != "hinge":
        if real_label_min >= 0:
            real = real_label_min + (real_label - real_label_min) * torch.rand_like(logits)
        else:
            real = torch.full_like(logits, real_label)
        target = is_real * real
    return gan_loss_from_targets(logits, target, is_real.reshape(n) > 0.5, mode)


def feature_matching_loss(fake: list, real: list) -> torch.Tensor:
    """pix2pixHD's feature-matching loss (fp32): per scale, the L1 distance between D's intermediate
    features on the fake and on the real pair (real ones detached), weighted 4 / (intermediate layers)
    (pix2pixHD's 4 / (n_layers_D + 1)) and 1 / (number of scales).

    fake, real: per scale, the list of D's layer outputs (the last, the logit map, is not matched).
    """
    total = torch.zeros((), device=fake[0][0].device)
    for f_scale, r_scale in zip(fake, real, strict=True):
        weight = 4.0 / (len(f_scale) - 1) / len(fake)
        for f, r in zip(f_scale[:-1], r_scale[:-1], strict=True):
            total = total + weight * (f.float() - r.detach().float()).abs().mean()
    return total


def generator_gan_loss(D: nn.Module, fake_pair: torch.Tensor, real_pair: Callable[[], torch.Tensor],
                       loss: Callable[[torch.Tensor], torch.Tensor], lambda_feat: float,
                       autocast: Callable[[], ContextManager]) -> torch.Tensor:
    """G's adversarial loss, what both steps add to the L1 term: `loss` (G's GAN loss of one logit map)
    summed over D's scales on fake_pair, plus lambda_feat x the feature-matching loss against D's
    features on real_pair() (called only then; D runs on it without gradients). D runs under autocast()."""
    match = lambda_feat > 0
    with autocast():
        pred = D(fake_pair, features=match)
    total = sum(loss(p) for p in ([f[-1] for f in pred] if match else scale_logits(pred)))
    if match:
        with torch.no_grad(), autocast():
            real = D(real_pair(), features=True)
        total = total + lambda_feat * feature_matching_loss(pred, real)
    return total


def gan_loss_kwargs(cfg: TrainConfig) -> dict:
    """The smoothing/flipping options of the discriminator loss, from a config."""
    return {
        "real_label": cfg.real_label,
        "real_label_min": cfg.real_label_min,
        "flip_prob": cfg.label_flip_prob,
    }


def instance_noise_std(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Std of the noise added to D's inputs: linear decay from cfg.instance_noise to 0."""
    if cfg.instance_noise <= 0:
        return 0.0
    horizon = cfg.instance_noise_steps or total_steps
    return cfg.instance_noise * max(0.0, 1.0 - step / max(1, horizon))
