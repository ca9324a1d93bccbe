import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _small_cpu_threads():
    # Keep tests predictable on the 2-core CI machine.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def device(request, monkeypatch):
    """Indirectly parametrised op backend -> device string.

    "interpret": the Triton kernels on CPU through the interpreter; "torch": the
    PyTorch reference path on CPU; "cuda": the compiled kernels on a GPU.
    """
    from pix2pix_fast.ops._common import FORCE_TRITON_ENV

    backend = request.param
    if backend == "interpret":
        monkeypatch.setenv(FORCE_TRITON_ENV, "1")
    else:
        monkeypatch.delenv(FORCE_TRITON_ENV, raising=False)
    # fp32 means fp32: cuDNN's default TF32 (used by PyTorch's convolutions and
    # by the conv backward) would dominate the errors the tests judge.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return "cuda" if backend == "cuda" else "cpu"
