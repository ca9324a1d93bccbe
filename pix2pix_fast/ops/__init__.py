"""Fused Triton ops for pix2pix-fast (PyTorch references on CPU).

Importing this package never imports triton and never touches CUDA; see
``pix2pix_fast/ops/_common.py`` for the dispatch rule.
"""

from pix2pix_fast.ops.instance_norm_act import (
    instance_norm_act,
    instance_norm_act_ref,
    instance_norm_act_reflect_pad,
)
from pix2pix_fast.ops.reflect_pad import reflect_pad, reflect_pad_ref

__all__ = [
    "instance_norm_act",
    "instance_norm_act_ref",
    "instance_norm_act_reflect_pad",
    "reflect_pad",
    "reflect_pad_ref",
]
