"""Image decoding and encoding for the data pipeline: files -> uint8 (H, W, C).

Formats: PNG, JPEG, BMP, PPM/PGM, TIFF, WebP, GIF (IMAGE_FORMATS; every file
is opened by `open_image`, which lets no other Pillow decoder run) and `.npy`
arrays. Every reader fully decodes the file (Pillow's `load()`), so a truncated or
corrupt image fails here, in one `DataError` line naming the file, rather than
as a short read deep inside the loader.

Channels:
  C = 1  grayscale ("L"), C = 2  grayscale + alpha ("LA"), C = 3  RGB,
  C = 4  RGBA. Pillow converts any source mode to these (RGBA -> RGB drops
  alpha; RGB -> L uses ITU-R 601-2 luma, as Pillow does).
  C > 4  a multi-page TIFF with C pages (one grayscale channel per page), or a
  `.npy` file holding a uint8 (H, W, C) array.
  A `.npy` file may also feed C <= 4: (H, W) and (H, W, 1) arrays are gray,
  and the 1 <-> 3/4 and 3 <-> 4 conversions follow Pillow's rules.
16-bit grayscale images (modes I;16*) are scaled to 8 bits (v >> 8); other
high-bit-depth modes ("I", "F") are clipped to [0, 255] as Pillow converts them.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pix2pix_fast.errors import DataError
from pix2pix_fast.fileio import atomic_write

# Extensions the datasets index (lower-case); other files in a folder are skipped.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".npy",
)
# The only formats Pillow is asked to decode, whatever a file's extension or content: a file in
# any other format (EPS, which runs Ghostscript; PSD, ICO, ...) is refused before a decoder sees it.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP", "GIF")

# Pillow mode for each channel count it can represent directly.
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def is_image_file(path: str | Path) -> bool:
    """True if `path` has one of IMAGE_EXTENSIONS (case-insensitive) and is not hidden."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def open_image(path: str | Path) -> Image.Image:
    """Pillow's `Image.open` limited to IMAGE_FORMATS: the one way the package opens an image file.

    A file in another format raises UnidentifiedImageError (`_reason` words it)."""
    return Image.open(path, formats=IMAGE_FORMATS)


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode `path` into a contiguous uint8 array (H, W, channels), or raise DataError."""
    return read_aligned(path, (channels,))[0]


def read_aligned(path: str | Path, channels: tuple[int, ...]) -> list[np.ndarray]:
    """Decode `path` once and split it into len(channels) equal-width panels.

    Panel k is converted to channels[k] channels. With one entry this is
    `read_image`; with two it reads an aligned A|B image (A = left half). The
    width must divide evenly, else DataError naming the file.
    """
    path = Path(path)
    n = len(channels)
    for c in channels:
        if c < 1:
            raise ValueError(f"channels must be >= 1, got {c}")
    if path.suffix.lower() == ".npy" or max(channels) > 4:
        arr = _load_npy(path) if path.suffix.lower() == ".npy" else _read_pages(path, max(channels))
        _check_width(arr.shape[1], n, path)
        pw = arr.shape[1] // n
        return [_convert_array(arr[:, k * pw:(k + 1) * pw], c, path) for k, c in enumerate(channels)]
    try:
        with open_image(path) as img:
            img.load()  # decode everything now: a truncated file fails here
            if img.mode.startswith("I;16"):
                img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
            w, h = img.size
            _check_width(w, n, path)
            pw = w // n
            return [
                _pil_to_array(img if n == 1 else img.crop((k * pw, 0, (k + 1) * pw, h)), c)
                for k, c in enumerate(channels)
            ]
    except DataError:
        raise
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"{path}: cannot read image ({_reason(e)})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        shape = _npy_shape(path)
        return shape[1], shape[0]
    try:
        with open_image(path) as img:
            return img.size
    except Exception as e:  # Pillow raises many types on bad headers; all are the user's file
        raise DataError(f"{path}: cannot read image ({_reason(e)})") from None


def write_image(path: str | Path, array: np.ndarray, *, fast: bool = False, quality: int = 95) -> None:
    """Write a uint8 (H, W) or (H, W, C) array; the format follows the extension.

    C in {1, 2, 3, 4} can go to any Pillow format (PNG is lossless; JPEG takes
    `quality`); other channel counts need a `.npy` path. Parent folders are created;
    the file appears whole or not at all (`pix2pix_fast.fileio.atomic_write`).
    `fast` PNGs use zlib level 1 with the RLE strategy: ~1.5x faster than the
    default on noisy photos, and no larger after PNG's row filters.
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_image wants uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"write_image wants (H, W) or (H, W, C), got shape {arr.shape}")
    ext = path.suffix.lower()
    if ext == ".npy":
        with atomic_write(path) as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        return
    c = arr.shape[2]
    if c not in _MODES:
        raise ValueError(f"{path}: a {c}-channel image can only be written as .npy")
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)  # uint8 arrays map to L, LA, RGB, RGBA
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"{path}: no image format has the extension {ext!r}")
    options = {}
    if ext == ".png" and fast:
        options = {"compress_level": 1, "compress_type": zlib.Z_RLE}
    elif ext in (".jpg", ".jpeg"):
        options = {"quality": quality}
    with atomic_write(path) as f:
        img.save(f, format=fmt, **options)


