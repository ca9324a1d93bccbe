"""The pix2pix models and their builders.

`build_generator(cfg)` / `build_discriminator(cfg)` read a TrainConfig and
build the reference model (plain PyTorch layers, `models.layers.Blocks`);
`fused=True` builds the fast model instead: the same networks made by
`models.fast.FastBlocks` (fused instance norm + activation and the levers
cfg switches on: `pad_channels`, `fused_pad`, `conv_impl`). Both have the
same state_dict keys and shapes, so checkpoints move freely between the eager
and the fast backend and between lever settings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from pix2pix_fast.models.init import init_weights
from pix2pix_fast.models.layers import REFERENCE, Blocks, ConvBlock, NormAct
from pix2pix_fast.models.patchgan import MultiscaleDiscriminator, PatchGANDiscriminator, scale_logits
from pix2pix_fast.models.resnet import ResnetBlock, ResnetGenerator
from pix2pix_fast.models.unet import UNetGenerator

if TYPE_CHECKING:
    from pix2pix_fast.config import TrainConfig

_RESNETS = {"resnet_6blocks": 6, "resnet_9blocks": 9}


def parse_netG(netG: str) -> tuple[str, int]:
    """"unet_<size>" -> ("unet", num_downs = log2(size)); "resnet_<n>blocks" -> ("resnet", n)."""
    if netG in _RESNETS:
        return "resnet", _RESNETS[netG]
    size = netG[5:] if netG.startswith("unet_") else ""
    if size.isdigit() and int(size) >= 4 and int(size) & (int(size) - 1) == 0:
        return "unet", int(size).bit_length() - 1
    raise ValueError(
        f"netG: {netG!r} is not unet_<size> (size a power of two >= 4, e.g. unet_256), "
        "resnet_6blocks or resnet_9blocks"
    )


def _blocks(cfg: "TrainConfig", fused: bool) -> Blocks:
    """The fast model's factory (cfg's levers), or the reference layers."""
    if not fused:
        return Blocks(checkpoint=True) if cfg.checkpoint_activations else REFERENCE
    from pix2pix_fast.models.fast import FastBlocks  # the fused layers pull in the kernels

    return FastBlocks.from_config(cfg)


def build_generator(cfg: "TrainConfig", fused: bool = False) -> nn.Module:
    """The generator named by cfg.netG, initialised with cfg.init_type/init_gain.

    fused: the fast model (fused norm layers and cfg's levers).
    """
    kind, n = parse_netG(cfg.netG)
    common = dict(
        in_channels=cfg.input_nc, out_channels=cfg.output_nc, ngf=cfg.ngf, norm=cfg.norm,
        padding=cfg.padding, upsample=cfg.upsample, dropout=cfg.dropout, blocks=_blocks(cfg, fused),
    )
    if kind == "unet":
        net = UNetGenerator(num_downs=n, **common)
    else:
        net = ResnetGenerator(n_blocks=n, **common)
    return init_weights(net, cfg.init_type, cfg.init_gain)


def build_discriminator(cfg: "TrainConfig", fused: bool = False) -> nn.Module:
    """The conditional PatchGAN on cat([input, output]) (cfg.num_D > 1: a MultiscaleDiscriminator of
    such PatchGANs), initialised as G. One PatchGAN keeps its keys (older checkpoints load)."""
    patchgan = dict(
        in_channels=cfg.input_nc + cfg.output_nc, ndf=cfg.ndf, n_layers=cfg.n_layers_D,
        norm=cfg.norm, padding=cfg.discriminator_padding, blocks=_blocks(cfg, fused),
    )
    net = PatchGANDiscriminator(**patchgan) if cfg.num_D == 1 else MultiscaleDiscriminator(cfg.num_D, **patchgan)
    return init_weights(net, cfg.init_type, cfg.init_gain)


__all__ = [
    "UNetGenerator",
    "ResnetGenerator",
    "ResnetBlock",
    "PatchGANDiscriminator",
    "MultiscaleDiscriminator",
    "scale_logits",
    "NormAct",
    "ConvBlock",
    "Blocks",
    "REFERENCE",
    "init_weights",
    "build_generator",
    "build_discriminator",
    "parse_netG",
]
