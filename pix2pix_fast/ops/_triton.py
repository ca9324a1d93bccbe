"""triton and triton.language, or stand-ins where triton is missing; imported by
every module of ``pix2pix_fast.ops`` (and by nothing it imports)."""
from __future__ import annotations

import functools
import importlib.util

__all__ = ["triton", "tl", "triton_available", "kernels_interpreted"]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when triton can be imported (checked once, on first call)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


class _TritonLanguageStub:
    """Stands in for ``triton.language`` when triton is missing (annotations only)."""

    class constexpr:  # noqa: N801 - mirrors triton.language.constexpr
        pass


class _TritonStub:
    """Stands in for ``triton`` when it is missing: ``@triton.jit`` leaves the function as it is."""

    language = _TritonLanguageStub()

    @staticmethod
    def jit(fn=None, **options):
        return fn if fn is not None else (lambda f: f)


if triton_available():
    import triton
    import triton.language as tl
else:
    triton = _TritonStub()
    tl = triton.language


@triton.jit
def _probe():
    # Decorated like every kernel: it is interpreted exactly when they are.
    pass


def kernels_interpreted() -> bool:
    """True when this process runs the Triton kernels under Triton's interpreter.

    Triton decides when a kernel is decorated: ``TRITON_INTERPRET=1`` set
    before triton was imported.  The kernels themselves are asked, so the
    answer holds whatever the environment says now.
    """
    if not triton_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_probe, InterpretedFunction)
