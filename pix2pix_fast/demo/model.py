"""The model side of the demo: decode an upload, run the generator, encode PNGs.

One generator is loaded and kept twice: in train mode (the paper's test-time
dropout, a fresh noise draw per seed) and, for the deterministic switch, in
eval mode. On CUDA each (mode, height, width, margin) gets a CUDA graph from
`Pix2Pix.compile_fixed` (the fast fixed-size path; a canvas keeps its size
while painting, so later strokes replay the graph); the few most recent are
kept. On CPU it is the plain eager forward. Images whose whole-image forward
would exceed the memory budget (or larger than --tile) run tiled
(`inference/tiled.py`), so `--max-side` can be as large as images are.

Uploads are decoded by the data pipeline's own reader (`read_image`), so the
page accepts what training accepts (PNG, JPEG, BMP, TIFF, WebP, 16-bit
greyscale, `.npy` arrays) and converts channels with the same rules.
"""
from __future__ import annotations

import copy
import io
import random
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pix2pix_fast.config import MARGIN, ConfigError, TrainConfig
from pix2pix_fast.errors import DataError
from pix2pix_fast.inference import Pix2Pix, load_generator, resolve_device, to_model_range, to_uint8

MAX_GRAPHS = 6  # CUDA graphs kept (each holds its own memory pool)
MAX_SEED = 2**31 - 1
MAX_MARGIN = MARGIN.hi  # pad-then-crop margin limit, pixels a side
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


@dataclass
class Translation:
    input: np.ndarray  # (H, W, input_nc) uint8, the image as the model saw it
    output: np.ndarray  # (H, W, output_nc) uint8
    ms: float  # model time: upload to device, forward, copy back
    seed: int
    deterministic: bool
    captured: bool  # a CUDA graph was captured for this size first (included in ms)


