"""What a resumed run may change: one rule for `train --resume` and `Trainer(cfg, resume=...)`.

A resumed run keeps its checkpoint's config, except the run-control options
in RESUMABLE_OVERRIDES (how long, how often, where, on what device and
backend). Its run folder is the one given, or else the folder the checkpoint
lies in; the paths stored inside a checkpoint are never used to write.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields
from pathlib import Path

from pix2pix_fast.checkpoint import load_config
from pix2pix_fast.config import TrainConfig
from pix2pix_fast.errors import ConfigError

__all__ = ["RESUMABLE_OVERRIDES", "resumed_config", "check_resumable"]

RESUMABLE_OVERRIDES = frozenset({
    "max_steps", "epochs", "epochs_decay", "log_every", "sample_every", "save_every", "eval_every",
    "loader_threads", "device", "output_dir", "name", "compile", "backend", "precision",
    "cuda_graph", "cudnn_benchmark", "pad_channels", "fused_pad", "conv_impl", "checkpoint_activations",
    "validation", "val_runtime", "cpu_channels_last", "cpu_compile",
    # Per rank: a run resumed on another number of ranks keeps its global batch
    # (--batch-size x ranks), which the trainer checks.
    "batch_size",
})


def resumed_config(path: str | Path, cfg: TrainConfig, given: Collection[str]) -> TrainConfig:
    """The checkpoint's config with the options in `given` (names of cfg's fields the user set) taken
    from cfg; an option outside RESUMABLE_OVERRIDES that differs is a ConfigError."""
    stored = load_config(path)
    _refuse_changes(stored, cfg, set(given), path)
    kept = set(given) & RESUMABLE_OVERRIDES
    if kept & {"output_dir", "name"}:  # the run folder is given whole, or not at all
        kept |= {"output_dir", "name"}
    return stored.replace(**{k: getattr(cfg, k) for k in kept})


def check_resumable(cfg: TrainConfig, path: str | Path) -> None:
    """`cfg` differs from the checkpoint's config in RESUMABLE_OVERRIDES only (else a ConfigError)."""
    _refuse_changes(load_config(path), cfg, {f.name for f in fields(TrainConfig)}, path)


def _refuse_changes(stored: TrainConfig, cfg: TrainConfig, names: set[str], path) -> None:
    changed = sorted(k for k in names - RESUMABLE_OVERRIDES if getattr(cfg, k) != getattr(stored, k))
    if changed:
        allowed = ", ".join(sorted("--" + k.replace("_", "-") for k in RESUMABLE_OVERRIDES))
        raise ConfigError(f"--{changed[0].replace('_', '-')} differs from the checkpoint's config ({path}); a resumed run keeps "
                          f"its config (only {allowed} may change)")
