"""Dispatch helpers shared by the Triton ops in ``pix2pix_fast.ops``.

Dispatch rule (STYLE.md "every op runs anywhere"):
  * CUDA tensors take the Triton kernels when triton is importable, else the
    PyTorch reference;
  * CPU tensors take the PyTorch reference, unless the environment variable
    ``PIX2PIX_FAST_FORCE_TRITON=1`` is set: then they run the same Triton
    kernels under Triton's interpreter (how the kernel tests run on CPU).

Kernels are module-level ``@triton.jit`` functions and the pieces they share
are ``@triton.jit`` helpers (``pix2pix_fast/ops/_helpers.py``).  Whether
they are compiled or interpreted is Triton's own decision, made when a
function is decorated: ``TRITON_INTERPRET=1`` in the environment before
triton is first imported gives the interpreter (the CPU test suite sets it in
``tests/conftest.py``), otherwise the kernels compile for the GPU.  One
process therefore runs the kernels one way only; :func:`kernels_interpreted`
says which.

Nothing here touches CUDA at import time.  Without triton installed the ops
still import: ``triton`` and ``tl`` (from ``_triton.py``, below both this
module and the helpers) are then stand-ins whose ``jit`` returns the function
unchanged and whose ``tl.constexpr`` is an annotation only, so the kernel
definitions evaluate (and launches can be planned) but are never run.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from pix2pix_fast.ops._triton import kernels_interpreted, tl, triton, triton_available

__all__ = [
    "FORCE_TRITON_ENV",
    "ACT_CODES",
    "act_code",
    "act_ref",
    "triton_available",
    "force_triton",
    "use_triton",
    "kernels_interpreted",
    "next_power_of_2",
    "cdiv",
    "is_channels_last",
    "suggest_memory_format",
    "tensor_nbytes",
    "tl",
    "triton",
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
ACT_CODES: Dict[str, int] = {"none": 0, "relu": 1, "leaky_relu": 2}


def act_code(act: str) -> int:
    """Map an activation name to its kernel code; ValueError for unknown names."""
    try:
        return ACT_CODES[act]
    except KeyError:
        raise ValueError(f"act must be one of {sorted(ACT_CODES)}, got {act!r}") from None


def act_ref(y: torch.Tensor, act: str, negative_slope: float) -> torch.Tensor:
    """The activation in PyTorch (the references' and the PyTorch paths')."""
    if act == "relu":
        return torch.relu(y)
    if act == "leaky_relu":
        return torch.nn.functional.leaky_relu(y, negative_slope)
    return y


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
        if not kernels_interpreted():
            raise RuntimeError(
                f"{FORCE_TRITON_ENV}=1 asks for the Triton kernels on CPU tensors, which only Triton's "
                "interpreter runs: set TRITON_INTERPRET=1 before triton is imported"
            )
        return t.device.type == "cpu"
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

    kernel: Callable  # a module-level @triton.jit kernel
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
    launch.kernel[launch.grid](**kwargs, **options)


def dense_strides(shape: Tuple[int, ...], channels_last: bool) -> Tuple[int, ...]:
    """Strides of a dense 4-D tensor of ``shape`` laid out NCHW or channels_last."""
    n, c, h, w = shape
    if channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)
