"""What every training step is: the interface the trainer, the bench and the tests use.

Three steps satisfy it: `eager.EagerStep` (the reference), `fast.FastStep`
(fused kernels, compile, one CUDA graph) and `fallback.FallbackStep` (the
fast step that continues on a simpler one if its compile, warm-up or capture
fails). `build.build_step` makes the right one for a config, a device and a
world.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn as nn

from pix2pix_fast.runlog import LOSS_KEYS

LOSS_NAMES = LOSS_KEYS  # the order of the (3,) losses a step returns


class TrainStep(Protocol):
    """One D+G update per call on the models it holds."""

    backend: str  # "eager" | "fast": what runs now
    G: nn.Module
    D: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer

    @property
    def settled(self) -> bool:
        """True once a failure can no longer come from setting the step up (compile, capture)."""

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        """One step; the (3,) fp32 losses (LOSS_NAMES) on the device, possibly a buffer the next call rewrites."""

    def set_lr(self, lr: float) -> None:
        """The learning rate of both optimizers from now on."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep of the step beyond models and optimizers (fp16's loss scale)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` gave (keys it does not know are ignored)."""


def set_lr(optimizers, lr: float) -> None:
    """Set `lr` in every param group; a tensor LR (read by a captured Adam) is filled in place."""
    for opt in optimizers:
        for group in opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
