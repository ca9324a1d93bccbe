"""Shared fixtures; picks how this process runs the Triton kernels.

Without a CUDA device the kernel tests run the kernels under Triton's
interpreter: ``TRITON_INTERPRET`` is read by ``triton.jit`` when a kernel is
decorated, so it is set here, before anything imports triton.  With a CUDA
device it stays unset: the kernels compile, the CUDA tests run them, and the
interpreter tests are skipped (one process runs the kernels one way only).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import pytest  # noqa: E402

from pix2pix_fast.ops._common import tl, triton  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        skip_gpu = None
    else:
        skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "interpret" in callspec.id.split("-"):
            reason = _interpreter_cannot_run_kernels()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _small_cpu_threads():
    # Keep tests predictable on the 2-core CI machine.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def one_thread():
    """One OpenMP thread, for files of tiny models, where a second thread only adds
    spin-waits (seconds, when the CI machine's two cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(name_glob, after=0): writes of files the package writes whose name matches
    `name_glob` fail with ENOSPC once `after` bytes are written (the first `skip` such files
    are written normally), as on a full disk."""
    import errno
    import fnmatch

    from pix2pix_fast import fileio

    real_open = fileio._open

    class Full:
        def __init__(self, f, after):
            self.f, self.left = f, after

        def write(self, data):
            n = len(memoryview(data).cast("B"))
            if n > self.left:
                self.f.write(bytes(memoryview(data).cast("B")[: self.left]))
                self.left = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= n
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def arm(name_glob, after=0, skip=0):
        seen = [0]

        def fake_open(fd, target):
            f = real_open(fd, target)
            if not fnmatch.fnmatch(target.name, name_glob):
                return f
            seen[0] += 1
            return f if seen[0] <= skip else Full(f, after)

        monkeypatch.setattr(fileio, "_open", fake_open)

    return arm


@pytest.fixture
def device(request, monkeypatch):
    """Indirectly parametrised op backend -> device string.

    "interpret": the Triton kernels on CPU through the interpreter; "torch": the
    PyTorch reference path on CPU; "cuda": the compiled kernels on a GPU.
    """
    from pix2pix_fast.ops._common import FORCE_TRITON_ENV

    backend = request.param
    if backend == "interpret":
        reason = _interpreter_cannot_run_kernels()
        if reason:
            pytest.skip(reason)
        monkeypatch.setenv(FORCE_TRITON_ENV, "1")
    else:
        monkeypatch.delenv(FORCE_TRITON_ENV, raising=False)
    # fp32 means fp32: cuDNN's default TF32 (used by PyTorch's convolutions and
    # by the conv backward) would dominate the errors the tests judge.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return "cuda" if backend == "cuda" else "cpu"


@pytest.fixture
def kernels(monkeypatch):
    """Run the Triton kernels on CPU tensors (the interpreter); skipped where it cannot run them."""
    from pix2pix_fast.ops._common import FORCE_TRITON_ENV

    reason = _interpreter_cannot_run_kernels()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv(FORCE_TRITON_ENV, "1")


@triton.jit
def _probe_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # A loop with a runtime bound and a reduction: what the kernels' split paths do.
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


@functools.lru_cache(maxsize=None)
def _interpreter_cannot_run_kernels() -> str:
    """Why the Triton interpreter cannot run the kernels here ("" when it can); probed once per session.

    The kernels are compiled, not interpreted, where TRITON_INTERPRET=1 was
    not set before triton was imported (a CUDA machine).  Some interpreter
    releases (triton 3.6 with NumPy 2) turn a runtime loop bound into a
    1-element array that NumPy refuses to convert to an int.
    """
    from pix2pix_fast.ops._common import kernels_interpreted, triton_available

    if not triton_available():
        return "triton is not installed"
    if not kernels_interpreted():
        return ("the Triton kernels are compiled in this process (TRITON_INTERPRET is not 1); "
                "the CUDA tests run them")
    x = torch.arange(40, dtype=torch.float32)
    out = torch.zeros(1, dtype=torch.float32)
    try:
        _probe_kernel[(1,)](x, out, x.numel(), BLOCK=16)
    except Exception as e:  # any failure means the interpreter tests cannot say anything here
        return (f"the Triton {triton.__version__} interpreter cannot run a loop with a runtime bound "
                f"here ({type(e).__name__}: {e}); interpreter tests skipped")
    if out.item() != float(x.sum()):
        return f"the Triton {triton.__version__} interpreter computes a wrong sum in the probe kernel"
    return ""
