"""Run a trained generator on images: `Pix2Pix.from_checkpoint(path)(image)`.

Inputs and outputs keep their type:

  PIL image           -> PIL image (mode L / LA / RGB / RGBA by output_nc)
  uint8 array (H, W[, C]) -> uint8 array (H, W, output_nc); a 2-D input gives a
                         2-D output when output_nc is 1
  float tensor (C, H, W) or (N, C, H, W) in [-1, 1] -> float tensor in [-1, 1]
                         of the same rank, dtype and device
  a list of any of these -> a list (each image on its own, sizes may differ)

PIL images and uint8 arrays with another channel count than the model's are
converted with Pillow's rules, the same ones the data pipeline uses when it
reads files (RGBA -> RGB drops alpha, RGB -> L is ITU-R 601 luma, L -> RGB
repeats); other mismatches (tensors, > 4 channels, float arrays) raise
DataError in one line.

Any size works: the image is reflect-padded up to the network's multiple
(unet_256 needs multiples of 256) and the output cropped back. `margin=M`
pads M more pixels of reflection on every side first, so the zero padding of
the network's own convolutions falls outside the kept region: the cheap cure
for border artifacts (pad-then-crop).

Large images run in tiles (`inference/tiled.py`, `tiling=TileOptions(...)`):
with `tile=N`, any image larger than N x N (after padding) is cut into
overlapping tiles that are blended over the overlap, in memory that does not
grow with the image's height; with the defaults, only an image whose
whole-image forward would need more than half the free memory is tiled.
Instance norm (and train-mode batch norm) then use the whole image's
statistics, gathered tile by tile first.

Test-time behaviour: by default the generator runs in train mode, as the
paper and its reference code test: dropout stays on (the paper's noise
source, so two runs differ) and BatchNorm uses the statistics of the batch.
Running statistics are never updated by inference (BatchNorm layers stop
tracking them). `eval_mode=True` gives the deterministic alternative (no dropout,
BatchNorm running statistics), which is what `export` writes.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pix2pix_fast.config import MARGIN, ConfigError, TrainConfig
from pix2pix_fast.cuda_graph import CudaGraph
from pix2pix_fast.device import resolve_device
from pix2pix_fast.errors import DataError
from pix2pix_fast.inference.tiled import TileOptions, Tiler
from pix2pix_fast.runtime import make_runtime

__all__ = [
    "Pix2Pix", "load_generator", "resolve_device", "reflect_pad", "pad_layout", "translate", "to_model_range", "to_uint8",
]

_PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
PRECISIONS = ("fp32", "bf16")


def load_generator(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", fused: bool = False
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """(G with the checkpoint's weights, its TrainConfig, the checkpoint's other scalars).

    Raises CheckpointError (one line) for a missing, corrupt or foreign file, a
    config this version cannot read, or weights of another architecture.
    """
    from pix2pix_fast.models import build_generator
    from pix2pix_fast.checkpoint import build_loaded, config_of, load_checkpoint

    state = load_checkpoint(path)
    cfg = config_of(state, path)
    G = build_loaded(build_generator, cfg, state["G"], "G", path, fused=fused)
    meta = {k: state[k] for k in ("step", "epoch") if k in state}
    return G.to(device), cfg, meta


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding of any width (repeated reflection where the pad exceeds the image).

    A size-1 side cannot reflect and is replicated instead.
    """
    pads = [left, right, top, bottom]
    while any(pads):
        h, w = x.shape[-2:]
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        if not any(step):
            return F.pad(x, pads, mode="replicate")
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return x


