"""How a generator runs at inference: eager PyTorch, compiled, or ONNX Runtime.

    run = make_runtime("auto", G, device, input_nc=3, eval_mode=True)
    y = run(x)   # (N, C, H, W) float32, H and W multiples of run.multiple -> G(x)

- ``eager``: G itself, as trained.
- ``compiled``: ``torch.compile`` (inductor). In eval mode on a CPU the
  weights are frozen into the graph as constants and the convolutions'
  weights prepacked for oneDNN (inductor's ``freezing``); in train mode
  (test-time dropout, batch statistics) it compiles without freezing. Each
  new input shape compiles once, which costs seconds to minutes: it pays for
  many images of one size.
- ``onnx``: the generator exported in memory with dynamic batch, height and
  width and run by ONNX Runtime's CPU provider
  with torch's intra-op thread count. CPU and eval mode only (ONNX Runtime
  has no test-time dropout); needs ``onnxruntime`` (the ``export`` extra).
- ``auto``: eager, switching to ONNX Runtime on a CPU in eval mode (where
  it is installed) when that pays with its export counted: the first call
  runs eager and is timed, and if the images still expected
  (``expected_images``, e.g. a `test` folder's count) would take longer in
  eager than ``ONNX_PAYS_AFTER_S`` the generator is exported and the rest
  runs on ONNX Runtime. Without an expected count (single calls) it stays
  eager. If the export fails, auto says so in one line and stays eager; an
  explicit ``onnx`` is an ExportError.

Every runtime gives G's outputs within fp32 rounding (tested).
"""
from __future__ import annotations

import importlib.util
import sys
import time
from typing import Callable

import torch
from torch import nn

from pix2pix_fast.config import RUNTIMES
from pix2pix_fast.errors import ConfigError, ExportError

__all__ = ["RUNTIMES", "ONNX_PAYS_AFTER_S", "importable", "onnx_available", "resolve_runtime", "make_runtime", "Runtime", "AutoRuntime"]

# Eager seconds of remaining work above which auto exports to ONNX Runtime. Measured on a
# loaded 2-core CPU (README, CPU figures): exporting unet_256 and opening the session took
# 17 s (28 s in a scratch run), and ONNX Runtime then ran it 4.2x faster than eager (256 px,
# batch 1), so the export pays after about 22-37 s of eager work; 60 s leaves room.
ONNX_PAYS_AFTER_S = 60.0


def importable(name: str) -> bool:
    """The package `name` is installed (found without importing it)."""
    return importlib.util.find_spec(name) is not None


def onnx_available() -> bool:
    """ONNX Runtime and the exporter's packages can be imported."""
    return importable("onnxruntime") and importable("onnx")


def resolve_runtime(runtime: str, device: torch.device, eval_mode: bool, precision: str = "fp32") -> str:
    """eager | compiled | onnx for a request, or auto where auto may export to ONNX Runtime later
    (a CPU, eval mode, fp32, onnxruntime installed; elsewhere auto is eager); ConfigError (one
    line) when the request cannot run here."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        onnx_fits = device.type == "cpu" and eval_mode and precision == "fp32"
        return "auto" if onnx_fits and onnx_available() else "eager"
    if runtime == "onnx":
        if device.type != "cpu":
            raise ConfigError(f"--runtime onnx runs on the CPU (use --device cpu, or --runtime eager on {device.type})")
        if not eval_mode:
            raise ConfigError("--runtime onnx runs the deterministic eval mode (add --eval-mode: "
                              "ONNX Runtime has no test-time dropout)")
        if precision != "fp32":
            raise ConfigError(f"--runtime onnx runs fp32 (not --precision {precision})")
        if not onnx_available():
            raise ConfigError("--runtime onnx needs onnxruntime and onnx: "
                              "pip install 'pix2pix-fast[export]'")
    return runtime


class Runtime:
    """A callable G: (N, C, H, W) -> G's output, with G's `multiple` and the runtime's `name`."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], multiple: int):
        self.name, self.fn, self.multiple = name, fn, multiple
        self.expected_images = 0  # what auto weighs an export against (AutoRuntime)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"Runtime({self.name})"


class AutoRuntime(Runtime):
    """Eager until the first call's time says ONNX Runtime pays for the images still expected."""

    def __init__(self, G: nn.Module, multiple: int, input_nc: int, announce: Callable[[str], None] | None):
        super().__init__("eager", G, multiple)
        self.G, self.input_nc, self.announce = G, input_nc, announce or _stderr
        self.decided = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.decided:
            return self.fn(x)
        t0 = time.perf_counter()
        y = self.fn(x)
        self.decided = True
        per_image = (time.perf_counter() - t0) / x.shape[0]
        if (self.expected_images - x.shape[0]) * per_image > ONNX_PAYS_AFTER_S:
            try:
                self.fn, self.name = _onnx(self.G, self.multiple, self.input_nc), "onnx"
            except ExportError as e:
                self.announce(f"pix2pix-fast: {e}; running the eager generator")
        return y


def make_runtime(runtime: str, G: nn.Module, device: torch.device, *, input_nc: int, eval_mode: bool,
                 precision: str = "fp32", announce: Callable[[str], None] | None = None) -> Runtime:
    """The resolved runtime around G (already on `device`, in its train or eval mode; input_nc: its input channels)."""
    name = resolve_runtime(runtime, device, eval_mode, precision)
    multiple = int(getattr(G, "multiple", 1))
    if name == "compiled":
        return Runtime(name, _compiled(G, device, eval_mode), multiple)
    if name == "onnx":
        return Runtime(name, _onnx(G, multiple, input_nc), multiple)
    if name == "auto":
        return AutoRuntime(G, multiple, input_nc, announce)
    return Runtime("eager", G, multiple)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _compiled(G: nn.Module, device: torch.device, eval_mode: bool) -> Callable:
    # Freezing folds the weights into the graph as constants (and lets oneDNN
    # prepack them): right for a fixed eval-mode model on a CPU, wrong for
    # train mode, whose batch statistics are computed per call anyway.
    options = {"freezing": True} if eval_mode and device.type == "cpu" else None
    return torch.compile(G, options=options)


def _onnx(G: nn.Module, multiple: int, input_nc: int) -> Callable:
    import onnxruntime as ort

    session = ort.InferenceSession(_onnx_bytes(G, multiple, input_nc), _session_options(ort),
                                   providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(["output"], {"input": x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out)

    return run


def _onnx_bytes(G: nn.Module, multiple: int, input_nc: int) -> bytes:
    """G as an ONNX model in memory, dynamic in batch, height and width.

    The TorchScript-based exporter: for this all-convolution network it gives
    the same graph as `export`'s torch.export-based one in a few seconds
    instead of about a minute, which is what auto weighs against the work.
    """
    import io
    import warnings

    s = 2 * multiple  # batch 2 and sides 2 x multiple: no dynamic size is 1
    example = torch.zeros(2, input_nc, s, s)
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(G, (example,), buf, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": axes, "output": axes}, dynamo=False)
        except Exception as e:  # the exporter raises many types
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ExportError(f"ONNX export of the generator failed ({type(e).__name__}: {first})") from None
    return buf.getvalue()


def _session_options(ort):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return options
