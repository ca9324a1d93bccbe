"""Which device a run uses: one rule for training, inference, the demo and the bench."""
from __future__ import annotations

import torch

from pix2pix_fast.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; "cuda" without a GPU is a ConfigError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"--device: {device!r} is not auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: {device!r} is not auto, cpu or cuda")
    return dev
