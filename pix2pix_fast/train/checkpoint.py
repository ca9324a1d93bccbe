"""Checkpoints that survive a crash.

A checkpoint is a plain dict of tensors and Python scalars (so it loads with
`torch.load(weights_only=True)`):

    {"format": FORMAT, "version": VERSION, "config": TrainConfig.to_dict(),
     "G": ..., "D": ..., "opt_G": ..., "opt_D": ...,   # state dicts
     "step": int, "epoch": int, "batch_in_epoch": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}}

Writes go to a temporary file in the same folder, are fsynced, then renamed
over the target, so a crash mid-write leaves the previous file intact.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "pix2pix-fast-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A missing, corrupt or incompatible checkpoint; the CLI prints it as one line."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus format tags) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint; raise CheckpointError with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable pix2pix-fast checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pix2pix-fast checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    for key in ("config", "G"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return state


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: str | Path) -> None:
    """load_state_dict(strict) that reports an architecture mismatch in one line."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(
            f"checkpoint {path} was saved for a different architecture ({what}: {detail[:300]})"
        ) from None


def portable_opt_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state with a tensor LR turned into a float (so eager and fast checkpoints interchange)."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
    return sd


def load_opt_state(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state into `opt`, whichever backend wrote it.

    `load_state_dict` would also replace the optimizer's own flags
    (capturable, fused, foreach, a tensor LR) with the writer's: an eager
    checkpoint would leave a fast-backend Adam uncapturable with a tensor LR,
    which Adam refuses. The flags stay this optimizer's; only the LR value is
    taken. `step` takes the form this optimizer needs (a device tensor when
    capturable or fused, a CPU scalar otherwise) and the moments take each
    parameter's memory layout (fused Adam needs them to match).
    """
    own = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(sd)
    for group, flags in zip(opt.param_groups, own):
        lr_value = float(group["lr"])
        group.update(flags)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr_value)
        else:
            group["lr"] = lr_value
        on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if key == "step":
                    state[key] = torch.tensor(float(value), dtype=torch.float32,
                                              device=p.device if on_device else "cpu")
                elif isinstance(value, torch.Tensor) and value.shape == p.shape:
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms without directory fds
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
