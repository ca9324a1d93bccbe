"""The CPU fast step (train/cpu.py) computes the eager step's training, and auto takes it on a CPU.

From the same state each of its steps must give the eager step's losses,
gradients and updates (tests/same_step.py explains the comparison): what it
changes (channels_last, D on both pairs in one call, fused Adam) reorders
sums, never the math.
"""
import pytest
import torch
from same_step import assert_same_step

from pix2pix_fast.train import build, cpu
from tiny import tiny_config

CPU = torch.device("cpu")


def _step(cfg, backend):
    parts = build.train_parts(cfg, backend, CPU)
    return build.make_step(cfg, build.initial_mode(cfg, backend, CPU), parts, autocast_dtype=None), parts


def _batches(cfg, n):
    g = torch.Generator().manual_seed(7)
    shape = (cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)
    return [(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1) for _ in range(n)]


@pytest.mark.parametrize("norm,gan_mode,channels_last", [
    ("instance", "vanilla", True), ("batch", "lsgan", True), ("none", "hinge", True), ("instance", "vanilla", False)])
def test_cpu_fast_step_follows_eager_step(norm, gan_mode, channels_last):
    cfg = tiny_config(batch_size=2, norm=norm, gan_mode=gan_mode, cpu_channels_last=channels_last)
    eager, eager_parts = _step(cfg, "eager")
    fast, fast_parts = _step(cfg, "fast")
    assert not fast.compiled and fast.memory_format == cpu.memory_format(cfg)
    conv = next(m for m in fast_parts.G.modules() if isinstance(m, torch.nn.Conv2d))
    assert type(conv) is torch.nn.Conv2d  # the reference layers, not the fused ones
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    for A, B in _batches(cfg, 2):
        assert_same_step(fast, fast_parts, eager, eager_parts, A, B, cfg.lr)


def test_auto_backend_on_a_cpu_and_threads(monkeypatch):
    assert build.resolve_backend(tiny_config(), CPU) == build.CPU_AUTO_BACKEND
    assert build.resolve_backend(tiny_config(backend="fast"), CPU) == "fast"
    assert build.initial_mode(tiny_config(), "fast", CPU) == build.Mode("fast")  # no compile, no graph
    assert build.initial_mode(tiny_config(cpu_compile=True), "fast", CPU) == build.Mode("fast", compile=True)
    monkeypatch.setattr(cpu, "usable_cores", lambda: 8)
    assert cpu.loader_threads(tiny_config()) == 2 and cpu.loader_threads(tiny_config(loader_threads=5)) == 5
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert cpu.set_threads() == 8
    finally:
        torch.set_num_threads(before)
