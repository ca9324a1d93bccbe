"""Device selection: cuda, then Apple's MPS (faked here: no Apple hardware), then the CPU."""
import pytest
import torch

from pix2pix_fast.config import ConfigError
from pix2pix_fast.device import resolve_device
from pix2pix_fast.train import build
from tiny import tiny_config


@pytest.fixture
def fake_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_auto_picks_mps_after_cuda(fake_mps, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_is_cpu_without_cuda_or_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device mps: no Apple MPS device"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="is not auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_mps_trains_on_the_eager_backend(fake_mps):
    mps = torch.device("mps")
    assert build.resolve_backend(tiny_config(), mps) == "eager"
    assert build.resolve_precision(tiny_config(), mps, "eager") is None  # fp32
    with pytest.raises(ConfigError, match="--backend fast"):
        build.resolve_backend(tiny_config(backend="fast"), mps)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        build.resolve_precision(tiny_config(precision="fp16"), mps, "eager")
