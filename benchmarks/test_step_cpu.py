"""pytest-benchmark suite for what a CPU can measure: the training step at the
CPU quick-start size (eager, and the fast step's math without graph/compile).

    pytest benchmarks/test_step_cpu.py --benchmark-only
"""
import pytest
import torch

from pix2pix_fast.bench.steps import bench_config, make_step
from pix2pix_fast.config import CPU_QUICKSTART


@pytest.mark.parametrize("backend", ["eager", "fast"])
def test_train_step_quickstart_size(benchmark, backend):
    size = CPU_QUICKSTART["crop_size"]
    cfg = bench_config(size, CPU_QUICKSTART["batch_size"], ngf=CPU_QUICKSTART["ngf"], ndf=CPU_QUICKSTART["ndf"])
    step = make_step(cfg, backend, torch.device("cpu"))
    A = torch.rand(cfg.batch_size, 3, size, size) * 2 - 1
    B = torch.rand(cfg.batch_size, 3, size, size) * 2 - 1
    step(A, B)  # warm-up
    losses = benchmark(step, A, B)
    assert torch.isfinite(losses).all()
