"""Dispatch helpers shared by the Triton ops in ``pix2pix_fast.ops``.

Dispatch rule (STYLE.md "every op runs anywhere"):
  * CUDA tensors take the Triton kernels when triton is importable, else the
    PyTorch reference;
  * CPU tensors take the PyTorch reference, unless the environment variable
    ``PIX2PIX_FAST_FORCE_TRITON=1`` is set: then they run the same Triton
    kernels under the Triton interpreter (how the kernel tests run on CPU).

Nothing here touches CUDA at import time, and triton is imported only when
it is installed (see ``tl`` below), so the package imports on CPU-only
machines without triton.

Kernels are written as *undecorated* module-level Python functions and turned
into launchable kernels with :func:`kernel_for`:

    _k = kernel_for(_my_fwd_kernel, x.device)
    _k[grid](x, y, ..., BLOCK=...)

Why not ``@triton.jit`` at module level: triton (3.x) decides at *decoration*
time whether a function is compiled or interpreted (``TRITON_INTERPRET`` is
read by ``triton.jit``), so a module-level decorator would either make every
kernel in the process interpreted or none of them.  ``kernel_for`` returns a
compiled ``JITFunction`` for CUDA tensors and an ``InterpretedFunction`` for
CPU tensors, cached per function, so the CPU interpreter tests and the real
GPU tests run in one pytest process (``TRITON_INTERPRET`` is not needed and
not used; the interpreted path patches triton only for the duration of each
interpreted launch, see ``_InterpretedKernel``, and rounds fp32 -> bf16 to
nearest even as the GPU does).  Consequence for kernel authors: a kernel
must not call other module-level helper functions (they would be plain Python
functions, which the compiler rejects); inline helpers or branch on
``tl.constexpr`` codes instead.

Kernel modules write ``from pix2pix_fast.ops._common import tl`` and annotate
compile-time constants ``tl.constexpr`` as usual: ``tl`` is
``triton.language`` when triton is installed (imported with this module) and
a stub carrying only ``constexpr`` when it is not, so the kernel definitions
still evaluate on CPU-only installs without triton.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

__all__ = [
    "FORCE_TRITON_ENV",
    "ACTIVATIONS",
    "act_code",
    "triton_available",
    "force_triton",
    "use_triton",
    "kernel_for",
    "next_power_of_2",
    "cdiv",
    "is_channels_last",
    "suggest_memory_format",
    "tensor_nbytes",
    "tl",
    "num_sms",
    "normalize_pad",
    "as_memory_format",
    "Ptr",
    "Launch",
    "make_launch",
    "run_launch",
    "grid_within_limits",
    "dense_strides",
    "MAX_GRID_X",
    "MAX_GRID_YZ",
]

FORCE_TRITON_ENV = "PIX2PIX_FAST_FORCE_TRITON"

# Activation codes passed to kernels as an ``ACT: tl.constexpr``.
ACTIVATIONS: Dict[str, int] = {"none": 0, "relu": 1, "leaky_relu": 2}


def act_code(act: str) -> int:
    """Map an activation name to its kernel code; ValueError for unknown names."""
    try:
        return ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}") from None


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


if triton_available():
    import triton.language as tl
else:
    tl = _TritonLanguageStub()


def force_triton() -> bool:
    """True when ``PIX2PIX_FAST_FORCE_TRITON=1`` asks CPU tensors to use the interpreter."""
    return os.environ.get(FORCE_TRITON_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def use_triton(t: torch.Tensor) -> bool:
    """Should the op on ``t`` run the Triton kernels (compiled or interpreted)?

    Read at call time, never at import time.
    """
    if t.is_cuda:
        return triton_available()
    if force_triton():
        if not triton_available():
            raise RuntimeError(
                f"{FORCE_TRITON_ENV}=1 asks for the Triton kernels on CPU, but triton is not installed"
            )
        return t.device.type == "cpu"
    return False


_KERNELS: Dict[Tuple[Callable, bool], object] = {}


def kernel_for(fn: Callable, device: torch.device):
    """A launchable kernel (``k[grid](...)``) for the undecorated function ``fn`` (or a JITFunction).

    CPU device -> ``triton.runtime.interpreter.InterpretedFunction`` (the Triton
    interpreter, whatever ``TRITON_INTERPRET`` says); any other device ->
    ``triton.jit(fn)`` (which itself honours ``TRITON_INTERPRET=1`` if a user
    sets it globally).  Cached per (fn, interpreted).
    """
    interpreted = torch.device(device).type == "cpu"
    key = (fn, interpreted)
    k = _KERNELS.get(key)
    if k is None:
        if interpreted:
            # A @triton.jit kernel carries its Python function as ``.fn``.
            k = _InterpretedKernel(getattr(fn, "fn", fn))
        elif _is_jit_function(fn):
            k = fn
        else:
            import triton

            k = triton.jit(fn)
        _KERNELS[key] = k
    return k


def _is_jit_function(fn) -> bool:
    from triton.runtime.jit import JITFunction

    return isinstance(fn, JITFunction)


class _InterpretedKernel:
    """Runs an undecorated kernel under the Triton interpreter in a compiling process.

    triton's own standard-library kernels (``tl.sum``, ``tl.max``,
    ``tl.cdiv``, ...) are ``@triton.jit`` functions, compiled or interpreted
    as decided when triton was imported; called from an interpreted kernel, a
    compiled one raises "Cannot call @triton.jit'd outside of the scope of a
    kernel".  For the duration of one interpreted launch,
    ``JITFunction.__call__`` runs an interpreted twin of the called function
    instead, and afterwards every attribute of ``triton.language`` that the
    interpreter patched is restored (nested interpreted calls do not restore
    their own patches), so kernels compiled later in the same process see an
    untouched ``triton.language``.  Tests only: CUDA tensors never come here.
    """

    def __init__(self, fn: Callable):
        from triton.runtime.interpreter import InterpretedFunction

        self.fn = fn
        self.kernel = InterpretedFunction(fn)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _interpreter_scope():
                return self.kernel[grid](*args, **kwargs)

        return launch


def _patched_objects():
    import sys

    import triton.language as tlang

    objs = [m for name, m in list(sys.modules.items()) if name.startswith("triton.language") and m is not None]
    for cls_name in ("tensor", "dtype", "condition", "constexpr"):
        cls = getattr(tlang, cls_name, None) or getattr(tlang.core, cls_name, None)
        if isinstance(cls, type):
            objs.append(cls)
    desc = getattr(tlang.core, "tensor_descriptor_base", None)
    if isinstance(desc, type):
        objs.append(desc)
    return objs


_TWINS: Dict[int, tuple] = {}


def _interpreted_twin(jit_fn):
    from triton.runtime.interpreter import InterpretedFunction

    # Keyed by id: hashing a JITFunction computes its cache key (walking its
    # dependencies), which is not wanted here.
    entry = _TWINS.get(id(jit_fn))
    if entry is None or entry[0] is not jit_fn:
        entry = _TWINS[id(jit_fn)] = (jit_fn, InterpretedFunction(jit_fn.fn))
    return entry[1]


def _interpreter_module():
    import triton.runtime.interpreter as interp

    return interp


def _rounding_convert_float(original):
    """fp32 -> bf16 casts rounded to nearest even, as the GPU does.

    The interpreter's own conversion truncates the mantissa (and its
    round-to-nearest option does not carry into the exponent), which would
    make bf16 kernel outputs look up to one ulp worse under the interpreter
    than on the GPU.  Other conversions go to the original.
    """
    import numpy as np
    import triton.language as tlang

    def convert(input, input_dtype, output_dtype, rounding_mode):
        default = rounding_mode is None or str(rounding_mode).upper().endswith("RTNE")
        if default and input_dtype == tlang.float32 and output_dtype == tlang.bfloat16:
            values = torch.from_numpy(np.frombuffer(np.ascontiguousarray(input).tobytes(), dtype=np.float32).copy())
            bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return bits.reshape(np.shape(input))
        return original(input, input_dtype, output_dtype, rounding_mode)

    return convert


class _interpreter_scope:
    _MISSING = object()

    def __enter__(self):
        from triton.runtime.jit import JITFunction

        self.saved = [(obj, dict(vars(obj))) for obj in _patched_objects()]
        self.jit_call = JITFunction.__dict__["__call__"]
        JITFunction.__call__ = lambda jf, *args, **kwargs: _interpreted_twin(jf)(*args, **kwargs)
        self.interp = _interpreter_module()
        self.convert = getattr(self.interp, "_convert_float", None)
        if self.convert is not None:
            self.interp._convert_float = _rounding_convert_float(self.convert)
        return self

    def __exit__(self, *exc):
        from triton.runtime.jit import JITFunction

        JITFunction.__call__ = self.jit_call
        if self.convert is not None:
            self.interp._convert_float = self.convert
        for obj, attrs in self.saved:
            current = dict(vars(obj))
            if isinstance(obj, type):
                for name in current.keys() - attrs.keys():
                    delattr(obj, name)
            # Names the interpreter *adds* to a module's globals (its own
            # helpers, needed by its cached rewritten functions) stay.
            for name, value in attrs.items():
                if current.get(name, self._MISSING) is not value:
                    setattr(obj, name, value)
        return False


def next_power_of_2(n: int) -> int:
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def is_channels_last(t: torch.Tensor) -> bool:
    """True when a 4-D tensor is laid out NHWC-contiguous and not also NCHW-contiguous.

    Tensors that are both (C == 1 or H*W == 1) count as NCHW.
    """
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def suggest_memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for NHWC-contiguous 4-D tensors, else contiguous_format."""
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def tensor_nbytes(*ts: torch.Tensor) -> int:
    """Bytes occupied by the elements of the given tensors (for GB/s figures)."""
    return sum(t.numel() * t.element_size() for t in ts)


