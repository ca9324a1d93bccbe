"""What a run leaves to look at: a JSONL log, TensorBoard scalars (when
installed) and sample grids (input | output | target). The loss-curve PNGs
are drawn from the log by `pix2pix_fast.plots.plot_training_log`.

Log records are one JSON object per line in <run_dir>/log.jsonl:
  {"step", "epoch", "loss_D", "loss_G_GAN", "loss_G_L1", "lr", "time"} per log interval,
  {"step", "epoch", "eval": {"l1", "psnr", "ssim", "l1_copy_input"}} per validation.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pix2pix_fast.data.imageio import write_image
from pix2pix_fast.fileio import write_error, write_text


class RunLog:
    """Append-only JSONL log (+ TensorBoard when importable)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time() - self._t0, 3)}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: one line naming the log
            raise write_error(self.path, e) from None
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in _flatten(record).items():
                if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records past the checkpoint's step (and any line a crash
        cut short) so the log has no duplicates."""
        from pix2pix_fast.plots import read_run_log

        records, _ = read_run_log(self.path)
        kept = [r for r in records if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
