"""Build aligned AB images (A|B side by side) from two folders of matching images.

    combine("photos/A", "photos/B", "datasets/mine")

Files pair up by stem (A/x.jpg with B/x.png) and are written as out_dir/x.png
(lossless). As in the reference pix2pix script, A and B must have the same
size; a pair that differs is an error naming both files (resizing silently
would distort one of them). If a_dir and b_dir both hold split folders
(train/, val/, test/), each split present in both is combined into
out_dir/<split>/, so the output is ready for `PairedDataset(out_dir, split)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pix2pix_fast.data.datasets import SPLITS, list_images, match_stems
from pix2pix_fast.errors import DataError
from pix2pix_fast.data.imageio import read_image, write_image


def combine(
    a_dir: str | Path,
    b_dir: str | Path,
    out_dir: str | Path,
    *,
    channels: int = 3,
    progress: bool = True,
) -> int:
    """Write one AB image per matching A/B pair; return the number written.

    Both halves are converted to `channels` (3 = RGB; a dataset can read them
    back as grayscale with input_nc / output_nc = 1).
    """
    a_dir, b_dir, out_dir = Path(a_dir), Path(b_dir), Path(out_dir)
    for d in (a_dir, b_dir):
        if not d.is_dir():
            raise DataError(f"folder not found: {d}")
    splits = [s for s in SPLITS if (a_dir / s).is_dir() and (b_dir / s).is_dir()]
    if splits:
        return sum(_combine_folder(a_dir / s, b_dir / s, out_dir / s, channels, progress) for s in splits)
    return _combine_folder(a_dir, b_dir, out_dir, channels, progress)


def _combine_folder(a_dir: Path, b_dir: Path, out_dir: Path, channels: int, progress: bool) -> int:
    from tqdm import tqdm

    pairs = match_stems(list_images(a_dir), list_images(b_dir), a_dir, b_dir)
    ext = ".png" if channels <= 4 else ".npy"  # PNG holds at most RGBA
    for a_path, b_path in tqdm(pairs, desc=f"combining {out_dir}", unit="img", disable=not progress):
        a = read_image(a_path, channels)
        b = read_image(b_path, channels)
        if a.shape != b.shape:
            raise DataError(
                f"{b_path}: size {b.shape[1]}x{b.shape[0]} differs from {a_path} ({a.shape[1]}x{a.shape[0]}); "
                "A and B must be the same size"
            )
        write_image(out_dir / f"{a_path.stem}{ext}", np.concatenate([a, b], axis=1))
    return len(pairs)
