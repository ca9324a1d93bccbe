"""Capture a function of fixed-shape tensors in one CUDA graph and replay it.

The one place in the package that captures: the fast training step, the
benchmark's hand-captured reference step and `Pix2Pix.compile_fixed` all go
through :class:`CudaGraph`, so they capture the same way:

1. ``load(*inputs)``: inputs are copied into static buffers (allocated on
   the first call, in ``memory_format``), which the graph reads;
2. ``warm_up()``: ``fn(*static)`` runs on a fresh side stream, ordered after
   and before the current stream's work, then the device is synchronised (so
   that an error surfaces here). CUDA graphs need these runs: cuDNN picks its
   algorithms, torch.compile compiles, the allocator and the optimizer state
   settle before anything is recorded;
3. ``capture()``: after a synchronisation, ``fn(*static)`` is recorded once;
   its outputs become the static outputs;
4. ``replay()``: re-runs the recorded kernels and returns the static outputs,
   which the next replay overwrites: consume or clone them first.

Everything runs with ``device`` current (a model on ``cuda:1`` captures on
``cuda:1``). Callers add their own stages around these steps (the fast step
its compile and failure handling); ``__call__`` is the plain sequence:
``warmup`` runs, then capture, then replays.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

__all__ = ["CudaGraph", "on_side_stream"]


def on_side_stream(fn: Callable, *args) -> Any:
    """fn(*args) on a fresh CUDA side stream, ordered after and before the current stream's work."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    return out


class CudaGraph:
    """fn over static copies of its tensor inputs, warmed up, captured once, replayed."""

    def __init__(self, fn: Callable, *, memory_format: torch.memory_format = torch.contiguous_format,
                 device: torch.device | None = None, warmup: int = 3):
        self.fn = fn
        self.memory_format = memory_format
        self.device = device
        self.warmup_left = warmup  # for __call__
        self.static_in: tuple[torch.Tensor, ...] | None = None
        self.static_out: Any = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_seconds = 0.0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _current(self):
        return torch.cuda.device(self.device) if self.device is not None else contextlib.nullcontext()

    def load(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Copy inputs into the static buffers (made on the first call); returns the buffers."""
        with self._current():
            if self.static_in is None:
                self.static_in = tuple(torch.empty_like(x, device=self.device or x.device,
                                                        memory_format=self.memory_format) for x in inputs)
            for buf, x in zip(self.static_in, inputs):
                buf.copy_(x, non_blocking=True)
        return self.static_in

    def warm_up(self) -> Any:
        """fn on the static inputs, on a side stream; synchronised, so errors surface here."""
        with self._current():
            out = on_side_stream(self.fn, *self.static_in)
            torch.cuda.synchronize()
        return out

    def capture(self) -> None:
        """Record fn on the static inputs; its outputs become the static outputs."""
        t0 = time.perf_counter()
        with self._current():
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.fn(*self.static_in)
            torch.cuda.synchronize()
        self.graph, self.static_out = graph, out
        self.capture_seconds = time.perf_counter() - t0

    def replay(self) -> Any:
        with self._current():
            self.graph.replay()
        return self.static_out

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """load, then: the first `warmup` calls warm up, the next captures, every call from then replays."""
        self.load(*inputs)
        if not self.captured:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self.warm_up()
            self.capture()
        return self.replay()