# Streaming-multiprocessor count assumed for CPU tensors (the interpreter): an
# H100's, so the CPU kernel tests take the code paths the GPU takes.
_CPU_PLAN_SMS = 132


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Multiprocessor count of a CUDA device (cached); an H100's 132 for other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return _CPU_PLAN_SMS


def normalize_pad(pad) -> Tuple[int, int, int, int]:
    """``int`` or ``(left, right, top, bottom)`` (F.pad order) -> 4-tuple of non-negative ints."""
    if isinstance(pad, bool):
        raise ValueError(f"pad must be an int or a (left, right, top, bottom) tuple, got {pad!r}")
    if isinstance(pad, int):
        pads = (pad, pad, pad, pad)
    else:
        pads = tuple(int(p) for p in pad)
        if len(pads) != 4:
            raise ValueError(f"pad must be an int or a (left, right, top, bottom) tuple, got {pad!r}")
    if any(p < 0 for p in pads):
        raise ValueError(f"reflect padding must be non-negative, got {pad!r}")
    return pads  # type: ignore[return-value]


def as_memory_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` itself when already dense in ``fmt``, else a copy laid out in ``fmt``."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


# ---------------------------------------------------------------------------
# Planned launches
# ---------------------------------------------------------------------------
# CUDA launch limits: grid dimension x up to 2**31 - 1 blocks, y and z up to 65535.
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


@dataclass(frozen=True)
class Ptr:
    """A tensor argument of a planned launch: only its element type is known when planning."""

    dtype: torch.dtype


@dataclass(frozen=True)
class Launch:
    """One kernel launch, planned from shapes, dtypes and layouts alone (no tensor, no device).

    The launchers run exactly these records (:func:`run_launch`), and the
    GPU compile check compiles them for real targets on a CPU machine, so
    what CI compiles is what the ops launch.  ``args`` and ``constexprs`` are
    (name, value) pairs keyed by the kernel's parameter names; tensor
    arguments are :class:`Ptr` placeholders.  ``samples``: the sample range
    (n0, n1) a chunked launch works on (the launcher slices its tensors).
    """

    kernel: Callable  # undecorated kernel function or a triton JITFunction
    grid: Tuple[int, ...]
    args: Tuple[Tuple[str, Any], ...]
    constexprs: Tuple[Tuple[str, Any], ...]
    num_warps: int = 4
    num_stages: Optional[int] = None
    samples: Optional[Tuple[int, int]] = None


def make_launch(
    kernel: Callable,
    grid: Tuple[int, ...],
    args: Mapping[str, Any],
    constexprs: Mapping[str, Any],
    *,
    num_warps: int = 4,
    num_stages: Optional[int] = None,
    samples: Optional[Tuple[int, int]] = None,
) -> Launch:
    """A :class:`Launch` from name -> value mappings (kept in the given order)."""
    return Launch(
        kernel, tuple(int(g) for g in grid), tuple(args.items()), tuple(constexprs.items()),
        num_warps, num_stages, samples,
    )


def grid_within_limits(grid: Tuple[int, ...]) -> bool:
    """True when every grid dimension is positive and within CUDA's launch limits."""
    if not 1 <= len(grid) <= 3 or any(g < 1 for g in grid):
        return False
    return grid[0] <= MAX_GRID_X and all(g <= MAX_GRID_YZ for g in grid[1:])


def run_launch(launch: Launch, device: torch.device, tensors: Mapping[str, torch.Tensor]) -> None:
    """Launch ``launch`` on ``device``; ``tensors`` supplies every :class:`Ptr` argument by name."""
    assert grid_within_limits(launch.grid), f"launch grid {launch.grid} exceeds the CUDA limits"
    kwargs = {}
    for name, value in launch.args:
        if isinstance(value, Ptr):
            t = tensors[name]
            assert t.dtype == value.dtype, f"{name}: planned {value.dtype}, got {t.dtype}"
            value = t
        kwargs[name] = value
    kwargs.update(launch.constexprs)
    options = {"num_warps": launch.num_warps}
    if launch.num_stages is not None:
        options["num_stages"] = launch.num_stages
    kernel_for(launch.kernel, device)[launch.grid](**kwargs, **options)


def dense_strides(shape: Tuple[int, ...], channels_last: bool) -> Tuple[int, ...]:
    """Strides of a dense 4-D tensor of ``shape`` laid out NCHW or channels_last."""
    n, c, h, w = shape
    if channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)
