"""What keeps a run going when the fast path fails on a user's GPU.

Two parts:
- `fast_backend_problem(device)`: before training, `--backend auto` checks
  what the fast step needs (Triton importable, its kernels compiling and
  running on this GPU) and says why not, so auto picks the eager step.
- `Snapshot`: while the fast step has not settled (its first steps compile,
  warm up and capture the CUDA graph), the trainer takes a snapshot before
  each step. If the step raises, the snapshot is restored (weights, Adam
  state, RNG), the trainer prints one line naming what failed and what the
  run continues on, and the same step runs again there: no step is lost or
  repeated. Once settled, no more snapshots are taken (they cost a copy of
  the weights and the Adam moments).

The fallback order (`next_mode`): a failed compile drops torch.compile, a
failed capture drops the CUDA graph, any other failure of the fast step
goes to the eager reference step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from pix2pix_fast import checkpoint as ckpt


@dataclass(frozen=True)
class Mode:
    """How the training step runs: the backend and, for the fast one, its switches."""

    backend: str  # "fast" | "eager"
    compile: bool = False
    graph: bool = False

    def describe(self) -> str:
        if self.backend == "eager":
            return "the eager backend"
        parts = ["compiled" if self.compile else "not compiled", "CUDA graph" if self.graph else "no CUDA graph"]
        return f"the fast backend ({', '.join(parts)})"


def next_mode(mode: Mode, stage: str) -> Mode:
    """Where the run continues after `stage` ("compile", "warm-up", "capture") failed in `mode`."""
    if mode.backend == "fast" and stage == "compile" and mode.compile:
        return replace(mode, compile=False)
    if mode.backend == "fast" and stage == "capture" and mode.graph:
        return replace(mode, graph=False)
    return Mode("eager")


def fast_backend_problem(device: torch.device) -> str | None:
    """Why the fast backend cannot run on `device`, or None when it can.

    Launches one fused op on a tiny tensor: this imports Triton, compiles a
    kernel for this GPU and runs it, all before the first training step.
    """
    from pix2pix_fast.ops._common import triton_available

    if device.type != "cuda":
        return "the fast backend needs a CUDA device"
    if not triton_available():
        return "triton is not installed"
    try:
        from pix2pix_fast.ops.instance_norm_act import instance_norm_act, instance_norm_act_ref

        x = torch.randn(1, 8, 5, 7, device=device)
        got = instance_norm_act(x)
        want = instance_norm_act_ref(x)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return "a Triton kernel gave wrong results on this GPU"
    except Exception as e:  # any failure here means: do not use the fast path
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        return f"a Triton kernel failed to compile or run on this GPU ({type(e).__name__}: {first_line})"
    return None


class Snapshot:
    """Copies of the weights, optimizer states and RNG states, to undo a failed step."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, opt_G, opt_D):
        self.G = _clone(G.state_dict())
        self.D = _clone(D.state_dict())
        self.opt_G = _clone(opt_G.state_dict())
        self.opt_D = _clone(opt_D.state_dict())
        self.rng = ckpt.rng_state()

    def restore(self, G: torch.nn.Module, D: torch.nn.Module, opt_G, opt_D) -> None:
        """Load the snapshot into these models and optimizers (the same or rebuilt ones)."""
        G.load_state_dict(self.G)
        D.load_state_dict(self.D)
        for opt, sd in ((opt_G, self.opt_G), (opt_D, self.opt_D)):
            if sd["state"]:
                ckpt.load_opt_state(opt, _clone(sd))
            else:  # before the first step: Adam initialises its state lazily
                opt.state.clear()
        ckpt.set_rng_state(self.rng)


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _clone(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj
