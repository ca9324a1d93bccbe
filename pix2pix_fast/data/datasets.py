"""PairedDataset: (A, B) image pairs from disk, as uint8 (H, W, C) NumPy arrays.

Layouts (`layout=`):
  aligned  root/<split>/*.png|jpg|...  each file holds A|B side by side
           (the standard pix2pix format; A = left half, so the width is even).
  paired   root/<split>/A/ and root/<split>/B/ with matching file stems
           (A/x.png pairs with B/x.jpg). For split "train" only, root/A and
           root/B with no root/train folder are also accepted, so a plain
           A/ B/ folder pair trains without reshuffling; other splits always
           need their own folder (so validation never silently reuses the
           training images).
  auto     paired if the A/ and B/ folders above exist, else aligned.

Construction only lists the files (sorted by name, so the order is the same on
every machine), skipping hidden files and files whose extension is not in
IMAGE_EXTENSIONS. A missing or empty folder, two files with the same stem, or
A/ B/ names that do not match raise DataError at once. Decoding happens in
`__getitem__`: a file with an image extension that cannot be decoded, an odd
width in an aligned image, or A and B of different sizes raise DataError
there, naming the file; `validate_all` decodes everything once up front.
Headers are not read at construction, so indexing 50k-image datasets is instant.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from pix2pix_fast.config import CHOICES, ConfigError
from pix2pix_fast.errors import DataError
from pix2pix_fast.data.imageio import IMAGE_EXTENSIONS, is_image_file, read_aligned, read_image

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SHOW = 5  # how many offending names an error message lists


class PairedDataset:
    """Indexes an aligned or paired pix2pix dataset; `ds[i]` decodes pair i as (A, B).

    A has `input_nc` channels and B `output_nc`, after `direction`: with "BtoA"
    the B images are the inputs (returned first) and the A images the targets.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        layout: str = "auto",
        direction: str = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
    ):
        if layout not in CHOICES["layout"]:
            raise ConfigError(f"--layout: {layout!r} is not one of {', '.join(CHOICES['layout'])}")
        if direction not in CHOICES["direction"]:
            raise ConfigError(f"--direction: {direction!r} is not one of {', '.join(CHOICES['direction'])}")
        for flag, nc in (("input-nc", input_nc), ("output-nc", output_nc)):
            if nc < 1:
                raise ConfigError(f"--{flag} must be >= 1, got {nc}")
        self.root = Path(root)
        self.split = split
        self.direction = direction
        self.input_nc = input_nc
        self.output_nc = output_nc
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}")
        paired = _paired_folder(self.root, split)
        if layout == "paired" and paired is None:
            raise DataError(
                f"{self.root}: layout 'paired' needs {self.root / split / 'A'} and {self.root / split / 'B'} folders"
                + (f" (or {self.root / 'A'} and {self.root / 'B'})" if split == "train" else "")
            )
        self.layout = "paired" if layout == "paired" or (layout == "auto" and paired is not None) else "aligned"
        if self.layout == "paired":
            self.folder = paired
            a_files = list_images(paired / "A")
            b_files = list_images(paired / "B")
            self._files = match_stems(a_files, b_files, paired / "A", paired / "B")
        else:
            self.folder = self.root / split
            if not self.folder.is_dir():
                present = [s for s in SPLITS if (self.root / s).is_dir()]
                hint = f" (found: {', '.join(present)})" if present else ""
                raise DataError(f"split folder not found: {self.folder}{hint}")
            files = list_images(self.folder)
            check_unique_stems(files, self.folder)
            self._files = [(f,) for f in files]
        self.names: list[str] = [fs[0].stem for fs in self._files]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        files = self._files[i]  # IndexError for out-of-range i, as a sequence should
        swap = self.direction == "BtoA"
        if self.layout == "aligned":
            # the file's left half is A; with BtoA it is the target, so it takes output_nc
            left_nc, right_nc = (self.output_nc, self.input_nc) if swap else (self.input_nc, self.output_nc)
            a, b = read_aligned(files[0], (left_nc, right_nc))
        else:
            a = read_image(files[0], self.output_nc if swap else self.input_nc)
            b = read_image(files[1], self.input_nc if swap else self.output_nc)
            if a.shape[:2] != b.shape[:2]:
                raise DataError(
                    f"{files[1]}: size {b.shape[1]}x{b.shape[0]} differs from its pair "
                    f"{files[0]} ({a.shape[1]}x{a.shape[0]}); A and B must be the same size"
                )
        return (b, a) if swap else (a, b)

    def sources(self, i: int) -> list[str]:
        """The file(s) item i is read from: [AB file] (aligned) or [A file, B file] (paired)."""
        return [str(f) for f in self._files[i]]

    def fingerprint(self) -> str:
        """A hex digest of the layout, direction, channels and every file's (path, size, mtime_ns).

        Changes whenever an image is added, removed, renamed or rewritten, or the
        decode settings change; the decode cache keys on it.
        """
        h = hashlib.sha256()
        h.update(f"{self.layout}|{self.direction}|{self.input_nc}|{self.output_nc}\n".encode())
        for files in self._files:
            for f in files:
                try:
                    st = os.stat(f)
                except OSError as e:
                    raise DataError(f"{f}: cannot stat ({e.strerror}); was it removed?") from None
                h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def validate_all(self, progress: bool = False) -> None:
        """Decode every item once; raise the first DataError (a corrupt file, an odd width, ...)."""
        from tqdm import tqdm

        for i in tqdm(range(len(self)), desc=f"checking {self.folder}", unit="img", disable=not progress):
            self[i]

    def __repr__(self) -> str:
        return (
            f"PairedDataset({str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, "
            f"direction={self.direction!r}, input_nc={self.input_nc}, output_nc={self.output_nc}) "
            f"with {len(self)} pairs"
        )