# --- internals --------------------------------------------------------------


def _reason(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):
        return f"not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image, nor a .npy array"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    msg = str(e).strip().splitlines()
    return msg[0] if msg and msg[0] else type(e).__name__


def _check_width(w: int, n: int, path: Path) -> None:
    if w % n:
        what = "A|B" if n == 2 else f"{n} panels"
        raise DataError(f"{path}: width {w} is not divisible by {n}; an aligned image holds {what} side by side")


def _read_pages(path: Path, channels: int) -> np.ndarray:
    """A multi-page image (TIFF) with `channels` pages as (H, W, channels): page k is channel k."""
    try:
        with open_image(path) as img:
            n = getattr(img, "n_frames", 1)
            if n != channels:
                raise DataError(
                    f"{path}: cannot read image ({channels} channels need a {channels}-page "
                    f"TIFF or a .npy (H, W, C) array; this file has {n} page(s))"
                )
            pages = []
            for k in range(n):
                img.seek(k)
                img.load()
                pages.append(np.asarray(img.convert("L")))
    except DataError:
        raise
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"{path}: cannot read image ({_reason(e)})") from None
    if len({p.shape for p in pages}) != 1:
        raise DataError(f"{path}: cannot read image (its pages differ in size)")
    return np.stack(pages, axis=2)


def _pil_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """(H, W, channels) uint8 from a loaded image; Pillow's conversion errors propagate to the caller."""
    mode = _MODES[channels]
    out = np.asarray(img if img.mode == mode else img.convert(mode))
    if out.ndim == 2:
        out = out[:, :, None]
    return np.ascontiguousarray(out, dtype=np.uint8)


def _npy_shape(path: Path) -> tuple[int, ...]:
    return _npy(path, mmap_mode="r").shape


def _load_npy(path: Path) -> np.ndarray:
    arr = _npy(path)
    return arr if arr.ndim == 3 else arr[:, :, None]


def _npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """A .npy image: a uint8 (H, W[, C]) array with H, W, C >= 1, or DataError naming the file."""
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as e:  # bad magic, truncated data ("cannot reshape"), pickled object ...
        raise DataError(f"{path}: cannot read image ({_reason(e)})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim not in (2, 3) or 0 in arr.shape:
        what = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise DataError(f"{path}: cannot read image (a .npy image must be a uint8 (H, W[, C]) array, got {what})")
    return arr


def _convert_array(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """Channel conversion of a uint8 (H, W, C0) array, following Pillow's rules for C <= 4."""
    c0 = arr.shape[2]
    if c0 == channels:
        out = arr
    elif c0 in (1, 2) and channels in (1, 2, 3, 4):
        gray = arr[:, :, :1]
        alpha = arr[:, :, 1:2] if c0 == 2 else np.full_like(gray, 255)
        out = {1: gray, 2: np.concatenate([gray, alpha], 2), 3: np.repeat(gray, 3, 2),
               4: np.concatenate([np.repeat(gray, 3, 2), alpha], 2)}[channels]
    elif c0 in (3, 4) and channels in (1, 2, 3, 4):
        rgb = arr[:, :, :3]
        alpha = arr[:, :, 3:4] if c0 == 4 else np.full_like(arr[:, :, :1], 255)
        if channels in (1, 2):
            # Pillow's integer luma: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
            w = np.array([19595, 38470, 7471], dtype=np.uint32)
            gray = ((rgb.astype(np.uint32) @ w + 0x8000) >> 16).astype(np.uint8)[:, :, None]
            out = gray if channels == 1 else np.concatenate([gray, alpha], 2)
        else:
            out = rgb if channels == 3 else np.concatenate([rgb, alpha], 2)
    else:
        raise DataError(f"{path}: cannot read image (it has {c0} channels; cannot convert to {channels})")
    return np.ascontiguousarray(out, dtype=np.uint8)