def pad_layout(h: int, w: int, multiple: int, margin: int = 0) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): `margin` on every side, then up to the multiple (split evenly)."""
    extra_h = -(h + 2 * margin) % multiple
    extra_w = -(w + 2 * margin) % multiple
    return (margin + extra_w // 2, margin + extra_w - extra_w // 2, margin + extra_h // 2, margin + extra_h - extra_h // 2)


def translate(G: nn.Module, x: torch.Tensor, *, margin: int = 0, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """G on (N, C, H, W) float [-1, 1] of any size: reflect-pad, run (no grad), crop; float32 in [-1, 1].

    Runs in whatever mode G is in; x must already be on G's device.
    """
    h, w = x.shape[-2:]
    left, right, top, bottom = pad_layout(h, w, int(getattr(G, "multiple", 1)), margin)
    xp = reflect_pad(x.float(), left, right, top, bottom)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        y = G(xp)
    return y[..., top : top + h, left : left + w].float().clamp(-1.0, 1.0)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the trainer's mapping)."""
    return x.float().div(127.5).sub(1.0)


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded."""
    return y.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class Pix2Pix:
    """A generator ready for inference.

    Build with `Pix2Pix.from_checkpoint(path, device=..., eval_mode=...)` or
    wrap an in-memory generator with `Pix2Pix(G, cfg)`. Attributes: `G`,
    `config`, `device`, `multiple`, `input_nc`, `output_nc`, `eval_mode`,
    `precision`, `step` (training step of the checkpoint, or None).
    `precision="bf16"` runs the generator under bf16 autocast (outputs are
    float32); "fp32" (default) does not. `tiling` (a TileOptions; default:
    tile only past half the free memory) says when and how to tile. `runtime`: auto | eager | compiled |
    onnx, how G runs (runtime.py; `expected_images` lets auto weigh
    an ONNX export against the work ahead); `runtime_name` says which runs.
    """

    def __init__(
        self,
        generator: nn.Module,
        config: TrainConfig,
        *,
        device: str | torch.device = "auto",
        eval_mode: bool = False,
        precision: str = "fp32",
        step: int | None = None,
        tiling: TileOptions | None = None,
        runtime: str = "auto",
        expected_images: int = 0,
    ):
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.config = config
        self.G = generator.to(self.device).requires_grad_(False)
        self.multiple = int(getattr(generator, "multiple", 1))
        self.input_nc = config.input_nc
        self.output_nc = config.output_nc
        self.eval_mode = bool(eval_mode)
        self.precision = precision
        self.step = step
        self.tiler = Tiler(self, tiling or TileOptions())
        if self.eval_mode:
            self.G.eval()
        else:
            self.G.train()
            # Train mode for the paper's test-time behaviour (batch
            # statistics), but inference must not move the running statistics:
            # without tracking, train-mode BatchNorm leaves its buffers alone.
            for m in self.G.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.track_running_stats = False
        self.runtime = make_runtime(runtime, self.G, self.device, input_nc=self.input_nc, eval_mode=self.eval_mode,
                                    precision=precision)
        self.runtime.expected_images = expected_images

    @property
    def runtime_name(self) -> str:
        """eager | compiled | onnx: what runs the generator now (auto decides at its first call)."""
        return self.runtime.name

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        eval_mode: bool = False,
        precision: str = "fp32",
        tiling: TileOptions | None = None,
        runtime: str = "auto",
        expected_images: int = 0,
    ) -> "Pix2Pix":
        """Build G from the checkpoint's stored config and load its weights.

        Raises CheckpointError for a missing/corrupt/foreign checkpoint or one
        saved for a different architecture, ConfigError for a bad device or
        precision.
        """
        dev = resolve_device(device)
        G, cfg, meta = load_generator(path, device=dev)
        return cls(G, cfg, device=dev, eval_mode=eval_mode, precision=precision, step=meta.get("step"),
                   tiling=tiling, runtime=runtime, expected_images=expected_images)

    # ----------------------------------------------------------------- core
    def _forward(self, x: torch.Tensor, margin: int) -> torch.Tensor:
        """(N, input_nc, H, W) float in [-1, 1] -> (N, output_nc, H, W) float32; tiled (each image on its own)
        where `self.tiler` plans tiles for that size."""
        tiling, layout = self.tiler.plan(*x.shape[-2:], margin)
        if tiling is not None:
            return torch.stack([self.tiler.tensor(im, tiling, layout) for im in x])
        return self._whole(x.to(self.device), margin)

    def _whole(self, x: torch.Tensor, margin: int) -> torch.Tensor:
        """(N, input_nc, H, W) float in [-1, 1] on self.device -> (N, output_nc, H, W) float32, in one forward."""
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        return translate(self.runtime, x, margin=margin, autocast_dtype=dtype)

    def predict_tensor(self, x: torch.Tensor, *, margin: int = 0) -> torch.Tensor:
        """(N, C, H, W) or (C, H, W) float in [-1, 1] -> the same rank, dtype and device."""
        MARGIN.check("--margin", margin)
        if not torch.is_floating_point(x):
            raise DataError(f"tensor images must be float in [-1, 1], got dtype {x.dtype} (convert uint8 with x / 127.5 - 1)")
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise DataError(f"tensor images must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.input_nc:
            raise DataError(f"the image has {x.shape[1]} channels but the model takes {self.input_nc}")
        if x.shape[-1] < 1 or x.shape[-2] < 1 or x.shape[0] < 1:
            raise DataError(f"empty image batch of shape {tuple(x.shape)}")
        y = self._forward(x, margin).to(device=x.device, dtype=x.dtype)
        return y[0] if single else y

    def __call__(self, image: Any, *, margin: int = 0) -> Any:
        """Translate one image (or a list) and return the same type; see the module docstring."""
        if isinstance(image, (list, tuple)):
            return [self(im, margin=margin) for im in image]
        if isinstance(image, torch.Tensor):
            return self.predict_tensor(image, margin=margin)
        from PIL import Image

        if isinstance(image, Image.Image):
            return self._call_pil(image, margin)
        if isinstance(image, np.ndarray):
            return self._call_array(image, margin)
        raise DataError(f"cannot translate a {type(image).__name__}: pass a PIL image, a uint8 array or a float tensor")

    # --------------------------------------------------------------- adapters
    def _run_uint8(self, arr: np.ndarray, margin: int) -> np.ndarray:
        """(H, W, input_nc) uint8 -> (H, W, output_nc) uint8."""
        MARGIN.check("--margin", margin)
        tiling, layout = self.tiler.plan(*arr.shape[:2], margin)
        if tiling is not None:  # read tile by tile from the uint8 array: the whole image is never float
            return self.tiler.uint8(arr, tiling, layout)
        arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()  # torch wants writable memory
        x = to_model_range(torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0))
        y = self.predict_tensor(x.to(self.device), margin=margin)
        return to_uint8(y[0]).permute(1, 2, 0).cpu().numpy()

    def _convert(self, arr: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) -> (H, W, input_nc) with Pillow's conversion rules."""
        from PIL import Image

        c = arr.shape[2]
        if c == self.input_nc:
            return arr
        if c not in _PIL_MODES or self.input_nc not in _PIL_MODES:
            raise DataError(f"the image has {c} channels but the model takes {self.input_nc} and cannot convert it")
        img = Image.fromarray(arr[:, :, 0] if c == 1 else arr, _PIL_MODES[c])
        out = np.asarray(img.convert(_PIL_MODES[self.input_nc]))
        return out[:, :, None] if out.ndim == 2 else out

    def _call_array(self, image: np.ndarray, margin: int) -> np.ndarray:
        if image.dtype != np.uint8:
            raise DataError(f"array images must be uint8 (H, W[, C]), got dtype {image.dtype} (use a float tensor for other ranges)")
        if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
            raise DataError(f"array images must be uint8 (H, W[, C]), got shape {image.shape}")
        two_d = image.ndim == 2
        arr = image[:, :, None] if two_d else image
        out = self._run_uint8(self._convert(arr), margin)
        return out[:, :, 0] if two_d and self.output_nc == 1 else out

    def _call_pil(self, image, margin: int):
        from PIL import Image

        if self.input_nc not in _PIL_MODES or self.output_nc not in _PIL_MODES:
            raise DataError(f"a {self.input_nc}->{self.output_nc}-channel model cannot take or give PIL images; use arrays")
        try:
            arr = np.asarray(image.convert(_PIL_MODES[self.input_nc]))
        except (ValueError, OSError) as e:
            raise DataError(f"cannot convert a PIL image of mode {image.mode} to {_PIL_MODES[self.input_nc]} ({e})") from None
        out = self._run_uint8(arr[:, :, None] if arr.ndim == 2 else arr, margin)
        mode = _PIL_MODES[self.output_nc]
        return Image.fromarray(out[:, :, 0] if self.output_nc == 1 else out, mode)

    # ----------------------------------------------------------- fixed size
    def compile_fixed(
        self, batch: int, height: int, width: int, *, margin: int = 0, copy_output: bool = True
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable for (batch, input_nc, height, width) float [-1, 1] tensors -> outputs on self.device.

        On CUDA the whole step (padding, generator, crop) is captured once in a
        CUDA graph and each call replays it: no Python or launch overhead, the
        fastest way to push many same-sized images through. Inputs on another
        device are copied in. With `copy_output=False` the returned tensor is
        the graph's static output buffer, overwritten by the next call. On CPU
        this is simply the eager forward (same semantics, no graph).
        """
        for name, v in (("batch", batch), ("height", height), ("width", width)):
            if v < 1:
                raise ConfigError(f"compile_fixed: {name} must be >= 1, got {v}")
        MARGIN.check("--margin", margin)
        shape = (batch, self.input_nc, height, width)

        def check(x: torch.Tensor) -> None:
            if tuple(x.shape) != shape or not torch.is_floating_point(x):
                raise DataError(f"this compiled model takes float tensors of shape {shape}, got {x.dtype} {tuple(x.shape)}")

        if self.device.type != "cuda":
            def run_eager(x: torch.Tensor) -> torch.Tensor:
                check(x)
                return self._whole(x.to(self.device), margin)

            return run_eager

        # On the model's GPU (cuda_graph.py makes it current): a model on cuda:1 captures there.
        graph = CudaGraph(lambda x: self._whole(x, margin), device=self.device)
        graph.load(torch.zeros(shape))  # copied into a static buffer made on the model's GPU
        for _ in range(3):  # warm up (cuDNN autotuning, allocator) outside the capture
            graph.warm_up()
        graph.capture()

        def run_graph(x: torch.Tensor) -> torch.Tensor:
            check(x)
            graph.load(x)
            out = graph.replay()
            return out.clone() if copy_output else out

        run_graph.graph = graph  # keep the graph (and its memory pool) alive with the callable
        return run_graph

    def __repr__(self) -> str:
        mode = "eval" if self.eval_mode else "train (test-time dropout)"
        return f"Pix2Pix({self.config.netG}, {self.input_nc}->{self.output_nc} channels, device={self.device}, mode={mode})"
