"""Plots of a run's log.jsonl: the loss curves the trainer draws at the end of a
run and the evaluation report shows. Below both `train/` and `eval/`."""
from __future__ import annotations

import os
from pathlib import Path

from pix2pix_fast.fileio import atomic_write
from pix2pix_fast.runlog import LOSS_KEYS as _LOSS_KEYS
from pix2pix_fast.runlog import read_run_log

__all__ = ["plot_training_log", "read_run_log"]

def plot_training_log(
    log_path: str | os.PathLike, out_dir: str | os.PathLike, *, notes: list[str] | None = None
) -> list[Path]:
    """loss_curves.png (losses and learning rate over steps) and metrics_curves.png
    (validation metrics over steps) from a run's log.jsonl; returns the files written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records, bad = read_run_log(log_path)
    if notes is not None:
        if not records:
            notes.append(f"no training log at {log_path}: no training plots")
        if bad:
            notes.append(f"{bad} unreadable line(s) in {log_path} skipped")
    out_dir = Path(out_dir)
    written: list[Path] = []

    losses = [r for r in records if any(k in r for k in _LOSS_KEYS)]
    if losses:
        has_lr = any("lr" in r for r in losses)
        fig = Figure(figsize=(7, 6 if has_lr else 4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2 if has_lr else 1, 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        for key in _LOSS_KEYS:
            pts = [(r["step"], r[key]) for r in losses if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=key)
        values = [r[k] for r in losses for k in _LOSS_KEYS if isinstance(r.get(k), (int, float))]
        if values and min(values) > 0:
            ax.set_yscale("log")  # hinge losses can reach 0 or below: linear then
        ax.set_ylabel("loss")
        ax.set_title("training losses")
        ax.legend()
        if has_lr:
            pts = [(r["step"], r["lr"]) for r in losses if isinstance(r.get("lr"), (int, float))]
            axes[1].plot(*zip(*pts), color="gray")
            axes[1].set_ylabel("learning rate")
        axes[-1].set_xlabel("step")
        fig.tight_layout()
        p = out_dir / "loss_curves.png"
        with atomic_write(p) as f:
            fig.savefig(f, format="png", dpi=100)
        written.append(p)

    evals = [r for r in records if isinstance(r.get("eval"), dict)]
    keys = sorted({k for r in evals for k, v in r["eval"].items() if isinstance(v, (int, float))})
    if evals and keys:
        fig = Figure(figsize=(4 * len(keys), 3.5))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            pts = [(r["step"], r["eval"][key]) for r in evals if isinstance(r["eval"].get(key), (int, float))]
            ax.plot(*zip(*pts), marker="o")
            ax.set_title(key)
            ax.set_xlabel("step")
        fig.suptitle("validation metrics over training")
        fig.tight_layout()
        p = out_dir / "metrics_curves.png"
        with atomic_write(p) as f:
            fig.savefig(f, format="png", dpi=100)
        written.append(p)
    return written
