"""The built-in synthetic dataset: procedural facade label maps (A) -> photo-like renderings (B).

A is a flat-colour semantic layout in the fixed PALETTE: sky, roof, wall,
cornice, window, door, balcony, sill. One or two buildings, each with a grid of
floors and window columns (sizes and spacings vary per building), a taller
ground floor with doors (and sometimes shop windows), balconies on some floors,
sills, and cornice bands.

B renders the same layout as a photo: per-class colours and textures (brick
with mortar and per-brick colour, stone blocks or plaster noise for walls;
glass with a sky-reflection gradient, a diagonal reflection streak, frames,
mullions and a transom for windows; wood panels for doors; railings for
balconies; roof tiles; a sky gradient with faint clouds), a lighting gradient
across the facade, soft cast shadows (light from the upper left: under
cornices, sills and balconies, and inside recessed windows and doors), and
slight sensor noise.

Most of B is a deterministic but non-local function of A (frames, mullions,
shadows and bricks depend on positions and distances to edges), so a U-Net can
learn it; the per-image wall material and colour, lighting strength and noise
are random, so it cannot be learnt exactly, as with real facades. Copying A
(the label colours) to B has a far higher L1 than predicting per-class colours.

Everything is vectorised NumPy at the requested size (no resampling); each
image has its own generator seeded by (seed, split, index), so a file does not
depend on how many others are generated, and the same seed always gives
byte-identical files (on one NumPy version).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from pix2pix_fast.config import SYNTHETIC_SIZE, ConfigError
from pix2pix_fast.errors import DataError
from pix2pix_fast.fileio import remove_stale_temps, temp_sibling, write_text
from pix2pix_fast.data.imageio import write_image

# Class name -> label colour in A. The order defines the class ids.
PALETTE: dict[str, tuple[int, int, int]] = {
    "sky": (0, 0, 170),
    "roof": (170, 0, 85),
    "wall": (0, 85, 255),
    "cornice": (255, 85, 0),
    "window": (0, 255, 255),
    "door": (255, 170, 0),
    "balcony": (170, 255, 85),
    "sill": (255, 255, 0),
}
CLASSES: tuple[str, ...] = tuple(PALETTE)
SKY, ROOF, WALL, CORNICE, WINDOW, DOOR, BALCONY, SILL = range(len(CLASSES))
_PALETTE = np.array(list(PALETTE.values()), dtype=np.uint8)

MARKER = "pix2pix_fast_synthetic.json"  # written last; its presence means the folder is complete
VERSION = 1  # bump when the generator's output changes, so cached folders are regenerated
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_FILE = re.compile(r"synth_\d+\.png")


def synthetic_dataset(
    root: str | Path | None = None,
    size: int = 256,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 100,
    seed: int = 0,
    *,
    progress: bool = False,
) -> Path:
    """Generate (once) the synthetic dataset as aligned AB PNGs and return its root.

    Writes root/{train,val,test}/synth_00000.png ... (size x 2*size, A = left half;
    a split with 0 images gets no folder). Default root:
    $PIX2PIX_FAST_CACHE/synthetic-s{size}-n{n_train}-seed{seed}, with
    PIX2PIX_FAST_CACHE defaulting to ~/.cache/pix2pix_fast. A complete folder
    (marker present, same parameters, all files there) is reused as is;
    anything else is regenerated into a temporary sibling folder that is renamed
    into place, so readers never see a half-written dataset.
    """
    SYNTHETIC_SIZE.check("size", size)
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise ConfigError(
            f"synthetic_dataset: need n_train >= 1 and n_val, n_test >= 0, got {n_train}, {n_val}, {n_test}"
        )
    if root is None:
        base = Path(os.environ.get("PIX2PIX_FAST_CACHE") or Path.home() / ".cache" / "pix2pix_fast")
        root = base / f"synthetic-s{size}-n{n_train}-seed{seed}"
    root = Path(root).expanduser()
    counts = {"train": n_train, "val": n_val, "test": n_test}
    params = {"version": VERSION, "size": size, "seed": seed, "counts": counts}
    if _is_complete(root, params):
        return root
    if root.exists():
        _check_ours(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root.parent)  # folders of builds that were killed
    tmp = temp_sibling(root)
    try:
        _generate(tmp, size, seed, counts, progress)
        write_text(tmp / MARKER, json.dumps(params, indent=1) + "\n")
        _replace(tmp, root, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def render_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (A, B) pair as uint8 (size, size, 3) arrays, drawn from `rng`."""
    labels, building = _layout(rng, size)
    return _PALETTE[labels], _render(rng, labels, building)


