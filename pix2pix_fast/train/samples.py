"""Sample grids the trainer saves as it goes: one row per sample, input | output | target."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pix2pix_fast.data.imageio import write_image


def to_display_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, 3) uint8 for viewing (gray repeated, >3 channels cut)."""
    x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] == 2:
        x = torch.cat([x, x[:, :1]], 1)
    return x[:, :3].permute(0, 2, 3, 1).numpy()


def save_sample_grid(path: Path, real_A: torch.Tensor, fake_B: torch.Tensor, real_B: torch.Tensor) -> Path:
    """One row per sample: input | output | target."""
    cols = [to_display_uint8(t) for t in (real_A, fake_B, real_B)]
    rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(cols[0].shape[0])]
    grid = np.concatenate(rows, axis=0)
    path = Path(path)
    write_image(path, grid)
    return path
