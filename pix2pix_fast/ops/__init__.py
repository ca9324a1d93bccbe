"""Fused Triton ops for pix2pix-fast (PyTorch references on CPU).

The four ops are exported as functions: ``from pix2pix_fast.ops import
patchgan_loss`` gives the function.  The modules of the same names hold the
kernels, launchers and references; import them with
``importlib.import_module("pix2pix_fast.ops.patchgan_loss")`` or ``from
pix2pix_fast.ops.patchgan_loss import ...`` (the package attribute is the
function).  Importing this package never touches CUDA and works without
triton; see ``pix2pix_fast/ops/_common.py`` for the dispatch rule.
"""

from pix2pix_fast.ops.conv_norm_act import conv_norm_act, conv_norm_act_ref
from pix2pix_fast.ops.instance_norm_act import (
    instance_norm_act,
    instance_norm_act_ref,
    instance_norm_act_reflect_pad,
)
from pix2pix_fast.ops.patchgan_loss import patchgan_loss, patchgan_loss_ref
from pix2pix_fast.ops.reflect_pad import reflect_pad, reflect_pad_ref

__all__ = [
    "conv_norm_act",
    "conv_norm_act_ref",
    "instance_norm_act",
    "instance_norm_act_ref",
    "instance_norm_act_reflect_pad",
    "patchgan_loss",
    "patchgan_loss_ref",
    "reflect_pad",
    "reflect_pad_ref",
]
