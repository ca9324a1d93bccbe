"""What keeps a run going when the fast path fails on a user's GPU.

Two parts:
- `fast_backend_problem(device)`: before training, `--backend auto` checks
  what the fast step needs (Triton importable, its kernels compiling and
  running on this GPU) and says why not, so auto picks the eager step.
- `FallbackStep`, a TrainStep around the fast step: while that has not
  settled (its first steps compile, warm up and capture the CUDA graph), it
  takes a `Snapshot` before each step. If the step raises, the snapshot is
  restored (weights, Adam state, RNG), one line names what failed and what
  the run continues on, and the same step runs again there: no step is lost
  or repeated. Once settled, no more snapshots are taken (they cost a copy
  of the weights and the Adam moments).

The fallback order (`next_mode`): a failed compile drops torch.compile, a
failed capture drops the CUDA graph, any other failure of the fast step
goes to the eager reference step.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

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


class FallbackStep:
    """A TrainStep: the fast step, continued on the next simpler mode when it fails before settling.

    `remake(mode, parts)` makes the step of another mode around `parts`
    (None: new models for that backend). Without `allowed` a failure is
    raised as it is. `G`, `D`, `opt_G`, `opt_D` and `backend` are those of the
    step running now: after a fall back to eager, the reference models.
    """

    def __init__(self, step, mode: Mode, remake: Callable, *, allowed: bool = True,
                 announce: Callable[[str], None] | None = None):
        self.inner, self.mode, self.remake, self.allowed = step, mode, remake, allowed
        self.announce = announce or (lambda line: print(line, file=sys.stderr))
        self._lr: float | None = None

    backend = property(lambda self: self.inner.backend)
    settled = property(lambda self: self.inner.settled)
    G = property(lambda self: self.inner.G)
    D = property(lambda self: self.inner.D)
    opt_G = property(lambda self: self.inner.opt_G)
    opt_D = property(lambda self: self.inner.opt_D)

    def parts(self) -> tuple:
        return self.G, self.D, self.opt_G, self.opt_D

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
        from pix2pix_fast.train.fast import FastStepFailure

        if self.inner.settled or not self.allowed:
            return self.inner(real_A, real_B, noise_std)
        snapshot = Snapshot(*self.parts())
        try:
            return self.inner(real_A, real_B, noise_std)
        except FastStepFailure as failure:
            self._fall_back(failure, snapshot)
        return self(real_A, real_B, noise_std)

    def _fall_back(self, failure, snapshot: Snapshot) -> None:
        """Undo the failed step and continue on the next mode (the same step runs again there)."""
        mode = next_mode(self.mode, failure.stage)
        step = self.remake(mode, self.parts() if mode.backend == "fast" else None)
        snapshot.restore(step.G, step.D, step.opt_G, step.opt_D)  # RNG included: after the models' seeding
        self.announce(f"pix2pix-fast: {failure}; continuing on {mode.describe()}")
        self.inner, self.mode = step, mode
        if self._lr is not None:
            step.set_lr(self._lr)

    def set_lr(self, lr: float) -> None:
        self._lr = lr
        self.inner.set_lr(lr)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
