"""The run log: one format, written by the trainer, read by the plots and the report.

Records are one JSON object per line in <run_dir>/log.jsonl:
  {"step", "epoch", "loss_D", "loss_G_GAN", "loss_G_L1", "lr", "global_batch", "time"} per log interval,
  {"step", "epoch", "eval": {"l1", "psnr", "ssim", "l1_copy_input"}} per validation.
`RunLog` appends them (and mirrors the numbers to TensorBoard when it is
installed); `read_run_log` reads them back, skipping a line a crash cut short.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pix2pix_fast.fileio import write_error, write_text

LOSS_KEYS = ("loss_D", "loss_G_GAN", "loss_G_L1")


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
        records, _ = read_run_log(self.path)
        kept = [r for r in records if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_run_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """Records of a run's log.jsonl and the number of unreadable lines skipped.

    A crash mid-write can leave a truncated last line; it is skipped, not fatal.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
        else:
            bad += 1
    return records, bad