def labels_of(a: np.ndarray) -> np.ndarray:
    """Class ids (H, W) of an A image in PALETTE colours (nearest palette colour)."""
    d = ((a[:, :, None, :].astype(np.int32) - _PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1).astype(np.uint8)


# --- the folder -------------------------------------------------------------


def _is_complete(root: Path, params: dict) -> bool:
    try:
        if json.loads((root / MARKER).read_text()) != params:
            return False
    except (OSError, ValueError):
        return False
    for split, n in params["counts"].items():
        d = root / split
        if n and (not d.is_dir() or sum(1 for name in os.listdir(d) if _FILE.fullmatch(name)) != n):
            return False
    return True


def _check_ours(root: Path) -> None:
    """Refuse to replace a folder that holds anything but a (partial) synthetic dataset."""
    if not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; cannot write the synthetic dataset there")
    for name in sorted(os.listdir(root)):
        if name == MARKER:
            continue
        foreign = name
        if name in _SPLIT_CODES and (root / name).is_dir():
            foreign = next((f"{name}/{f}" for f in sorted(os.listdir(root / name)) if not _FILE.fullmatch(f)), None)
        if foreign is not None:
            raise DataError(
                f"{root}: holds {foreign!r}, which the synthetic generator did not write; "
                "refusing to overwrite it (choose another folder)"
            )


def _replace(tmp: Path, root: Path, params: dict) -> None:
    """Move the finished `tmp` into place as `root`, replacing a stale or partial `root`."""
    old = None
    if root.exists():
        old = temp_sibling(root)
        try:
            root.rename(old)
        except FileNotFoundError:  # another process moved it away first
            old = None
    try:
        tmp.rename(root)
    except OSError:
        # Another process finished the same dataset between our check and now.
        if not _is_complete(root, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _generate(out: Path, size: int, seed: int, counts: dict[str, int], progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=sum(counts.values()), desc="synthetic dataset", unit="img", disable=not progress)
    with bar:
        for split, n in counts.items():
            if n == 0:
                continue
            (out / split).mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
                a, b = render_pair(rng, size)
                write_image(out / split / f"synth_{i:05d}.png", np.concatenate([a, b], axis=1), fast=True)
                bar.update()


# --- the label map (A) ------------------------------------------------------


def _layout(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (s, s) uint8 and the building index of each column (s,)."""
    lab = np.full((s, s), SKY, dtype=np.uint8)
    building = np.zeros(s, dtype=np.int64)
    if rng.random() < 0.3:
        xs = int(rng.uniform(0.35, 0.65) * s)
        spans = [(0, xs), (xs, s)]
    else:
        left = int(rng.uniform(0.0, 0.1) * s) if rng.random() < 0.4 else 0
        right = s - (int(rng.uniform(0.0, 0.1) * s) if rng.random() < 0.4 else 0)
        spans = [(left, right)]
    for k, (x0, x1) in enumerate(spans):
        building[x0:x1] = k
        _building(rng, lab, s, x0, x1)
    return lab, building


def _building(rng: np.random.Generator, lab: np.ndarray, s: int, x0: int, x1: int) -> None:
    w = x1 - x0
    top = int(rng.uniform(0.0, 0.18) * s)
    roof_h = int(rng.uniform(0.02, 0.07) * s) if rng.random() < 0.6 else 0
    lab[top:top + roof_h, x0:x1] = ROOF
    ftop = top + roof_h
    lab[ftop:, x0:x1] = WALL
    cornice_h = max(1, round(rng.uniform(0.012, 0.03) * s))
    lab[ftop:ftop + cornice_h, x0:x1] = CORNICE
    body = ftop + cornice_h

    n_floors = int(rng.integers(3, 7))
    ground = rng.uniform(1.15, 1.5)
    unit = (s - body) / (n_floors - 1 + ground)
    n_cols = max(2, round(w / s * rng.integers(3, 8)))
    pitch = w / n_cols
    win_w = pitch * rng.uniform(0.35, 0.65)
    win_h = unit * rng.uniform(0.45, 0.68)
    win_top = unit * rng.uniform(0.12, 0.25)
    sills = rng.random() < 0.6
    floor_cornices = rng.random() < 0.45
    sill_h = max(1, round(0.018 * s))
    centres = x0 + (np.arange(n_cols) + 0.5) * pitch
    col = np.arange(w) + x0

    def column_mask(width: float, cols: np.ndarray) -> np.ndarray:
        return (np.abs(col[:, None] - centres[cols][None, :]) < width / 2).any(axis=1)

    all_cols = np.arange(n_cols)
    for f in range(n_floors - 1):  # upper floors, top to bottom
        fy = body + f * unit
        if floor_cornices and f > 0:
            lab[int(fy):int(fy) + max(1, cornice_h // 2), x0:x1] = CORNICE
        tall = rng.random() < 0.2  # french windows, usually with a balcony
        y0 = int(fy + win_top * (0.6 if tall else 1.0))
        y1 = int(fy + win_top + win_h * (1.35 if tall else 1.0))
        y1 = min(y1, int(fy + unit * 0.92))
        mask = column_mask(win_w, all_cols)
        lab[y0:y1, x0:x1][:, mask] = WINDOW
        if tall and rng.random() < 0.8:
            bh = max(2, int((y1 - y0) * rng.uniform(0.25, 0.35)))
            if rng.random() < 0.5:  # one balcony along the floor
                lab[y1 - bh:y1 + 1, x0 + 1:x1 - 1] = BALCONY
            else:
                lab[y1 - bh:y1 + 1, x0:x1][:, column_mask(win_w * 1.5, all_cols)] = BALCONY
        elif sills:
            lab[y1:y1 + sill_h, x0:x1][:, column_mask(win_w * 1.2, all_cols)] = SILL

    # ground floor: doors in one or two columns, windows (or wide shop windows) in the others
    gy = int(body + (n_floors - 1) * unit)
    if floor_cornices or rng.random() < 0.5:
        lab[gy:gy + cornice_h, x0:x1] = CORNICE
    n_doors = 1 if n_cols < 4 or rng.random() < 0.6 else 2
    door_cols = rng.choice(n_cols, size=n_doors, replace=False)
    other = np.setdiff1d(all_cols, door_cols)
    g_h = s - gy
    if len(other):
        shop = rng.random() < 0.35
        ww = pitch * (rng.uniform(0.7, 0.85) if shop else rng.uniform(0.4, 0.65))
        wy0 = gy + int(g_h * rng.uniform(0.15, 0.25))
        wy1 = s - int(g_h * (rng.uniform(0.05, 0.12) if shop else rng.uniform(0.2, 0.35)))
        lab[wy0:wy1, x0:x1][:, column_mask(ww, other)] = WINDOW
    dy0 = s - int(g_h * rng.uniform(0.65, 0.85))
    lab[dy0:, x0:x1][:, column_mask(pitch * rng.uniform(0.4, 0.65), door_cols)] = DOOR


# --- the photo (B) ----------------------------------------------------------
#
# B = (base colour + additive glass / sky terms) * texture * lighting * shadow, then
# clouds and noise. The base colour is one table lookup per pixel (class, or the
# extra FRAME class, per building); everything else is a 2-D (s, s) factor, since
# 3-channel np.where and fancy indexing cost 5-10x more than 2-D arithmetic.

FRAME = len(CLASSES)  # an extra colour-table row: window frames, mullions, transoms
_N_COLOURS = len(CLASSES) + 1
# Relief per class for the cast shadows (sky never casts one).
_HEIGHT = np.array([-9, 0, 0, 2, -1, -1, 2, 1], dtype=np.int8)
_FIXED = {  # colours of the classes that do not vary by material
    CORNICE: (0.86, 0.83, 0.76),
    SILL: (0.84, 0.82, 0.77),
    BALCONY: (0.13, 0.13, 0.14),
    WINDOW: (0.16, 0.2, 0.26),
    DOOR: (0.38, 0.24, 0.13),
    SKY: (0.42, 0.62, 0.9),
}
_HORIZON = np.array([0.78, 0.86, 0.95], dtype=np.float32)  # the sky colour near the horizon
_WALLS = {  # material -> base colours (one is picked per building)
    "plaster": [(0.86, 0.78, 0.6), (0.8, 0.68, 0.52), (0.9, 0.88, 0.82), (0.78, 0.56, 0.44), (0.74, 0.78, 0.72)],
    "brick": [(0.6, 0.3, 0.22), (0.55, 0.33, 0.25), (0.66, 0.42, 0.3)],
    "stone": [(0.7, 0.67, 0.6), (0.6, 0.58, 0.55)],
}
_MATERIALS = tuple(_WALLS)
_ROOFS = [(0.3, 0.3, 0.34), (0.52, 0.27, 0.2), (0.36, 0.32, 0.3)]
_FRAMES = [(0.9, 0.9, 0.87), (0.9, 0.9, 0.87), (0.2, 0.3, 0.22), (0.35, 0.24, 0.16)]
_GLASS_TINT = np.array([0.8, 0.95, 1.1], dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (s, 1) and (1, s), float32 in pixels."""
    y = np.arange(s, dtype=np.float32)
    y.flags.writeable = False  # cached and shared
    return y[:, None], y[None, :]


@functools.lru_cache(maxsize=8)
def _streaks(s: int) -> np.ndarray:
    """Diagonal reflection streaks on glass (s, s): 0.07 on the streaks, else 0."""
    yy, xx = _grid(s)
    out = np.where(np.mod((xx + 0.6 * yy) / (0.22 * s), 1.0) < 0.18, np.float32(0.07), np.float32(0))
    out.flags.writeable = False  # cached and shared
    return out


@functools.lru_cache(maxsize=32)
def _interp(s: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from `cells` + 1 grid points to s pixels: (lower index, weight of the upper)."""
    t = np.linspace(0, cells, s, dtype=np.float32)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = (t - i).astype(np.float32)
    i.flags.writeable = f.flags.writeable = False  # cached and shared
    return i, f


def _smooth_noise(rng: np.random.Generator, s: int, cells: int, rows: int | None = None) -> np.ndarray:
    """Bilinearly upsampled Gaussian noise (s, s): `cells` columns x `rows` rows of features."""
    # Indexing rather than interpolation matrices: a BLAS matmul this small is dominated by
    # thread start-up and is several times slower on a 2-core machine.
    rows = cells if rows is None else rows
    g = rng.standard_normal((rows + 1, cells + 1), dtype=np.float32)
    iy, fy = _interp(s, rows)
    g = g[iy] * (1 - fy)[:, None] + g[iy + 1] * fy[:, None]  # (s, cells + 1)
    ix, fx = _interp(s, cells)
    return g[:, ix] * (1 - fx) + g[:, ix + 1] * fx


def _runs(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel's 1-based distance to the top, bottom, left and right end of its run of equal labels."""
    s0, s1 = lab.shape
    iy = np.arange(s0, dtype=np.int32)[:, None]
    ix = np.arange(s1, dtype=np.int32)[None, :]
    change_y = lab[1:] != lab[:-1]  # (s0 - 1, s1): a run ends between y and y + 1
    change_x = lab[:, 1:] != lab[:, :-1]
    start = np.ones(lab.shape, dtype=bool)
    start[1:] = change_y
    top = iy - np.maximum.accumulate(np.where(start, iy, 0), axis=0) + 1
    end = np.ones(lab.shape, dtype=bool)
    end[:-1] = change_y
    bottom = np.minimum.accumulate(np.where(end, iy, s0)[::-1], axis=0)[::-1] - iy + 1
    start = np.ones(lab.shape, dtype=bool)
    start[:, 1:] = change_x
    left = ix - np.maximum.accumulate(np.where(start, ix, 0), axis=1) + 1
    end = np.ones(lab.shape, dtype=bool)
    end[:, :-1] = change_x
    right = np.minimum.accumulate(np.where(end, ix, s1)[:, ::-1], axis=1)[:, ::-1] - ix + 1
    return top, bottom, left, right


def _masonry(
    rng: np.random.Generator, s: int, block_h: int, block_w: int, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Running-bond blocks: (per-block brightness factor (s, s), mortar mask (s, s))."""
    y, x = np.arange(s, dtype=np.int32)[:, None], np.arange(s, dtype=np.int32)[None, :]
    row = y // block_h
    xo = x + (row % 2) * (block_w // 2)
    n_cols = s // block_w + 3
    shade = 1 + jitter * rng.standard_normal((s // block_h + 2) * n_cols, dtype=np.float32)
    mortar = (y % block_h == 0) | (xo % block_w == 0)
    return np.take(shade, row * n_cols + xo // block_w), mortar


def _render(rng: np.random.Generator, lab: np.ndarray, building: np.ndarray) -> np.ndarray:
    s = lab.shape[0]
    yy, xx = _grid(s)
    n_b = int(building.max()) + 1
    f = max(1, s // 128)  # frame / line width in pixels
    bid = np.broadcast_to(building[None, :].astype(np.int32), lab.shape)

    # per-building colour table (n_b, classes + FRAME, 3)
    table = np.zeros((n_b, _N_COLOURS, 3), dtype=np.float32)
    material = []
    sky_tint = 1 + 0.06 * rng.standard_normal(3, dtype=np.float32)
    for k in range(n_b):
        m = _MATERIALS[rng.choice(len(_MATERIALS), p=[0.5, 0.3, 0.2])]
        material.append(m)
        wall = np.array(_WALLS[m][rng.integers(len(_WALLS[m]))], dtype=np.float32)
        table[k, WALL] = wall * (1 + 0.05 * rng.standard_normal(3, dtype=np.float32))
        table[k, ROOF] = _ROOFS[rng.integers(len(_ROOFS))]
        table[k, FRAME] = _FRAMES[rng.integers(len(_FRAMES))]
        for c, v in _FIXED.items():
            table[k, c] = v
        table[k, SKY] *= sky_tint

    t, b, l, r = _runs(lab)
    win = lab == WINDOW
    frame = (t <= f) | (b <= f) | (l <= f) | (r <= f)
    frame |= np.abs(l - r) <= f // 2  # mullion
    frame |= np.abs(t - (t + b) // 3) < f  # transom
    frame &= win
    cls = np.where(frame, np.uint8(FRAME), lab)
    # channels first: broadcasting an (s, s) factor over a trailing axis of 3 is ~10x slower
    img = np.take(table.reshape(-1, 3).T, bid * _N_COLOURS + cls, axis=1)  # (3, s, s)

    # glass: sky reflection fading down each window and down the facade, a diagonal streak
    glass = win & ~frame
    rel = t.astype(np.float32) / (t + b)
    refl = 0.22 * (1 - rel) * (1 - yy / s) + _streaks(s)
    img += np.where(glass, refl, np.float32(0))[None] * _GLASS_TINT[:, None, None]

    # texture: a brightness factor per pixel
    wall = lab == WALL
    tex = 1 + 0.05 * _smooth_noise(rng, s, 6)  # weathering (applies to every built pixel)
    for k, m in enumerate(material):
        sel = wall & (bid == k)
        if m == "plaster":
            tex = np.where(sel, tex + 0.03 * _smooth_noise(rng, s, 24), tex)
        else:
            brick = m == "brick"
            bh = max(2, s // 40) if brick else max(4, s // 14)
            shade, mortar = _masonry(rng, s, bh, int(bh * (2.3 if brick else 2.0)), 0.07 if brick else 0.04)
            mortar_shade = np.float32(1.2 if brick else 0.82)
            tex = np.where(sel, tex * np.where(mortar, mortar_shade, shade), tex)
    # doors: vertical grain, an inset panel outline, a lit frame
    door = lab == DOOR
    grain = 1 + 0.08 * _smooth_noise(rng, s, max(8, s // 3), 3)
    panel = ((l == 2 * f + 1) | (r == 2 * f + 1) | (t == 2 * f + 1)) & (b > 2 * f)
    door_frame = (t <= f) | (l <= f) | (r <= f)
    door_tex = np.where(panel, np.float32(0.6), grain) * np.where(door_frame, np.float32(1.35), np.float32(1))
    tex = np.where(door, tex * door_tex, tex)
    # balconies: a top rail and slab, and bars over the dark space behind them
    bar_pitch = max(3, s // 48)
    bars = (np.arange(s, dtype=np.int32)[None, :] % bar_pitch) < max(1, bar_pitch // 3)
    bal_tex = np.where((t <= f) | (b <= 2 * f), np.float32(2.5), np.where(bars, np.float32(1.4), np.float32(0.6)))
    tex = np.where(lab == BALCONY, tex * bal_tex, tex)
    # cornices and sills: a lit top edge and a dark bottom edge
    ledge_tex = np.where(t <= f, np.float32(1.08), np.where(b <= f, np.float32(0.72), np.float32(1)))
    tex = np.where((lab == CORNICE) | (lab == SILL), tex * ledge_tex, tex)
    # roof tiles
    tile = max(2, s // 64)
    roof_tex = np.where(np.arange(s, dtype=np.int32)[:, None] % tile == 0, np.float32(0.7), np.float32(1))
    tex = np.where(lab == ROOF, tex * (roof_tex + 0.04 * _smooth_noise(rng, s, 32, 4)), tex)

    # lighting across the buildings and cast shadows from the upper left
    sky = lab == SKY
    light = 1 + rng.uniform(-0.12, 0.12) * (xx / s - 0.5) - 0.12 * (yy / s - 0.5)
    tex = np.where(sky, np.float32(1), tex * light * (1 - 0.5 * _shadows(lab, s)))
    img *= tex[None]

    # sky: vertical gradient towards the horizon colour, faint clouds
    v = np.where(sky, np.clip(yy / (0.3 * s), 0, 1), np.float32(0))
    img += v[None] * (_HORIZON * sky_tint - table[0, SKY])[:, None, None]
    cloud = np.where(sky, np.clip(_smooth_noise(rng, s, 5, 3) - 0.6, 0, 1) * 0.5, np.float32(0))[None]
    img += cloud * (1 - img)

    # slight sensor noise: uniform, std 0.015 (= 3.8 grey levels); one random byte per value
    img *= np.float32(255)
    img += np.frombuffer(rng.bytes(3 * s * s), dtype=np.uint8).reshape(3, s, s) * np.float32(0.015 * 255 / 73.9)
    img += np.float32(0.5 - 127.5 * 0.015 * 255 / 73.9)  # centre the noise; +0.5 rounds
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _shadows(lab: np.ndarray, s: int) -> np.ndarray:
    """Soft shadow strength in [0, 1]: higher relief up to ~s/32 pixels above-left of a pixel."""
    h = _HEIGHT[lab]
    out = np.zeros(lab.shape, dtype=np.float32)
    k = max(2, s // 32)
    # farthest first, so nearer (stronger) occluders overwrite
    for d in range(k, 0, -1):
        dx = d // 2
        occ = h[:-d, :s - dx] > h[d:, dx:]
        out[d:, dx:][occ] = 1 - (d - 1) / k
    return out
