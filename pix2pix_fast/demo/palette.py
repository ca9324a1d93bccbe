"""What the page offers for painting: a palette of label colours, or a pen and an eraser.

Three kinds of input, told apart by the model's config and training data:

  labels  flat-colour label maps (label -> photo). The built-in synthetic
          facades use their fixed PALETTE (with class names); another dataset
          whose inputs are (almost) all drawn from a few exact colours gets
          those colours, most frequent first; `--palette FILE` sets them.
  edges   one-channel inputs, or grey inputs with a plain background (edge
          maps, sketches): a pen in the strokes' shade and an eraser in the
          background's.
  photo   anything else: the most frequent colours of the inputs (quantised
          to 16 levels a channel) as a starting palette, plus a free colour.

The background (what "clear" and the eraser paint) is the most frequent
colour. Training inputs are sampled (a few images, a few hundred thousand
pixels), so this costs well under a second at start-up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pix2pix_fast.config import ConfigError, TrainConfig

Colour = tuple[int, int, int]

LABEL_COVERAGE = 0.97  # share of pixels the top colours must cover for "labels"
MAX_LABELS = 32
MIN_SHARE = 0.001  # a label colour must cover at least this share of the sampled pixels
PHOTO_COLOURS = 12
SAMPLE_IMAGES = 16


@dataclass(frozen=True)
class Palette:
    kind: str  # "labels" | "edges" | "photo"
    colours: tuple[tuple[str, Colour], ...]  # (name, rgb), the first is selected at start
    background: Colour
    source: str  # where the colours came from, shown on the page
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "colours": [{"name": n, "rgb": list(c)} for n, c in self.colours],
            "background": list(self.background),
            "source": self.source,
        }


def hex_colour(c: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


def read_palette_file(path: str | Path) -> Palette:
    """A text file, one colour a line: `#rrggbb [name]` or `r g b [name]` (commas allowed).

    Lines that are empty or start with `#` followed by anything but six hex
    digits are comments. The first colour is the background.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--palette {p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    colours: list[tuple[str, Colour]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.fullmatch(r"#([0-9a-fA-F]{6})(?:\s+(.*))?", line)
        if m:
            v = int(m.group(1), 16)
            rgb, name = (v >> 16, (v >> 8) & 255, v & 255), m.group(2)
        elif not line or line.startswith("#"):
            continue
        else:
            m = re.fullmatch(r"(\d{1,3})[\s,]+(\d{1,3})[\s,]+(\d{1,3})(?:[\s,]+(.*))?", line)
            if not m or max(int(g) for g in m.groups()[:3]) > 255:
                raise ConfigError(f"--palette {p}, line {n}: expected '#rrggbb [name]' or 'r g b [name]' "
                                  f"with 0-255 values, got {line[:60]!r}")
            rgb, name = (int(m.group(1)), int(m.group(2)), int(m.group(3))), m.group(4)
        colours.append(((name or "").strip() or hex_colour(rgb), rgb))
    if not colours:
        raise ConfigError(f"--palette {p}: holds no colours")
    return Palette("labels", tuple(colours), colours[0][1], f"--palette {p.name}")


def palette_for(cfg: TrainConfig, *, palette_file: str | None = None, dataroot: str | None = None,
                inputs: list[np.ndarray] | None = None) -> Palette:
    """The palette for a model with config `cfg`.

    `inputs` (uint8 (H, W, C) training inputs) are used when given; else they
    are sampled from `dataroot` (default: the config's) when it exists.
    """
    if palette_file:
        return read_palette_file(palette_file)
    from pix2pix_fast.data.synthetic import MARKER, PALETTE

    root = dataroot if dataroot is not None else cfg.dataroot
    synthetic = not root or (Path(root) / MARKER).is_file()
    if synthetic and cfg.direction == "AtoB" and cfg.input_nc >= 3:
        labels = tuple((name, tuple(int(v) for v in rgb)) for name, rgb in PALETTE.items())
        background = PALETTE["wall"]
        # Put the background first so a fresh canvas and the first swatch agree.
        labels = tuple(sorted(labels, key=lambda nc: nc[1] != background))
        return Palette("labels", labels, background, "the built-in synthetic facades' label colours")
    if inputs is None:
        inputs, note = sample_inputs(cfg, root)
        if not inputs:
            return _fallback(cfg, note)
    return palette_from_inputs(inputs, source="the most frequent colours of the training inputs")


def sample_inputs(cfg: TrainConfig, root: str | None) -> tuple[list[np.ndarray], str]:
    """Up to SAMPLE_IMAGES training inputs (evenly spaced), or ([], why not)."""
    from pix2pix_fast.data.datasets import PairedDataset
    from pix2pix_fast.errors import DataError

    if not root:
        from pix2pix_fast.data.synthetic import render_pair

        pairs = [render_pair(np.random.default_rng([7, i]), cfg.crop_size) for i in range(4)]
        return [b if cfg.direction == "BtoA" else a for a, b in pairs], ""
    try:
        ds = PairedDataset(root, split="train", layout=cfg.layout, direction=cfg.direction,
                           input_nc=cfg.input_nc, output_nc=cfg.output_nc)
        idx = np.linspace(0, len(ds) - 1, min(len(ds), SAMPLE_IMAGES)).round().astype(int)
        return [ds[int(i)][0] for i in sorted(set(idx))], ""
    except (DataError, ConfigError, OSError) as e:
        return [], f"training data not readable ({e}); pass --dataroot or --palette FILE for a label palette"


def palette_from_inputs(inputs: list[np.ndarray], *, source: str) -> Palette:
    """Classify sampled uint8 (H, W, C) inputs as labels, edges or photos and pick their colours."""
    px = np.concatenate([_rgb(a)[:: max(1, a.shape[0] // 128), :: max(1, a.shape[1] // 128)].reshape(-1, 3)
                         for a in inputs])
    colours, counts = np.unique(px, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    colours, shares = colours[order], counts[order] / len(px)
    spread = px.max(axis=1).astype(np.int16) - px.min(axis=1)
    grey = inputs[0].shape[2] <= 2 or (spread <= 12).mean() > 0.98
    if grey:
        levels = px[:, 0]
        hist = np.bincount(levels >> 4, minlength=16) / len(levels)
        bg_bin = int(hist.argmax())
        if inputs[0].shape[2] <= 2 or hist[bg_bin] > 0.5:
            bg = int(np.median(levels[(levels >> 4) == bg_bin]))
            pen = 0 if bg >= 128 else 255
            return Palette("edges", (("pen", (pen,) * 3), ("eraser", (bg,) * 3)), (bg,) * 3, source)
    top = [(c, s) for c, s in zip(colours[:MAX_LABELS], shares[:MAX_LABELS]) if s >= MIN_SHARE]
    if sum(s for _, s in top) >= LABEL_COVERAGE:
        named = tuple((hex_colour(tuple(int(v) for v in c)), tuple(int(v) for v in c)) for c, _ in top)
        return Palette("labels", named, named[0][1], source)
    q = (px >> 4).astype(np.int32)
    keys = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    counts = np.bincount(keys, minlength=4096)
    best = np.argsort(-counts, kind="stable")[:PHOTO_COLOURS]
    named = []
    for k in best[counts[best] > 0]:
        rgb = tuple(int(np.median(px[keys == k][:, ch])) for ch in range(3))
        named.append((hex_colour(rgb), rgb))
    return Palette("photo", tuple(named), named[0][1], source)


def _rgb(a: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> (H, W, 3): grey repeated, alpha dropped."""
    if a.shape[2] <= 2:
        return np.repeat(a[:, :, :1], 3, axis=2)
    return a[:, :, :3]


def _fallback(cfg: TrainConfig, note: str) -> Palette:
    if cfg.input_nc <= 2:
        return Palette("edges", (("pen", (0, 0, 0)), ("eraser", (255, 255, 255))), (255, 255, 255),
                       "a default pen (no training data found)", (note,))
    greys = tuple((hex_colour((v, v, v)), (v, v, v)) for v in (255, 192, 128, 64, 0))
    return Palette("photo", greys, (255, 255, 255), "default colours (no training data found)", (note,))
