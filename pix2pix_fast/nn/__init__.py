"""Drop-in modules built on the fused ops in ``pix2pix_fast.ops``."""

from pix2pix_fast.nn.conv_norm_act import ConvNormAct
from pix2pix_fast.nn.fuse import FuseEntry, FuseReport, explain_fuse, fuse
from pix2pix_fast.nn.gan_loss import GANLoss
from pix2pix_fast.nn.instance_norm_act import InstanceNormAct
from pix2pix_fast.nn.patchgan_loss import PatchGANLoss
from pix2pix_fast.nn.reflect_pad import ReflectPad2d

__all__ = [
    "InstanceNormAct", "ReflectPad2d", "PatchGANLoss", "ConvNormAct", "GANLoss",
    "fuse", "explain_fuse", "FuseReport", "FuseEntry",
]
