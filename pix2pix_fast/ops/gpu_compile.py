"""Compile planned kernel launches for real NVIDIA GPUs on a machine without one.

Triton lowers a kernel to PTX and ptxas assembles it to a cubin with no GPU
present, so every :class:`~pix2pix_fast.ops._common.Launch` the ops plan
can be checked for sm_90a (Hopper) and sm_80 (Ampere) in CI: it compiles,
and ``ptxas -v`` reports its registers, spill bytes and shared memory.

How a launch is compiled is how ``JITFunction.run`` compiles it on a GPU:
the kernel's own argument binder specialises the arguments (integers equal
to 1 become constants, multiples of 16 and 16-byte aligned pointers get
divisibility hints; every planned tensor is assumed 16-byte aligned, as a
fresh allocation is), then ``triton.compile(ASTSource(...), target=GPUTarget(...))``.
The ptxas is the one Triton itself uses for the target
(``triton.backends.nvidia.compiler.get_ptxas``: a newer one for sm_90 and up).

Compiles run in worker processes started fresh (``spawn``) with
``TRITON_INTERPRET`` unset, so a test process that runs kernels under the
interpreter cannot hand interpreted objects to the compiler; a kernel is
named by module and qualified name and re-imported there, where its
``@triton.jit`` decorator then gives a compilable ``JITFunction``.  Results are cached as JSON files keyed by a hash of the kernel's
source (Triton's ``cache_key``, which covers the ``@triton.jit`` functions
it calls), the specialised signature, the constants, the compile options,
the target, and the Triton and ptxas versions.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from pix2pix_fast.ops._common import Launch, Ptr

__all__ = [
    "ARCHS",
    "SHARED_MEMORY_LIMIT",
    "CompileResult",
    "kernel_name",
    "compile_key",
    "unique_launches",
    "compile_launches",
    "default_cache_dir",
]

# Compute capability -> shared memory a block may use (opt-in maximum).
ARCHS = (90, 80)
SHARED_MEMORY_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
CACHE_ENV = "PIX2PIX_FAST_GPU_COMPILE_CACHE"


@dataclass(frozen=True)
class CompileResult:
    kernel: str  # module:qualname
    arch: int  # compute capability (90 -> sm_90a, 80 -> sm_80)
    key: str  # cache key
    launch: str  # readable constants and signature, for messages
    registers: int = -1
    spill_stores: int = -1  # bytes
    spill_loads: int = -1  # bytes
    shared: int = -1  # bytes per block: Triton's dynamic request or ptxas' static smem, whichever is larger
    seconds: float = 0.0  # compile + ptxas wall time (0 for a cache hit)
    cached: bool = False
    error: str = ""


def default_cache_dir() -> Path:
    """``$PIX2PIX_FAST_GPU_COMPILE_CACHE``, else ``~/.cache/pix2pix_fast/gpu_compile``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "pix2pix_fast" / "gpu_compile"


def kernel_name(kernel) -> str:
    """``module:qualname`` of a ``@triton.jit`` kernel (a JITFunction or an InterpretedFunction)."""
    fn = getattr(kernel, "fn", kernel)
    return f"{fn.__module__}:{fn.__qualname__}"


def _int_class(v: int) -> tuple:
    # What Triton's binder specialises an integer on: its width, == 1, % 16 == 0.
    width = "i32" if -(2**31) <= v < 2**31 else "i64"
    return (width, v == 1, v % 16 == 0)


def compile_key(launch: Launch) -> tuple:
    """Launches with equal keys compile to the same binary (grid and scalar values aside)."""
    args = []
    for name, v in launch.args:
        if isinstance(v, Ptr):
            args.append((name, str(v.dtype)))
        elif isinstance(v, bool):
            args.append((name, "u1", v))
        elif isinstance(v, int):
            args.append((name,) + _int_class(v))
        else:
            args.append((name, "fp32"))
    return (kernel_name(launch.kernel), tuple(args), launch.constexprs, launch.num_warps, launch.num_stages)


def unique_launches(launches: Iterable[Launch]) -> List[Launch]:
    """One representative per :func:`compile_key`, in first-seen order."""
    seen: Dict[tuple, Launch] = {}
    for launch in launches:
        seen.setdefault(compile_key(launch), launch)
    return list(seen.values())


# ---------------------------------------------------------------------------
# Worker side (a fresh process: TRITON_INTERPRET unset before triton is imported)
# ---------------------------------------------------------------------------
def _worker_init() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)


