"""Drop-in modules built on the fused ops in ``pix2pix_fast.ops``."""

from pix2pix_fast.nn.fuse import FuseEntry, FuseReport, explain_fuse, fuse
from pix2pix_fast.nn.gan_loss import GANLoss
from pix2pix_fast.nn.instance_norm_act import InstanceNormAct
from pix2pix_fast.nn.reflect_pad import ReflectPad2d

# Modules written in other files of this package; imported on first access so
# that this package imports while they are being written.
_LAZY = {
    "PatchGANLoss": "pix2pix_fast.nn.patchgan_loss",
    "ConvNormAct": "pix2pix_fast.nn.conv_norm_act",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pix2pix_fast.nn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "InstanceNormAct", "ReflectPad2d", "PatchGANLoss", "ConvNormAct", "GANLoss",
    "fuse", "explain_fuse", "FuseReport", "FuseEntry",
]
