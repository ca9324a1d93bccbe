"""What every benchmark here shares: timing, the environment record, the copy
bandwidth, JSON written as it goes, and SIGTERM as an interrupt.

Timing rules (STYLE.md, Benchmarks): on a GPU, `triton.testing.do_bench`
medians with p20/p80 after a warm-up, or CUDA events around a run of steps;
on a CPU, wall-clock medians of repeated calls. Every result file carries the
environment it was measured in (`environment`). Speed goals live in the
benchmarks; nothing here asserts one.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["environment", "time_fn", "time_steps", "copy_bandwidth", "fwd_bwd", "write_json", "load_json",
           "stop_on_sigterm", "sync"]


def environment(device: torch.device | str) -> dict[str, Any]:
    """torch, triton, Python, CPU model, cores and threads, and the GPU, CUDA and cuDNN where there is one."""
    device = torch.device(device)
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                           "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device | str, rep_ms: float = 50.0,
            warmup_ms: float = 10.0) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of one call of fn.

    CUDA: triton.testing.do_bench. CPU: calls over about rep_ms (at least 3)
    after one warm-up call, wall clock."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return med, p20, p80
    fn()
    times, t_end = [], time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return tuple(times[min(len(times) - 1, int(q * len(times)))] for q in (0.5, 0.2, 0.8))


def time_steps(step: Callable[..., torch.Tensor], args: Sequence, steps: int, device: torch.device,
               repeats: int = 3) -> list[float]:
    """Seconds per step for `repeats` runs of `steps` calls (the step's outputs summed on the
    device and read once, at the end: a non-finite sum is an error)."""
    acc = None
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                out = step(*args)
                acc = out.detach().clone() if acc is None else acc.add_(out)
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / 1e3 / steps)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = step(*args)
                acc = out.detach().clone() if acc is None else acc.add_(out)
            runs.append((time.perf_counter() - t0) / steps)
    if acc is not None and not torch.isfinite(acc).all():
        raise RuntimeError(f"non-finite outputs while benchmarking: {acc.tolist()}")
    return runs


def copy_bandwidth(device: torch.device | str, rep_ms: float = 50.0) -> float:
    """Device copy bandwidth in GB/s (bytes read + written of a large fp32 copy: 1 GiB on a GPU)."""
    n = 256 * 2**20 if torch.device(device).type == "cuda" else 4 * 2**20
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    ms = time_fn(lambda: dst.copy_(src), device, rep_ms)[0]
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def fwd_bwd(forward: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor],
            grad: torch.Tensor | None = None) -> Callable[[], None]:
    """A call that runs forward, backpropagates `grad` (ones by default) and clears the leaves' grads."""
    def run() -> None:
        out = forward()
        out.backward(torch.ones_like(out) if grad is None else grad)
        for t in leaves:
            t.grad = None

    return run


def write_json(path: str | os.PathLike | None, data: Any) -> None:
    """Write data to path (if given) atomically: a kill never leaves half a file."""
    if not path:
        return
    from pix2pix_fast.fileio import write_text

    write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """The JSON in path, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stop_on_sigterm() -> Callable[[], None]:
    """From now on SIGTERM (a stage's time is up) raises KeyboardInterrupt, so a benchmark
    saves what it measured; returns a function that restores the previous handler."""
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)
