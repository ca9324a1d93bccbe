"""Which device a run uses: one rule for training, inference, the demo and the bench.

`auto` takes CUDA when there is a GPU, then Apple's MPS (the eager path: the
fast backend's kernels and CUDA graphs are CUDA-only), then the CPU. MPS is
selected by this rule and tested with MPS faked; it has not run on real Apple
hardware.
"""
from __future__ import annotations

import torch

from pix2pix_fast.errors import ConfigError

__all__ = ["DEVICES", "resolve_device", "mps_available"]

DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device takes


def mps_available() -> bool:
    """Apple's Metal backend is built into this torch and usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available, else mps if available, else cpu; an unavailable one is a ConfigError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"--device: {device!r} is not {', '.join(DEVICES)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if dev.type == "mps" and not mps_available():
        raise ConfigError("--device mps: no Apple MPS device is available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device: {device!r} is not {', '.join(DEVICES)}")
    return dev
