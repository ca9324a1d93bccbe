"""Running a trained generator.

- `model.py`: the API, `Pix2Pix.from_checkpoint(path)(image)` on images of any
  size (reflect padding, pad-then-crop), `load_generator`, `translate`, and a
  CUDA-graph fixed-size path (`Pix2Pix.compile_fixed`).
- `tiled.py`: tiled inference in bounded memory (blended overlaps, the
  image's normalisation statistics), used by `Pix2Pix` for large images.
- `folder.py`: `pix2pix-fast test`, the API over a dataset split or a folder
  of images, with an index.html of input | output | target.
"""
from pix2pix_fast.inference.model import (
    PRECISIONS,
    Pix2Pix,
    load_generator,
    pad_layout,
    reflect_pad,
    resolve_device,
    to_model_range,
    to_uint8,
    translate,
)
from pix2pix_fast.inference.tiled import TileOptions

__all__ = [
    "Pix2Pix", "load_generator", "resolve_device", "reflect_pad", "pad_layout", "translate", "to_model_range",
    "to_uint8", "PRECISIONS", "TileOptions",
]
