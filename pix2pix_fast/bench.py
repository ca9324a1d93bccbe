"""`pix2pix-fast bench`: the eager reference step against the fast trainer, in one process.

Eager = the reference implementation's way: fp32, NCHW, PyTorch norms, three
separate D calls, foreach Adam. Fast = fused layers, channels_last, bf16,
batched D, fused loss, torch.compile and one CUDA graph (`train/fast.py`).
Both train U-Net-256 + 70x70 PatchGAN with instance norm on random data.
Timing: CUDA events around `steps` steps after warm-up, median of 3 runs.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.train.eager import EagerStep
from pix2pix_fast.train.trainer import build_models


def bench_config(size: int, batch_size: int, **overrides) -> TrainConfig:
    net = f"unet_{size}"
    return TrainConfig(netG=net, load_size=size, crop_size=size, batch_size=batch_size, **overrides)


def make_step(cfg: TrainConfig, backend: str, device: torch.device):
    """The step object of one backend, with models and optimizers seeded identically."""
    G, D, opt_G, opt_D = build_models(cfg, backend, device)
    if backend == "fast":
        from pix2pix_fast.train.fast import FastStep

        return FastStep(cfg, G, D, opt_G, opt_D, torch.bfloat16 if device.type == "cuda" else None)
    return EagerStep(cfg, G, D, opt_G, opt_D, None)


def step_flops(cfg: TrainConfig, device: torch.device) -> float:
    """FLOPs of one eager training step at cfg's batch size (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = make_step(cfg, "eager", device)
    A, B = _batch(cfg, device)
    with FlopCounterMode(display=False) as counter:
        step(A, B)
    return float(counter.get_total_flops())


def time_steps(step, A, B, steps: int, device: torch.device, repeats: int = 3) -> list[float]:
    """Seconds per step for `repeats` runs of `steps` steps (losses summed on the device, read once)."""
    acc = torch.zeros(3, device=device)
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                acc += step(A, B)
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / 1e3 / steps)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                acc += step(A, B)
            runs.append((time.perf_counter() - t0) / steps)
    if not torch.isfinite(acc).all():
        raise RuntimeError(f"non-finite losses while benchmarking: {acc.tolist()}")
    return runs


def run_bench(batch_sizes=(1, 16, 64), steps: int = 50, json_path: str | None = None,
              backends=("eager", "fast"), size: int = 256, warmup: int = 5) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and "fast" in backends:
        print("no CUDA device: benchmarking the eager step only (the fast backend needs a GPU)")
        backends = [b for b in backends if b != "fast"]
    rows: list[dict] = []
    for batch in batch_sizes:
        cfg = bench_config(size, batch)
        flops = step_flops(cfg, device)
        eager_ms = None
        for backend in backends:
            step = make_step(cfg, backend, device)
            A, B = _batch(cfg, device)
            t0 = time.perf_counter()
            for _ in range(warmup):
                step(A, B)
            if device.type == "cuda":
                torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            runs = time_steps(step, A, B, steps, device)
            sec = statistics.median(runs)
            row = {
                "backend": backend, "batch": batch, "size": size, "ms_per_step": sec * 1e3,
                "img_per_s": batch / sec, "it_per_s": 1 / sec, "tflops": flops / sec / 1e12,
                "gflop_per_img": flops / batch / 1e9, "runs_ms": [r * 1e3 for r in runs],
                "warmup_s": warm_s, "compile_s": getattr(step, "warmup_seconds", 0.0),
                "capture_s": getattr(step, "capture_seconds", 0.0),
            }
            if backend == "eager":
                eager_ms = row["ms_per_step"]
            row["speedup_vs_eager"] = (eager_ms / row["ms_per_step"]) if eager_ms else None
            rows.append(row)
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    _print_table(rows, device)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"env": environment(device), "rows": rows}, indent=2))
    return rows


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def _batch(cfg: TrainConfig, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (cfg.batch_size, cfg.input_nc, cfg.crop_size, cfg.crop_size)
    A = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    B = (torch.rand((cfg.batch_size, cfg.output_nc, cfg.crop_size, cfg.crop_size), generator=g) * 2 - 1).to(device)
    return A, B


def _print_table(rows: list[dict], device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}")
    print(f"{'backend':8} {'batch':>5} {'ms/step':>9} {'img/s':>9} {'TFLOP/s':>8} {'speedup':>8} {'compile s':>9} {'capture s':>9}")
    for r in rows:
        speed = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"
        print(f"{r['backend']:8} {r['batch']:>5} {r['ms_per_step']:>9.3f} {r['img_per_s']:>9.1f} "
              f"{r['tflops']:>8.2f} {speed:>8} {r['compile_s']:>9.1f} {r['capture_s']:>9.2f}")