def _jit_function(name: str):
    from triton.runtime.jit import JITFunction

    module, qualname = name.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, JITFunction):
        raise TypeError(f"{name} is not a @triton.jit kernel in this process (TRITON_INTERPRET set?)")
    return obj


def _stand_in(value):
    # The binder looks at a tensor's dtype and data_ptr() alignment only.
    if isinstance(value, Ptr):
        return torch.empty(16, dtype=value.dtype)
    return value


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> Tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, static smem bytes) from ``ptxas -v`` output."""
    regs = [int(m) for m in _PTXAS_REGS.findall(log)]
    smem = [int(m) for m in _PTXAS_SMEM.findall(log)]
    spills = [(int(a), int(b)) for a, b in _PTXAS_SPILL.findall(log)]
    if not regs or not spills:
        raise ValueError(f"no register / spill report in the ptxas output:\n{log}")
    return max(regs), max(s for s, _ in spills), max(l for _, l in spills), max(smem, default=0)


def _ptxas_report(ptx: str, arch: int) -> Tuple[int, int, int, int]:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        # The flags Triton assembles with (CUDABackend.make_cubin), plus -v.
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(Path(tmp) / "kernel.cubin")]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return parse_ptxas_log(out.stdout + out.stderr)


def _compile_one(job: tuple) -> CompileResult:
    name, args, constexprs, num_warps, num_stages, arch, cache_dir = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas_version
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    readable = f"{dict(constexprs)} num_warps={num_warps} num_stages={num_stages}"
    try:
        jf = _jit_function(name)
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(jf.signature, jf.params, backend)
        kwargs = {k: _stand_in(v) for k, v in args}
        kwargs.update(constexprs)
        opts = {"num_warps": num_warps}
        if num_stages is not None:
            opts["num_stages"] = num_stages
        bound, specialization, options = binder(**kwargs, **opts)
        options, signature, consts, attrs = jf._pack_args(backend, options, bound, specialization, options)
    except Exception as e:  # a launch that does not fit its kernel's parameters
        return CompileResult(name, arch, "", readable, error=f"{type(e).__name__}: {e}")
    readable += " " + ", ".join(f"{k}:{v}" for k, v in signature.items() if v != "constexpr")
    material = json.dumps(
        [jf.cache_key, sorted(signature.items()), sorted((str(k), repr(v)) for k, v in consts.items()),
         sorted((str(k), repr(v)) for k, v in attrs.items()), sorted((k, repr(v)) for k, v in options.__dict__.items()),
         arch, triton.__version__, get_ptxas_version(arch)],
    )
    key = hashlib.sha256(material.encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.exists():
        data = json.loads(path.read_text())
        return CompileResult(**{**data, "launch": readable, "seconds": 0.0, "cached": True})
    t0 = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(jf, signature, consts, attrs), target=target, options=options.__dict__)
        regs, stores, loads, smem = _ptxas_report(compiled.asm["ptx"], arch)
    except Exception as e:  # reported per launch; the test names the failing configuration
        return CompileResult(name, arch, key, readable, error=f"{type(e).__name__}: {e}")
    result = CompileResult(
        name, arch, key, readable, regs, stores, loads, max(int(compiled.metadata.shared), smem),
        time.perf_counter() - t0,
    )
    if path is not None:
        from pix2pix_fast.fileio import write_text

        write_text(path, json.dumps({k: v for k, v in asdict(result).items() if k not in ("seconds", "cached")}))
    return result


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def compile_launches(
    launches: Sequence[Launch],
    archs: Sequence[int] = ARCHS,
    workers: Optional[int] = None,
    cache_dir: Optional[Path] = None,
) -> List[CompileResult]:
    """Compile every unique launch for every arch; one :class:`CompileResult` each (errors included).

    ``workers``: processes (default: the CPU count); ``cache_dir``: result
    cache (default :func:`default_cache_dir`; pass ``Path("")`` to disable).
    """
    cache = default_cache_dir() if cache_dir is None else cache_dir
    cache_arg = str(cache) if str(cache) not in ("", ".") else ""
    jobs = [
        (kernel_name(l.kernel), l.args, l.constexprs, l.num_warps, l.num_stages, arch, cache_arg)
        for l in unique_launches(launches) for arch in archs
    ]
    if not jobs:
        return []
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    ctx = multiprocessing.get_context("spawn")
    # A spawned worker inherits this environment and imports the ops (so
    # decorates their kernels) before its initializer runs: TRITON_INTERPRET
    # must be unset while the workers start, or they would get interpreted
    # kernels.
    interpret = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            return list(pool.map(_compile_one, jobs, chunksize=1))
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
