"""Checkpoints that survive a crash and say when they are damaged.

A checkpoint is a plain dict of tensors and Python scalars (so it loads with
`torch.load(weights_only=True)`):

    {"format": FORMAT, "version": VERSION, "config": TrainConfig.to_dict(),
     "G": ..., "D": ..., "opt_G": ..., "opt_D": ...,   # state dicts
     "step": int, "epoch": int, "batch_in_epoch": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "sha256": hex digest of everything else}

Writes go through `pix2pix_fast.fileio.atomic_write` (temporary file in the
same folder, fsync, rename), so a crash mid-write leaves the previous file
intact. "sha256" covers every key, scalar and tensor byte of the payload
(`payload_digest`) and is checked on load: a flipped byte anywhere in the
data is an error naming the file, not a silently different model. Files
without it (written by earlier versions) load as before.

A checkpoint's stored `output_dir` and `name` say where it was trained; they
are never used to write: `config_of` replaces them with the folder the file
sits in.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pix2pix_fast.errors import CheckpointError, UserError
from pix2pix_fast.fileio import atomic_write

FORMAT = "pix2pix-fast-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus format tags and its digest) to `path`."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    state["sha256"] = payload_digest(state)
    with atomic_write(path) as f:
        torch.save(state, f)
    return path


def torch_load(path: str | Path, what: str, error: type[UserError] | None = None,
               map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) of a file a user gave; `error` (CheckpointError) in one line.

    A file holding Python objects beyond tensors and plain data is refused
    unread, and the message says which object."""
    error = error or CheckpointError
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise error(_load_failure(path, what, e)) from None


def _load_failure(path: Path, what: str, e: Exception) -> str:
    """One line for a failed torch.load: the unpickler's reason itself, not torch's preamble."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        text = text.split(". Please use", 1)[0]
    reason = " ".join(text.split()) or type(e).__name__
    if reason.startswith("Unsupported global"):
        return f"{path}: refused to load: it holds a Python object that is not plain data ({reason}); nothing was run"
    return f"{path}: not a readable {what} ({reason[:300]})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint (format, version, digest); raise CheckpointError with one line."""
    path = Path(path)
    state = torch_load(path, "pix2pix-fast checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pix2pix-fast checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    digest = state.pop("sha256", None)
    if digest is not None and digest != payload_digest(state):
        raise CheckpointError(f"{path}: checkpoint is damaged (its content does not match the checksum it was "
                              "saved with); use an earlier checkpoint")
    for key in ("config", "G"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a mapping")
    return state


def payload_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over every key, scalar and tensor (dtype, shape, bytes) of `state`, in order."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h, x: Any) -> None:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(x, Mapping):
        h.update(f"D{len(x)};".encode())
        for k, v in x.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__[0]}{len(x)};".encode())
        for v in x:
            _feed(h, v)
    else:
        h.update(f"{type(x).__name__}:{x!r};".encode())


def config_of(state: dict[str, Any], path: str | Path):
    """The checkpoint's TrainConfig, its run folder taken from where the file lies (never from inside it)."""
    from pix2pix_fast.config import ConfigError, TrainConfig

    folder = Path(path).absolute().parent
    stored = dict(state["config"])
    stored.update(output_dir=str(folder.parent), name=folder.name or "run")
    try:
        return TrainConfig.from_dict(stored)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read its config ({e})") from None


def load_config(path: str | Path):
    """The TrainConfig a checkpoint was trained with (run folder: the checkpoint's own)."""
    return config_of(load_checkpoint(path), path)


def check_fits(module_on_meta: torch.nn.Module, state_dict: Mapping[str, Any], what: str, path: str | Path) -> None:
    """CheckpointError naming the first key or shape where `state_dict` differs from the module's.

    The module is built on the meta device, so a config that asks for a huge
    network costs nothing before this check."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"checkpoint {path}: its {what} entry is not a state dict")
    expected = module_on_meta.state_dict()
    for key, want in expected.items():
        got = state_dict.get(key)
        if got is None:
            raise CheckpointError(f"checkpoint {path} was saved for a different architecture ({what}: no {key!r}, "
                                  "which its config needs)")
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(f"checkpoint {path} was saved for a different architecture ({what}: {key!r} "
                                  f"is {shape}, its config needs {tuple(want.shape)})")
    extra = next((k for k in state_dict if k not in expected), None)
    if extra is not None:
        raise CheckpointError(f"checkpoint {path} was saved for a different architecture ({what}: unexpected "
                              f"{extra!r})")


def check_config_fits(build, cfg, weights: Any, what: str, path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """The checkpoint's `weights`, checked against `build(cfg, **kwargs)` on the meta device.

    So nothing is allocated for a config the file does not match (a 2 KB file
    asking for a huge network is one line, not gigabytes). A "_orig_mod."
    prefix (a state dict of a torch.compile'd module) is dropped."""
    if isinstance(weights, Mapping):
        weights = {k.removeprefix("_orig_mod."): v for k, v in weights.items()}
    try:
        with torch.device("meta"):
            skeleton = build(cfg, **kwargs)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: cannot build its {what} ({e})") from None
    check_fits(skeleton, weights, what, path)
    return weights


def build_loaded(build, cfg, weights: Any, what: str, path: str | Path, **kwargs: Any) -> torch.nn.Module:
    """`build(cfg, **kwargs)` holding the checkpoint's `weights` (CheckpointError in one line)."""
    weights = check_config_fits(build, cfg, weights, what, path, **kwargs)
    module = build(cfg, **kwargs)
    load_weights(module, weights, what, path)
    return module


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