class DemoModel:
    """A checkpoint ready to translate uploaded image bytes; thread-safe (one forward at a time)."""

    def __init__(self, checkpoint: str | Path, *, device: str = "auto", precision: str = "fp32",
                 max_side: int = 8192, tiling=None, runtime: str = "auto"):
        if max_side < 1:
            raise ConfigError(f"--max-side must be >= 1, got {max_side}")
        from pix2pix_fast.errors import CheckpointError

        dev = resolve_device(device)
        try:
            G, cfg, meta = load_generator(checkpoint, device=dev)
        except CheckpointError as e:
            hint = ""
            if str(e).endswith("not a pix2pix-fast checkpoint"):
                hint = (" (a reference implementation's latest_net_G.pth converts with "
                        "`pix2pix-fast import-reference`)")
            raise CheckpointError(f"{e}{hint}") from None
        for what, nc in (("takes", cfg.input_nc), ("gives", cfg.output_nc)):
            if nc not in _MODES:
                raise ConfigError(f"{checkpoint}: the model {what} {nc}-channel images; the demo page shows "
                                  "1-4 channels (use `pix2pix-fast test` for this model)")
        self.checkpoint = Path(checkpoint)
        self.config: TrainConfig = cfg
        self.step = meta.get("step")
        self.max_side = max_side
        # Two copies, since Pix2Pix sets the module's mode (and BatchNorm tracking) for good.
        G_eval = copy.deepcopy(G)
        # runtime (runtime.py) runs the deterministic copy; ONNX Runtime has no test-time
        # dropout, so with --runtime onnx the sampling copy stays eager.
        sampling_runtime = "eager" if runtime == "onnx" else runtime
        self.sampling = Pix2Pix(G, cfg, device=dev, eval_mode=False, precision=precision, step=self.step,
                                tiling=tiling, runtime=sampling_runtime)
        self.deterministic = Pix2Pix(G_eval, cfg, device=dev, eval_mode=True, precision=precision, step=self.step,
                                     tiling=tiling, runtime=runtime)
        self.device = dev
        self._graphs: OrderedDict[tuple, Callable[[torch.Tensor], torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def has_dropout(self) -> bool:
        """Whether G holds any dropout layer (small U-Nets have none even with --dropout)."""
        return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.sampling.G.modules())

    def describe(self) -> dict:
        cfg = self.config
        return {
            "checkpoint": self.checkpoint.name, "netG": cfg.netG, "input_nc": cfg.input_nc,
            "output_nc": cfg.output_nc, "step": self.step, "device": str(self.device),
            "dropout": self.has_dropout, "norm": cfg.norm, "crop_size": cfg.crop_size,
            "multiple": self.sampling.multiple, "direction": cfg.direction,
        }

    # ----------------------------------------------------------------- input
    def decode(self, data: bytes) -> np.ndarray:
        """Uploaded file bytes -> (H, W, input_nc) uint8, or DataError in one line."""
        from pix2pix_fast.data.imageio import image_size, read_image

        if not data:
            raise DataError("the upload is empty")
        suffix = ".npy" if data[:6] == b"\x93NUMPY" else ".upload"
        with tempfile.TemporaryDirectory(prefix="pix2pix-fast-demo-") as tmp:
            path = Path(tmp) / f"image{suffix}"
            path.write_bytes(data)
            try:
                w, h = image_size(path)
                if max(w, h) > self.max_side:
                    raise DataError(f"the image is {w}x{h} pixels; this demo takes sides up to "
                                    f"{self.max_side} pixels (--max-side)")
                if min(w, h) < 1:
                    raise DataError(f"the image is {w}x{h} pixels; it has no pixels to translate")
                return read_image(path, self.config.input_nc)
            except DataError as e:
                raise DataError(str(e).replace(str(path), "the uploaded file")) from None

    # ----------------------------------------------------------------- model
    def translate(self, image: np.ndarray, *, margin: int = 0, deterministic: bool = False,
                  seed: int | None = None) -> Translation:
        """(H, W, input_nc) uint8 -> Translation. Dropout noise is drawn from `seed` (random if None)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != self.config.input_nc:
            raise DataError(f"expected a uint8 (H, W, {self.config.input_nc}) image, got {image.dtype} {image.shape}")
        if not 0 <= margin <= MAX_MARGIN:
            raise DataError(f"margin must be between 0 and {MAX_MARGIN}, got {margin}")
        seed = random.randrange(MAX_SEED) if seed is None else seed
        if not 0 <= seed <= MAX_SEED:
            raise DataError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
        model = self.deterministic if deterministic else self.sampling
        h, w = image.shape[:2]
        x = to_model_range(torch.from_numpy(image.copy()).permute(2, 0, 1).unsqueeze(0))  # a copy: torch wants writable memory
        with self._lock:
            torch.manual_seed(seed)
            x = x.to(self.device)
            t0 = time.perf_counter()
            if self.device.type == "cuda" and model.tiler.plan(h, w, margin)[0] is None:
                run, captured = self._graph(model, h, w, margin)
                y = run(x)
            else:
                y, captured = model.predict_tensor(x, margin=margin), False
            out = to_uint8(y[0]).permute(1, 2, 0).cpu().numpy()
            ms = (time.perf_counter() - t0) * 1000.0
        return Translation(image, out, ms, seed, deterministic, captured)

    def _graph(self, model: Pix2Pix, h: int, w: int, margin: int) -> tuple[Callable, bool]:
        key = (model.eval_mode, h, w, margin)
        run = self._graphs.get(key)
        if run is not None:
            self._graphs.move_to_end(key)
            return run, False
        while len(self._graphs) >= MAX_GRAPHS:
            self._graphs.popitem(last=False)
        run = self._graphs[key] = model.compile_fixed(1, h, w, margin=margin)
        return run, True


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, C) with C in 1-4 -> (H, W, channels) by Pillow's conversion rules."""
    from PIL import Image

    if image.shape[2] == channels:
        return image
    c = image.shape[2]
    img = Image.fromarray(image[:, :, 0] if c == 1 else image, _MODES[c]).convert(_MODES[channels])
    out = np.asarray(img)
    return out[:, :, None] if out.ndim == 2 else out


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, C), C in 1-4 -> PNG bytes (lossless, fast compression)."""
    from PIL import Image

    c = image.shape[2]
    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if c == 1 else image, _MODES[c]).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
