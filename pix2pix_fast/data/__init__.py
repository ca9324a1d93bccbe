"""Datasets (aligned AB images, paired A/ B/ folders, the built-in synthetic set) and loaders."""
from pix2pix_fast.errors import DataError


def __getattr__(name):
    # Keep `import pix2pix_fast.data` light: submodules load on first use.
    if name == "PairedDataset":
        from pix2pix_fast.data.datasets import PairedDataset

        return PairedDataset
    if name == "PairedLoader":
        from pix2pix_fast.data.loader import PairedLoader

        return PairedLoader
    if name == "synthetic_dataset":
        from pix2pix_fast.data.synthetic import synthetic_dataset

        return synthetic_dataset
    raise AttributeError(f"module 'pix2pix_fast.data' has no attribute {name!r}")


__all__ = ["DataError", "PairedDataset", "PairedLoader", "synthetic_dataset"]
