"""One way to build a training step: resolve the backend and precision, build the
models and optimizers, make the step for a mode and a world.

    step = build_step(cfg, device)            # what `train` runs (a TrainStep, step.py)
    parts = build_models(cfg, "fast", device) # (G, D, opt_G, opt_D) for one backend
    step = make_step(cfg, Mode("fast"), parts, autocast_dtype=None)

The trainer, `pix2pix-fast bench`, the benchmarks and the tests all build
their steps here, so each measures and checks what `train` runs.
"""
from __future__ import annotations

import sys
from typing import Callable, NamedTuple

import torch
from torch import nn

from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.models import build_discriminator, build_generator
from pix2pix_fast.train import cpu
from pix2pix_fast.train.distributed import World, convert_sync_batchnorm
from pix2pix_fast.train.eager import EagerStep
from pix2pix_fast.train.fallback import FallbackStep, Mode, fast_backend_problem
from pix2pix_fast.train.step import TrainStep

# What --backend auto trains on a CPU. The CPU fast step measured 1.01-1.40x the eager step
# (median per-repeat ratios on a loaded 2-core CPU; README, CPU figures), inside that machine's
# noise: not shown faster, so auto keeps the eager step and --backend fast opts in.
CPU_AUTO_BACKEND = "eager"

__all__ = ["Mode", "Parts", "resolve_backend", "resolve_precision", "initial_mode", "build_models", "train_parts", "make_adam",
           "make_step", "build_step"]


class Parts(NamedTuple):
    """What a step trains."""

    G: nn.Module
    D: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer


def resolve_backend(cfg: TrainConfig, device: torch.device) -> str:
    """eager or fast. `auto` takes CPU_AUTO_BACKEND on a CPU (what measured faster there; the
    CPU fast step compiles nothing unless --cpu-compile, so no compile time is to be weighed),
    and fast on a GPU only where its kernels compile and run (checked once, here), saying in
    one line why not where they do not."""
    if cfg.backend == "fast" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--backend fast runs on CUDA or a CPU (use --backend eager on {device.type})")
    if cfg.backend == "auto":
        if device.type == "cpu":
            return CPU_AUTO_BACKEND
        if device.type != "cuda":
            return "eager"
        problem = fast_backend_problem(device)
        if problem is not None:
            print(f"pix2pix-fast: {problem}; training on the eager backend", file=sys.stderr)
            return "eager"
        return "fast"
    return cfg.backend