def find_splits(root: str | Path) -> list[str]:
    """The splits of SPLITS that `PairedDataset(root, split)` can open, by folder presence only."""
    root = Path(root)
    return [s for s in SPLITS if (root / s).is_dir() or _paired_folder(root, s) is not None]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name; DataError if missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list folder ({e.strerror})") from None
    files = [Path(e.path) for e in entries if is_image_file(e.name) and e.is_file()]
    if not files:
        skipped = sum(1 for e in entries if not e.name.startswith("."))
        extra = f"; {skipped} other entr{'y' if skipped == 1 else 'ies'} skipped" if skipped else ""
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}{extra})")
    return files


def match_stems(a_files: list[Path], b_files: list[Path], a_dir: Path, b_dir: Path) -> list[tuple[Path, Path]]:
    """Pair files by stem, in A's order; DataError naming the first few unmatched files."""
    check_unique_stems(a_files, a_dir)
    check_unique_stems(b_files, b_dir)
    b_by_stem = {f.stem: f for f in b_files}
    a_stems = {f.stem for f in a_files}
    only_a = [f.name for f in a_files if f.stem not in b_by_stem]
    only_b = [f.name for f in b_files if f.stem not in a_stems]
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} file(s) in {a_dir} have no counterpart in {b_dir}: {_first(only_a)}")
        if only_b:
            parts.append(f"{len(only_b)} file(s) in {b_dir} have no counterpart in {a_dir}: {_first(only_b)}")
        raise DataError("A and B do not match: " + "; ".join(parts))
    return [(f, b_by_stem[f.stem]) for f in a_files]


def _paired_folder(root: Path, split: str) -> Path | None:
    """The folder holding A/ and B/ for `split`, or None (see the module docstring)."""
    if (root / split / "A").is_dir() and (root / split / "B").is_dir():
        return root / split
    if split == "train" and not (root / split).exists() and (root / "A").is_dir() and (root / "B").is_dir():
        return root
    return None


def check_unique_stems(files: list[Path], folder: Path) -> None:
    seen: dict[str, str] = {}
    for f in files:
        if f.stem in seen:
            raise DataError(f"{folder}: two images share the name {f.stem!r} ({seen[f.stem]} and {f.name})")
        seen[f.stem] = f.name


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def dataset_root(cfg) -> Path:
    """The dataset folder of a TrainConfig: the user's, or the built-in synthetic set (generated once)."""
    if cfg.dataroot:
        return Path(cfg.dataroot)
    from pix2pix_fast.config import SYNTHETIC_SIZE
    from pix2pix_fast.data.synthetic import synthetic_dataset

    SYNTHETIC_SIZE.check("--crop-size (the built-in dataset is drawn at the crop size, so without --dataroot it)",
                         cfg.crop_size)
    n = cfg.synthetic_count
    return synthetic_dataset(size=cfg.crop_size, n_train=n, n_val=max(1, n // 4), n_test=max(1, n // 4))
