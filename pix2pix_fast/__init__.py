"""pix2pix-fast: fast pix2pix training and inference for PyTorch."""
__version__ = "0.1.0"

from pix2pix_fast.config import TrainConfig  # noqa: E402


def __getattr__(name):
    # Pix2Pix pulls in the models and torch; import it only when asked for.
    if name == "Pix2Pix":
        from pix2pix_fast.inference import Pix2Pix

        return Pix2Pix
    raise AttributeError(f"module 'pix2pix_fast' has no attribute {name!r}")


__all__ = ["TrainConfig", "Pix2Pix", "__version__"]