def resolve_precision(cfg: TrainConfig, device: torch.device, backend: str | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (`backend`: the resolved one; default from cfg).

    auto: bf16 for the fast backend on a GPU that has it; fp32 elsewhere. A GPU
    without bf16 (before Ampere) trains the fast backend in fp32, and says so.
    """
    backend = backend or ("eager" if cfg.backend == "eager" else "fast")
    p = cfg.precision
    if p == "auto":
        p = "fp32"
        if device.type == "cuda" and backend == "fast":
            if torch.cuda.is_bf16_supported():
                p = "bf16"
            else:
                print("pix2pix-fast: this GPU has no bf16; the fast backend trains in fp32 "
                      "(--backend eager --precision fp16 for mixed precision)", file=sys.stderr)
    if p == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device")
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bf16 (use fp32, or fp16 with --backend eager)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


def initial_mode(cfg: TrainConfig, backend: str, device: torch.device) -> Mode:
    """The step's mode at the start: the fast backend captures on CUDA only, and compiles
    there with --compile, on a CPU with --cpu-compile."""
    if backend == "eager":
        return Mode("eager")
    on_cuda = device.type == "cuda"
    return Mode("fast", compile=cfg.compile if on_cuda else cfg.cpu_compile, graph=cfg.cuda_graph and on_cuda)


def build_models(cfg: TrainConfig, backend: str, device: torch.device, world: World | None = None, *,
                 memory_format: torch.memory_format | None = None, capturable: bool | None = None,
                 fused: bool | None = None) -> Parts:
    """(G, D, opt_G, opt_D) for a backend, seeded from cfg.seed.

    The fast backend gets the fast models (fused layers and cfg's levers) and
    a capturable fused Adam whose LR is a device tensor, so the whole update
    can live in the CUDA graph. Under torchrun BatchNorm becomes SyncBatchNorm
    (statistics over the global batch). memory_format: the models' layout
    (default: channels_last on CUDA). capturable: see make_adam. fused: the fused layers
    (default: for the fast backend; train_parts gives the CPU fast step the reference layers).
    """
    torch.manual_seed(cfg.seed)
    fused = backend == "fast" if fused is None else fused
    G = build_generator(cfg, fused=fused).to(device)
    D = build_discriminator(cfg, fused=fused).to(device)
    if world is not None and world.enabled:
        G, D = convert_sync_batchnorm(G, device), convert_sync_batchnorm(D, device)
    if memory_format is None:
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    return Parts(G, D, make_adam(G, cfg, backend, device, capturable), make_adam(D, cfg, backend, device, capturable))


def train_parts(cfg: TrainConfig, backend: str, device: torch.device, world: World | None = None) -> Parts:
    """The parts `train` trains on a backend: on a CPU the fast backend takes the reference
    layers in its layout (train/cpu.py), elsewhere build_models' defaults."""
    if backend == "fast" and device.type == "cpu":
        return build_models(cfg, backend, device, world, memory_format=cpu.memory_format(cfg), fused=False)
    return build_models(cfg, backend, device, world)


def make_adam(model: nn.Module, cfg: TrainConfig, backend: str, device: torch.device,
              capturable: bool | None = None) -> torch.optim.Adam:
    """The reference's foreach Adam for the eager backend; for the fast backend a
    fused, capturable Adam whose LR is a device tensor (so the update can live in
    a CUDA graph and never reads a value back to the host), on CPU too.
    capturable=True gives the eager backend the capturable foreach Adam (the
    stock way to capture the reference step)."""
    betas = (cfg.beta1, cfg.beta2)
    if backend == "fast":
        return torch.optim.Adam(model.parameters(), lr=torch.tensor(cfg.lr, device=device), betas=betas,
                                capturable=True, fused=True)
    if capturable:
        return torch.optim.Adam(model.parameters(), lr=torch.tensor(cfg.lr, device=device), betas=betas,
                                capturable=True, foreach=True)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=betas)


def make_step(cfg: TrainConfig, mode: Mode, parts: Parts, *, autocast_dtype: torch.dtype | None,
              world: World | None = None) -> TrainStep:
    """The eager or the fast step of `mode` around `parts` (world: the ranks that share gradients)."""
    world = world if world is not None and world.enabled else None
    if mode.backend == "fast":
        from pix2pix_fast.train.fast import FastStep

        weight = next(p for p in parts[0].parameters() if p.dim() == 4)  # parts: Parts or a 4-tuple
        # On a CPU the inputs follow the models' layout (train_parts: --cpu-channels-last).
        cl = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        layout = torch.channels_last if cl else None
        return FastStep(cfg, *parts, autocast_dtype, use_graph=mode.graph, compile=mode.compile, world=world,
                        memory_format=layout if weight.device.type == "cpu" else None)
    return EagerStep(cfg, *parts, autocast_dtype, world)


def build_step(cfg: TrainConfig, device: torch.device, *, backend: str | None = None, world: World | None = None,
               announce: Callable[[str], None] | None = None) -> TrainStep:
    """The step `train` runs: the resolved backend and precision, new models, its first mode.

    The fast step is wrapped in a FallbackStep: until it has settled, a failed
    compile, warm-up or capture continues on the next simpler mode from the
    state before the failed step (`announce` says so in one line). With an
    explicit `--backend fast`, and under torchrun (where every rank would have
    to fall back at the same step), a failure is fatal instead.
    """
    backend = backend or resolve_backend(cfg, device)
    dtype = resolve_precision(cfg, device, backend)
    mode = initial_mode(cfg, backend, device)
    parts = train_parts(cfg, backend, device, world)
    step = make_step(cfg, mode, parts, autocast_dtype=dtype, world=world)
    if backend == "eager":
        return step

    def remake(mode: Mode, parts: Parts | None) -> TrainStep:
        # A fall back to eager gets the reference models and Adam (same state_dict keys).
        parts = parts or train_parts(cfg, mode.backend, device, world)
        return make_step(cfg, mode, parts, autocast_dtype=dtype, world=world)

    allowed = cfg.backend != "fast" and not (world is not None and world.enabled)
    return FallbackStep(step, mode, remake, allowed=allowed, announce=announce)
