"""Export a checkpoint's generator to ONNX or TorchScript, or as a reference state dict.

The exported graph is the generator alone, in deterministic eval mode:
dropout off and BatchNorm with its running statistics. The paper's test-time
dropout (the default of `Pix2Pix`, `pix2pix-fast test`) is NOT exported;
compare exported outputs with `Pix2Pix.from_checkpoint(..., eval_mode=True)`.

Input:  "input",  float32 (N, input_nc, H, W) in [-1, 1]
Output: "output", float32 (N, output_nc, H, W) in [-1, 1] (tanh)
H and W must be multiples of the network's multiple (2^downsamplings: 256 for
unet_256, 4 for the ResNets); pad (reflect) and crop outside, as
`Pix2Pix.__call__` does.

* onnx: the torch.export-based exporter (needs the `onnx` and `onnxscript`
  packages: `pip install pix2pix-fast[export]`), with dynamic batch, height
  and width. Traced at 2 x `size` x `size` (size defaults to the config's
  crop size; at least twice the multiple so no axis is specialised to 1).
* torchscript: `torch.jit.trace` at 1 x `size` x `size` (PyTorch marks
  TorchScript as deprecated; prefer ONNX or `torch.export` for new code).
  The traced convolutions take other multiples too; only `size` is verified.

* reference: the state dict of the reference implementation
  (pytorch-CycleGAN-and-pix2pix), loadable by its test.py; see
  `pix2pix_fast.interop.reference` (no tracing, `size` unused; `net="D"` writes the
  discriminator).

After writing, the file is loaded back and its output compared with PyTorch on
a random input (TorchScript always; ONNX when onnxruntime is installed);
a mismatch raises ExportError.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from pix2pix_fast.config import ConfigError
from pix2pix_fast.errors import DataError
from pix2pix_fast.errors import ExportError
from pix2pix_fast.fileio import atomic_path, atomic_write, os_error_in
from pix2pix_fast.runtime import importable

__all__ = ["export", "ExportError", "FORMATS"]

FORMATS = ("onnx", "torchscript", "reference")
# Largest |exported - PyTorch| accepted by the check (outputs are in [-1, 1]).
_ATOL = 1e-4


def _check_out_path(out_path: Path) -> None:
    folder = out_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output folder {folder}: {e.strerror or e}") from None
    if out_path.is_dir():
        raise DataError(f"output path {out_path} is a folder; give a file name")
    if not os.access(folder, os.W_OK):
        raise DataError(f"cannot write to output folder {folder}: permission denied")


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def export(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    format: str = "onnx",
    size: int | None = None,
    *,
    opset: int | None = None,
    verify: bool = True,
    net: str = "G",
) -> Path:
    """Write the checkpoint's generator to `out_path` as ONNX or TorchScript; returns the path.

    size: the square trace size (default: the checkpoint's crop_size); must
    be a multiple of the generator's multiple. opset: ONNX opset (default:
    the exporter's). verify: load the file back and compare with PyTorch.  net: "G" or
    "D" (format "reference" only; the others export the generator).
    Raises CheckpointError (bad checkpoint), ConfigError (bad format/size),
    DataError (unwritable output), ExportError (exporter failure or mismatch).
    """
    from pix2pix_fast.inference import load_generator

    if format not in FORMATS:
        raise ConfigError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    out_path = Path(out_path)
    if format == "reference":
        from pix2pix_fast.interop.reference import export_reference

        _check_out_path(out_path)
        return export_reference(checkpoint, out_path, net=net)
    G, cfg, _ = load_generator(checkpoint, device="cpu")
    G.eval().requires_grad_(False)
    m = int(getattr(G, "multiple", 1))
    size = cfg.crop_size if size is None else int(size)
    if size < 1 or size % m:
        raise ConfigError(f"--size {size} is not a positive multiple of {m} ({cfg.netG} needs H and W divisible by {m})")
    _check_out_path(out_path)

    gen = torch.Generator().manual_seed(0)
    if format == "torchscript":
        example = torch.rand(1, cfg.input_nc, size, size, generator=gen) * 2 - 1
        _export_torchscript(G, example, out_path)
    else:
        s = max(size, 2 * m)
        example = torch.rand(2, cfg.input_nc, s, s, generator=gen) * 2 - 1
        _export_onnx(G, example, out_path, m, opset)
    if verify:
        _verify(G, example, out_path, format)
    return out_path


def _export_torchscript(G: nn.Module, example: torch.Tensor, out_path: Path) -> None:
    with warnings.catch_warnings():
        # Tracing warns that it is deprecated, and that shape checks inside
        # F.instance_norm become constants; neither affects the traced convs.
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(G, example, check_trace=False)
        except Exception as e:  # tracing failures come in many types
            raise ExportError(f"TorchScript export failed: {_one_line(e)}") from None
        # Through a Python file object: torch.jit.save to a path writes from C++, which aborts the
        # process on a full disk.
        with atomic_write(out_path) as f:
            torch.jit.save(traced, f)


def _export_onnx(G: nn.Module, example: torch.Tensor, out_path: Path, multiple: int, opset: int | None) -> None:
    missing = [name for name in ("onnx", "onnxscript") if not importable(name)]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'pix2pix-fast[export]'")
    batch = torch.export.Dim("batch", min=1)
    h = torch.export.Dim("height", min=1)
    w = torch.export.Dim("width", min=1)
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with atomic_path(out_path) as tmp:
            try:
                torch.onnx.export(
                    G, (example,), str(tmp),
                    input_names=["input"], output_names=["output"],
                    dynamic_shapes=({0: batch, 2: multiple * h, 3: multiple * w},),
                    dynamo=True, verbose=False, **kwargs,
                )
            except Exception as e:  # the exporter raises many types
                if os_error_in(e) is not None:
                    raise  # a failed write: atomic_path reports it
                raise ExportError(f"ONNX export failed: {_one_line(e)}") from None


def _verify(G: nn.Module, example: torch.Tensor, out_path: Path, format: str) -> None:
    with torch.no_grad():
        expected = G(example)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit.load is deprecated"
            loaded = torch.jit.load(str(out_path), map_location="cpu")
        with torch.no_grad():
            got = loaded(example)
    else:
        if not importable("onnxruntime"):
            return  # nothing to check with; the file is written
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(["output"], {"input": example.numpy()})[0])
    err = (got.float() - expected.float()).abs().max().item()
    if not err <= _ATOL:
        raise ExportError(f"{out_path}: the exported {format} model differs from PyTorch by {err:.2e} (> {_ATOL:.0e})")
