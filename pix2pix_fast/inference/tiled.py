"""Tiled inference: a generator on an image of any size in bounded memory.

The image is laid out as whole-image inference lays it out (`pad_layout`:
`margin` pixels of reflection on every side, then up to the network's
multiple): a *canvas*. The canvas is cut into square tiles of `tile` pixels
that overlap by at least `overlap`; tiles start on multiples of the network's
multiple (so every stride-2 layer sees the pixel grid it sees on the whole
image) and each reads its pixels from the image with the same reflection
rule as `reflect_pad`. A tile side that is also a canvas side therefore sees
exactly what whole-image inference sees there.

Blending: along each axis, over the overlap with a neighbour, a tile's weight
is 0 on the outer quarter (where its own edge effects are), rises as sin^2
over the middle half and is 1 on the inner quarter (1 up to a canvas edge);
the weights are normalised to sum to 1 per axis, so their products sum to 1
on the canvas and no weight buffer is needed.

Normalisation (how each norm is handled):
- BatchNorm in eval mode uses its running statistics: the same on a tile as
  on the whole image; nothing to do.
- InstanceNorm, and BatchNorm in train mode (the paper's test-time default:
  at batch 1 it normalises with the image's own statistics, as instance norm
  does), normalise with statistics over the whole canvas. Computed per tile
  they drift from tile to tile; with `image_stats=True` (default) they are
  gathered layer by layer: pass k runs every tile up to the k-th norm layer
  (those before it normalised with the statistics already gathered), merges
  the mean and variance of that layer's input over each tile's *own* region
  (the tiles' own regions partition the canvas), and stops there. After one
  pass per norm layer, a last pass runs the tiles normalised with the
  image's statistics and blends them. Cost: one partial forward per norm
  layer (about half a forward each) on top of the final one. A batch of
  images is tiled image by image, so train-mode BatchNorm then uses each
  image's statistics, not the batch's.

Memory: one batch of tiles' activations, plus an accumulator of `tile` rows
of the output's width (float32); finished rows go straight to the output.
So memory beyond the input and output images is flat in the image's height
and grows only with its width (the band: 4 * output channels * tile bytes a
column, held about twice while it shifts).

On CUDA each tile batch shape is captured once as a CUDA graph (the final
pass; the statistics passes run eagerly); this path has not been run on a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pix2pix_fast.config import ConfigError, Range
from pix2pix_fast.cuda_graph import CudaGraph
from pix2pix_fast.errors import DataError

__all__ = ["TILE", "OVERLAP", "MAX_MEMORY", "Tiling", "tile_starts", "blend_weights", "own_regions",
           "reflect_index", "norm_layers", "activation_bytes_per_pixel", "choose_tiling", "run_tiled"]

# --tile (0: whole image, unless it would exceed --max-memory), --overlap, --max-memory (MiB; 0: automatic).
TILE = Range(int, 0, 65536)
OVERLAP = Range(int, 0, 65536)
MAX_MEMORY = Range(int, 0, 2**30)
BATCH = Range(int, 1, 1024)


@dataclass(frozen=True)
class Tiling:
    """How to tile: `tile` side and least `overlap` in pixels, `batch` tiles a forward, and
    whether instance-style norms use the image's statistics (`image_stats`) or each tile's own."""

    tile: int
    overlap: int
    batch: int = 4
    image_stats: bool = True

    def check(self, multiple: int) -> "Tiling":
        """This tiling, or ConfigError in one line naming the flag and the nearest valid values."""
        TILE.check("--tile", self.tile)
        OVERLAP.check("--overlap", self.overlap)
        BATCH.check("--tile-batch", self.batch)
        if self.tile < multiple or self.tile % multiple:
            lo = max(multiple, self.tile // multiple * multiple)
            hint = f"{lo}" if lo >= self.tile else f"{lo} or {lo + multiple}"
            raise ConfigError(f"--tile {self.tile} is not a multiple of this network's {multiple}; use {hint}")
        if self.overlap > self.tile - multiple:
            raise ConfigError(f"--overlap {self.overlap} leaves no stride with --tile {self.tile} (tiles start on "
                              f"multiples of {multiple}); use at most {self.tile - multiple}")
        return self


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Starts of tiles of side `tile` covering [0, length), overlapping by >= `overlap`, on multiples of `multiple`.

    `length` and `tile` are multiples of `multiple`; a `length` <= `tile` is one tile (of side `length`).
    """
    if length <= tile:
        return [0]
    stride = (tile - overlap) // multiple * multiple
    gaps = -(-(length - tile) // stride)  # as few tiles as the stride allows, spread evenly
    return [round(k * (length - tile) / gaps / multiple) * multiple for k in range(gaps + 1)]


def _ramp(n: int) -> np.ndarray:
    """n weights rising from 0 to 1 across an overlap of n pixels: 0 over its outer quarter (where a tile's
    own border effects are), sin^2 over its middle half (at pixel centres), 1 over its inner quarter."""
    lo, hi = n // 4, n - n // 4
    t = np.clip((np.arange(n) + 0.5 - lo) / (hi - lo), 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def blend_weights(starts: list[int], tile: int, length: int) -> list[np.ndarray]:
    """Per tile, its 1-D weights (length `tile`): ramps over the overlap with each neighbour, normalised so the
    tiles' weights sum to 1 at every position of [0, length)."""
    raw = []
    for k, s in enumerate(starts):
        wk = np.ones(tile)
        if k > 0:
            n = starts[k - 1] + tile - s
            wk[:n] = np.minimum(wk[:n], _ramp(n))
        if k + 1 < len(starts):
            n = s + tile - starts[k + 1]
            wk[tile - n:] = np.minimum(wk[tile - n:], _ramp(n)[::-1])
        raw.append(wk)
    total = np.zeros(length)
    for s, wk in zip(starts, raw):
        total[s:s + tile] += wk
    assert total.min() > 0, "a position no tile weighs"
    return [wk / total[s:s + tile] for s, wk in zip(starts, raw)]


def own_regions(starts: list[int], tile: int, length: int, multiple: int) -> list[tuple[int, int]]:
    """Per tile, the part of it (tile coordinates) it owns: cut at the middle of each overlap, on multiples of
    `multiple`; the owned parts partition [0, length)."""
    cuts = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        cuts.append((b + (a + tile - b) // 2) // multiple * multiple)
    cuts.append(length)
    return [(lo - s, hi - s) for s, lo, hi in zip(starts, cuts[:-1], cuts[1:])]


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Image indices for canvas indices `idx` (any integers) under repeated reflection, as `reflect_pad`
    (which replicates a size-1 side)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    r = np.mod(idx, period)
    return np.where(r < n, r, period - r)


# ------------------------------------------------------------------ norms
def norm_layers(G: nn.Module) -> list[nn.Module]:
    """The layers that normalise with the statistics of what they see: InstanceNorm, and BatchNorm in train mode.

    Raises ConfigError for a norm layer of another kind (e.g. a fused InstanceNormAct), whose statistics
    cannot be set from outside.
    """
    layers = []
    for name, m in G.named_modules():
        uses_running = m.training is False and getattr(m, "track_running_stats", False)
        if isinstance(m, (nn.InstanceNorm2d, nn.modules.batchnorm._BatchNorm)) and not uses_running:
            layers.append(m)
        elif "InstanceNorm" in type(m).__name__:
            raise ConfigError(f"image-wide statistics need PyTorch norm layers; {name} is a {type(m).__name__} "
                              "(load the generator unfused, or tile with per-tile statistics)")
    return layers


class _Stop(Exception):
    """Raised by the statistics hook once the layer being gathered has seen its input."""


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.) in float64."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None

    def add(self, x: torch.Tensor) -> None:
        """x: (C, h, w)."""
        v = x.detach().double().flatten(1)
        n = v.shape[1]
        if n == 0:
            return
        mean = v.mean(1)
        m2 = (v - mean[:, None]).square().sum(1)
        if self.n == 0:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.n * n / total)
        self.n = total

    def mean_rstd(self, eps: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        var = self.m2 / self.n  # biased, as the norms use
        return self.mean.float().to(device), torch.rsqrt(var + eps).float().to(device)


class _ImageNorms:
    """Forward hooks on the norm layers: gather a layer's statistics (then stop the forward), or normalise with
    statistics already gathered. The statistics are copied into the same tensors per layer image after image
    (`buffers`, kept by the caller), so a CUDA graph captured for one image reads the next image's."""

    def __init__(self, layers: list[nn.Module], buffers: dict | None = None):
        self.layers = layers
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {} if buffers is None else buffers
        self.fixed: set[nn.Module] = set()
        self.gathering: _Moments | None = None
        self.target: nn.Module | None = None
        self.regions: list[tuple[int, int, int, int]] = []  # per tile of the batch: own rows and columns
        self.tile_hw = (0, 0)
        self.handles = []

    def __enter__(self):
        for m in self.layers:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _pre(self, m: nn.Module, inputs: tuple) -> None:
        if m in self.fixed:
            return
        x = inputs[0]
        fy, fx = self.tile_hw[0] // x.shape[-2], self.tile_hw[1] // x.shape[-1]
        assert fy * x.shape[-2] == self.tile_hw[0] and fx * x.shape[-1] == self.tile_hw[1], "norm input off the grid"
        for b, (y0, y1, x0, x1) in enumerate(self.regions):
            assert y0 % fy == y1 % fy == x0 % fx == x1 % fx == 0, "own region off the norm's grid"
            self.gathering.add(x[b, :, y0 // fy:y1 // fy, x0 // fx:x1 // fx])
        self.target = m
        raise _Stop

    def _post(self, m: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        mean, rstd = self.stats[m]
        x = inputs[0]
        y = (x.float() - mean[:, None, None]) * rstd[:, None, None]
        if getattr(m, "weight", None) is not None:
            y = y * m.weight[:, None, None] + m.bias[:, None, None]
        return y.to(out.dtype)

    def fix(self, device: torch.device) -> None:
        """Make the gathered statistics the target layer's."""
        m = self.target
        mean, rstd = self.gathering.mean_rstd(m.eps, device)
        if m in self.stats:
            self.stats[m][0].copy_(mean)
            self.stats[m][1].copy_(rstd)
        else:
            self.stats[m] = (mean, rstd)
        self.fixed.add(m)
        self.target = None


# ------------------------------------------------------------------ memory
def activation_bytes_per_pixel(G: nn.Module, in_channels: int, multiple: int, device: torch.device,
                               autocast_dtype: torch.dtype | None = None) -> float:
    """Bytes of every module output of one forward, per input pixel, measured on one small input.

    An upper bound on the forward's live memory (inference frees most activations as it goes; a U-Net keeps
    its skips), used to decide whether a whole image fits a memory budget.
    """
    side = multiple * max(1, math.ceil(64 / multiple))
    total = [0]

    def count(m, i, out):
        if isinstance(out, torch.Tensor) and not list(m.children()):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(count) for m in G.modules()]
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            G(torch.zeros(1, in_channels, side, side, device=device))
    finally:
        for h in handles:
            h.remove()
    return (total[0] + 4 * in_channels * side * side) / (side * side)


def memory_budget(max_memory_mib: int, device: torch.device) -> int:
    """Bytes: `max_memory_mib` MiB, or with 0, half the memory free now (the GPU's, or the machine's)."""
    if max_memory_mib:
        return max_memory_mib * 2**20
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def choose_tiling(canvas_hw: tuple[int, int], per_pixel: float, budget: int, multiple: int, *,
                  batch: int = 4, image_stats: bool = True) -> Tiling | None:
    """None if the whole canvas fits `budget` bytes, else the largest tiling (at most 1024 px unless the network's
    multiple needs more) whose batch fits: overlap a quarter of the tile, at least the multiple."""
    h, w = canvas_hw
    if per_pixel * h * w <= budget:
        return None
    top = max(2 * multiple, 1024 // multiple * multiple)
    tile = next((t for t in range(top, multiple, -multiple) if per_pixel * t * t <= budget), None)
    if tile is None:
        raise DataError(f"one {2 * multiple}x{2 * multiple} tile (the smallest that can overlap on this network) "
                        f"needs about {per_pixel * 4 * multiple**2 / 2**20:.1f} MiB, more than the memory budget of "
                        f"{budget / 2**20:.0f} MiB (--max-memory)")
    while batch > 1 and per_pixel * batch * tile * tile > budget:
        batch //= 2
    return Tiling(tile=tile, overlap=default_overlap(tile, multiple), batch=batch, image_stats=image_stats)


def default_overlap(tile: int, multiple: int) -> int:
    """A quarter of the tile, rounded up to the multiple (and leaving a stride of at least one multiple)."""
    return min(tile - multiple, -(-tile // 4 // multiple) * multiple)


# ------------------------------------------------------------------ the run
class _Grid:
    """The tiles of one image's canvas: per axis their starts, blend weights and own regions; the batches."""

    def __init__(self, size: tuple[int, int], layout: tuple[int, int, int, int], tiling: Tiling, multiple: int):
        (self.h, self.w), (self.left, right, self.top, bottom) = size, layout
        ch, cw = self.h + self.top + bottom, self.w + self.left + right
        self.th, self.tw = min(tiling.tile, ch), min(tiling.tile, cw)
        self.ys, self.xs = (tile_starts(n, t, tiling.overlap, multiple) for n, t in ((ch, self.th), (cw, self.tw)))
        self.wy, self.wx = blend_weights(self.ys, self.th, ch), blend_weights(self.xs, self.tw, cw)
        self.oy, self.ox = own_regions(self.ys, self.th, ch, multiple), own_regions(self.xs, self.tw, cw, multiple)
        self.canvas_w = cw
        # Row by row (the output is written as rows finish), `tiling.batch` tiles at a time.
        self.batches = [[(r, c) for c in range(len(self.xs))][i:i + tiling.batch]
                        for r in range(len(self.ys)) for i in range(0, len(self.xs), tiling.batch)]

    def load(self, read: Callable, batch: list[tuple[int, int]]) -> torch.Tensor:
        """The batch's tiles, (B, C, th, tw), read with the reflection of whole-image inference."""
        return torch.stack([read(reflect_index(np.arange(self.ys[r], self.ys[r] + self.th) - self.top, self.h),
                                 reflect_index(np.arange(self.xs[c], self.xs[c] + self.tw) - self.left, self.w))
                            for r, c in batch])

    def regions(self, batch: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        return [(*self.oy[r], *self.ox[c]) for r, c in batch]

    def weight(self, r: int, c: int) -> torch.Tensor:
        return torch.from_numpy(np.outer(self.wy[r], self.wx[c])).float()


def run_tiled(
    G: nn.Module,
    read: Callable[[np.ndarray, np.ndarray], torch.Tensor],
    write: Callable[[int, int, torch.Tensor], None],
    size: tuple[int, int],
    tiling: Tiling,
    *,
    layout: tuple[int, int, int, int],
    multiple: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    graphs: dict | None = None,
    stat_buffers: dict | None = None,
) -> None:
    """G over one image, tile by tile.

    read(rows, cols): the image's pixels at those index arrays, (C, len(rows), len(cols)) float in [-1, 1];
    write(y0, y1, block): image rows y0:y1 of the output, block (out_C, y1 - y0, W) float32 in [-1, 1].
    size: (H, W); layout: (left, right, top, bottom) of `pad_layout`. graphs: a cache of captured CUDA
    graphs by batch shape (used on CUDA only), stat_buffers: the tensors the norm statistics are copied into
    (which those graphs read); the caller keeps both with its model.
    """
    grid = _Grid(size, layout, tiling, multiple)

    def forward(x):
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return G(x)

    layers = norm_layers(G) if tiling.image_stats else []
    with _ImageNorms(layers, stat_buffers) as norms:
        norms.tile_hw = (grid.th, grid.tw)
        while len(norms.fixed) < len(layers):  # one pass per norm layer, in the order the forward meets them
            norms.gathering = _Moments()
            for batch in grid.batches:
                norms.regions = grid.regions(batch)
                try:
                    forward(grid.load(read, batch).to(device))
                except _Stop:
                    continue
                raise AssertionError("a norm layer was not reached by the forward")
            norms.fix(device)
        run = _graphed(forward, graphs, device, tiling.batch) if device.type == "cuda" else forward
        _blend_rows(run, read, write, grid, device)


def _graphed(forward: Callable, graphs: dict | None, device: torch.device, batch: int) -> Callable:
    """forward through one CUDA graph per tile shape (kept in `graphs`); a partial batch is padded to `batch`."""
    graphs = {} if graphs is None else graphs

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = torch.cat([x, x[:1].expand(batch - n, *x.shape[1:])]) if n < batch else x
        graph = graphs.get(tuple(x.shape))
        if graph is None:
            graph = graphs[tuple(x.shape)] = CudaGraph(forward, device=device)
            graph.load(x)
            for _ in range(3):
                graph.warm_up()
            graph.capture()
        graph.load(x)
        return graph.replay()[:n]

    return run


_WRITE_ROWS = 16


def _blend_rows(run: Callable, read: Callable, write: Callable, grid: _Grid, device: torch.device) -> None:
    """Run the tiles row by row, add each weighted into a band of `th` canvas rows, write rows as they finish."""
    band, band0 = None, 0

    def flush(block: torch.Tensor, c0: int) -> None:
        y0, y1 = max(c0 - grid.top, 0), min(c0 + block.shape[1] - grid.top, grid.h)
        for a in range(y0, y1, _WRITE_ROWS):  # a few rows at a time: the conversions' temporaries stay small
            b = min(a + _WRITE_ROWS, y1)
            write(a, b, block[:, a + grid.top - c0:b + grid.top - c0, grid.left:grid.left + grid.w].clamp(-1.0, 1.0))

    for batch in grid.batches:
        r = batch[0][0]
        y = run(grid.load(read, batch).to(device)).float().cpu()
        if band is None:
            band = torch.zeros(y.shape[1], grid.th, grid.canvas_w)
        if grid.ys[r] > band0:  # the rows above this tile row are final
            done = grid.ys[r] - band0
            flush(band[:, :done], band0)
            band = band.roll(-done, 1)
            band[:, -done:] = 0
            band0 = grid.ys[r]
        for (_, c), yt in zip(batch, y):
            band[:, :, grid.xs[c]:grid.xs[c] + grid.tw] += yt * grid.weight(r, c)
    flush(band, band0)


# ------------------------------------------------------------------ the API's side
@dataclass(frozen=True)
class TileOptions:
    """What a user asks for: `tile` px (0: the whole image, unless it would need more than the memory budget),
    `overlap` px (None: a quarter of the tile), `max_memory` MiB (0: half the memory free when the model is
    first run: the GPU's on CUDA, the machine's on CPU), `batch` tiles a forward, and `image_stats`."""

    tile: int = 0
    overlap: int | None = None
    max_memory: int = 0
    batch: int = 4
    image_stats: bool = True

    def check(self) -> "TileOptions":
        TILE.check("--tile", self.tile)
        if self.overlap is not None:
            OVERLAP.check("--overlap", self.overlap)
        MAX_MEMORY.check("--max-memory", self.max_memory)
        BATCH.check("--tile-batch", self.batch)
        return self


class Tiler:
    """Tiled inference for a `Pix2Pix` model: when to tile (`plan`) and the tiled runs on a float tensor image
    (`tensor`) or a uint8 array (`uint8`, which never holds the whole image as float)."""

    def __init__(self, model, options: TileOptions):
        self.model = model
        self.options = options.check()
        self._per_pixel: float | None = None
        self._budget: int | None = None
        self.graphs: dict = {}  # CUDA graphs by tile batch shape (final pass) ...
        self.stat_buffers: dict = {}  # ... and the norm statistics they read, refilled for each image

    def _dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.model.precision == "bf16" else None

    def plan(self, h: int, w: int, margin: int) -> tuple[Tiling | None, tuple[int, int, int, int]]:
        """(the tiling for an HxW image, or None for whole-image inference; the canvas layout)."""
        from pix2pix_fast.inference.model import pad_layout

        m, o = self.model.multiple, self.options
        layout = pad_layout(h, w, m, margin)
        canvas = (h + layout[2] + layout[3], w + layout[0] + layout[1])
        if o.tile:
            overlap = o.overlap if o.overlap is not None else default_overlap(o.tile, m)
            tiling = Tiling(o.tile, overlap, o.batch, o.image_stats).check(m)
            return (None if max(canvas) <= o.tile else tiling), layout
        if self._per_pixel is None:
            dev = self.model.device
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # dropout draws stay as they were
                self._per_pixel = activation_bytes_per_pixel(self.model.G, self.model.input_nc, m, dev, self._dtype())
            self._budget = memory_budget(o.max_memory, dev)
        tiling = choose_tiling(canvas, self._per_pixel, self._budget, m, batch=o.batch, image_stats=o.image_stats)
        if tiling is not None and o.overlap is not None:
            tiling = Tiling(tiling.tile, o.overlap, tiling.batch, o.image_stats).check(m)
        return tiling, layout

    def _run(self, read, write, size, tiling, layout) -> None:
        run_tiled(self.model.G, read, write, size, tiling, layout=layout, multiple=self.model.multiple,
                  device=self.model.device, autocast_dtype=self._dtype(), graphs=self.graphs,
                  stat_buffers=self.stat_buffers)

    def tensor(self, x: torch.Tensor, tiling: Tiling, layout) -> torch.Tensor:
        """(C, H, W) float in [-1, 1] -> (output_nc, H, W) float32 in [-1, 1], on x's device."""
        h, w = x.shape[-2:]
        out = torch.empty(self.model.output_nc, h, w, device=x.device)

        def read(rows, cols):
            return x[:, torch.from_numpy(rows).to(x.device)][:, :, torch.from_numpy(cols).to(x.device)].float()

        def write(y0, y1, block):
            out[:, y0:y1] = block.to(out.device)

        self._run(read, write, (h, w), tiling, layout)
        return out

    def uint8(self, arr: np.ndarray, tiling: Tiling, layout) -> np.ndarray:
        """(H, W, input_nc) uint8 -> (H, W, output_nc) uint8."""
        from pix2pix_fast.inference.model import to_model_range, to_uint8

        h, w = arr.shape[:2]
        out = np.empty((h, w, self.model.output_nc), np.uint8)

        def read(rows, cols):
            return to_model_range(torch.from_numpy(arr[np.ix_(rows, cols)]).permute(2, 0, 1))

        def write(y0, y1, block):
            out[y0:y1] = to_uint8(block).permute(1, 2, 0).numpy()

        self._run(read, write, (h, w), tiling, layout)
        return out
