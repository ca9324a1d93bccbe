"""Learning-rate schedules as pure functions of the epoch.

A pure function needs no scheduler state to checkpoint, and the fast trainer
can write its value into a device tensor that a captured CUDA graph reads.
"""
from __future__ import annotations

import math

from pix2pix_fast.config import TrainConfig


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of cfg.lr during `epoch` (0-based), as the reference updates it per epoch."""
    if cfg.lr_policy == "linear":
        # Reference: constant for `epochs`, then linear decay over `epochs_decay`.
        return 1.0 - max(0, epoch + 1 - cfg.epochs) / float(cfg.epochs_decay + 1)
    if cfg.lr_policy == "step":
        return 0.1 ** (epoch // cfg.lr_step_epochs)
    if cfg.lr_policy == "cosine":
        total = max(1, cfg.total_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, total) / total))
    raise ValueError(f"unknown lr policy {cfg.lr_policy!r}")
