"""The fast backend on a CPU: what its step changes against the eager step, and the threads.

The fast step (`fast.FastStep`) runs on a CPU with:
- the reference layers, not the fused ones: on a CPU each fused op runs its
  PyTorch reference behind a custom-op boundary, which measured slower than
  the plain layers (`bench --device cpu`, the README's CPU figures);
- channels_last models and inputs (`--cpu-channels-last`), the layout
  oneDNN's convolutions run fastest in;
- D on the fake and the real pairs in one batched call (instance norm), and
  a fused Adam;
- torch.compile (inductor's C++ backend) only with `--cpu-compile`: it took
  1-4 minutes of compiling on a loaded 2-core CPU, which a quick start
  (about a minute of training) never repays, so nothing compiles unless
  asked.

`--backend fast` takes this step on a CPU; `--backend auto` keeps the eager
step there until this one is measured faster (build.CPU_AUTO_BACKEND).

Threads (`set_threads`): PyTorch's intra-op threads are set to the cores
this process may run on, and the native loader's workers, which mostly
wait, to a quarter of them (at least one), so the two do not oversubscribe
the cores; explicit `--loader-threads`, OMP_NUM_THREADS and torchrun's own
setting are kept.
"""
from __future__ import annotations

import os

import torch

from pix2pix_fast.config import TrainConfig

__all__ = ["memory_format", "usable_cores", "set_threads", "loader_threads"]


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The layout of the CPU fast step's models and inputs."""
    return torch.channels_last if cfg.cpu_channels_last else torch.contiguous_format


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def set_threads() -> int:
    """Intra-op threads = the usable cores, unless OMP_NUM_THREADS says otherwise; returns the count."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cores())
    return torch.get_num_threads()


def loader_threads(cfg: TrainConfig) -> int:
    """The native loader's workers for a CPU run: --loader-threads, or a quarter of the cores (>= 1)."""
    return cfg.loader_threads or max(1, usable_cores() // 4)
