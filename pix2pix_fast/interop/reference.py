"""Checkpoints of the reference implementation in and out.

The reference implementation (pytorch-CycleGAN-and-pix2pix) saves each
network's bare ``state_dict`` (``latest_net_G.pth``, ``latest_net_D.pth``)
in its own layout: the U-Net as nested ``UnetSkipConnectionBlock`` Sequentials
(``model.model.1.model.1.weight``), the ResNet generator and the
discriminators as one flat Sequential (``model.10.conv_block.1.weight``,
``net.3.running_mean``).  This package's models compute the same functions
with other key names (``down.1.conv.weight``, ``blocks.0.conv1.conv.weight``;
see ``pix2pix_fast/models``), so conversion is a key map plus two rules:

* The reference's convs feeding a norm have a bias only with instance norm;
  this package keeps a conv bias with norm "none" too.  Importing fills it
  with zeros (the same function); exporting needs it to be zero.
* InstanceNorm running statistics (``running_mean``, ``running_var``,
  ``num_batches_tracked``), which checkpoints of older reference versions
  carry, are dropped: instance norm here, as in the reference's current code
  (whose test.py deletes them on load), normalises every image by its own
  statistics in train and eval mode alike.  BatchNorm running statistics are
  kept; eval-mode inference (``--eval-mode``, ``export``) uses them, the
  default test-time mode (batch statistics, as the reference's test.py
  without --eval) does not.

``nn.DataParallel``'s ``module.`` prefixes are removed.  Everything the tensor
shapes determine (netG, ngf, norm, input/output channels, n_layers_D, ndf,
ResNet dropout) is inferred; options given explicitly are checked against
the file, and any disagreement is one line naming the first key or shape.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.fileio import atomic_write
from pix2pix_fast.checkpoint import config_of, load_checkpoint, save_checkpoint, torch_load
from pix2pix_fast.errors import CheckpointError, ReferenceCheckpointError

__all__ = [
    "ReferenceCheckpointError", "NET_D_CHOICES", "Layer", "generator_layers", "discriminator_layers",
    "load_reference_state", "infer_generator_options", "infer_discriminator_options",
    "from_reference", "to_reference", "import_reference", "export_reference",
]

NET_D_CHOICES = ("basic", "n_layers", "pixel")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_IN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Layer:
    """One parameterised layer: its key prefix in the reference and here.

    kind: "conv" or "norm".  always_bias: a conv built with a bias whatever
    the norm (otherwise the reference gives it one only with instance norm).
    """

    ref: str
    ours: str
    kind: str
    always_bias: bool = False


# ---------------------------------------------------------------- layouts
def _unet_prefix(level: int) -> str:
    """Key prefix of the Sequential of U-Net level ``level`` (0 = outermost).

    The outermost block holds its submodule at index 1 of its Sequential,
    every other block at index 3 (after LeakyReLU, conv, norm).
    """
    if level == 0:
        return "model.model."
    return "model.model.1.model." + "3.model." * (level - 1)


def _unet_layers(num_downs: int) -> List[Layer]:
    n = num_downs
    prefix = [_unet_prefix(i) for i in range(n)]
    downs, ups = [], []
    for i in range(n):
        p = prefix[i]
        k = n - 1 - i  # decoder index here: innermost first
        if i == 0:
            downs.append(Layer(p + "0", "down.0.conv", "conv"))
            ups.append([Layer(p + "3", f"up.{k}.conv", "conv", always_bias=True)])
        elif i == n - 1:
            downs.append(Layer(p + "1", f"down.{i}.conv", "conv"))
            ups.append([Layer(p + "3", f"up.{k}.conv", "conv"), Layer(p + "4", f"up.{k}.norm_act.norm", "norm")])
        else:
            downs += [Layer(p + "1", f"down.{i}.conv", "conv"), Layer(p + "2", f"down.{i}.norm_act.norm", "norm")]
            ups.append([Layer(p + "5", f"up.{k}.conv", "conv"), Layer(p + "6", f"up.{k}.norm_act.norm", "norm")])
    # The reference's order: encoder outermost first, then decoder innermost first.
    return downs + [layer for level in reversed(ups) for layer in level]


def _resnet_layers(n_blocks: int, dropout: bool) -> List[Layer]:
    def conv_norm(index: int, ours: str) -> List[Layer]:
        return [Layer(f"model.{index}", f"{ours}.conv", "conv"), Layer(f"model.{index + 1}", f"{ours}.norm_act.norm", "norm")]

    layers = conv_norm(1, "stem") + conv_norm(4, "down.0") + conv_norm(7, "down.1")
    second = 6 if dropout else 5  # Dropout(0.5) sits between the block's two halves
    for b in range(n_blocks):
        p = f"model.{10 + b}.conv_block."
        layers += [
            Layer(p + "1", f"blocks.{b}.conv1.conv", "conv"), Layer(p + "2", f"blocks.{b}.conv1.norm_act.norm", "norm"),
            Layer(p + str(second), f"blocks.{b}.conv2.conv", "conv"),
            Layer(p + str(second + 1), f"blocks.{b}.conv2.norm_act.norm", "norm"),
        ]
    base = 10 + n_blocks
    layers += conv_norm(base, "up.0") + conv_norm(base + 3, "up.1")
    layers.append(Layer(f"model.{base + 7}", "head.conv", "conv", always_bias=True))
    return layers


def generator_layers(netG: str, dropout: bool) -> List[Layer]:
    """The parameterised layers of a reference generator, in the reference's order."""
    from pix2pix_fast.models import parse_netG

    kind, n = parse_netG(netG)
    return _unet_layers(n) if kind == "unet" else _resnet_layers(n, dropout)


def discriminator_layers(n_layers_D: int) -> List[Layer]:
    """NLayerDiscriminator (n_layers_D >= 1) or PixelDiscriminator (0), in the reference's order."""
    if n_layers_D == 0:
        return [
            Layer("net.0", "layers.0.conv", "conv", always_bias=True),
            Layer("net.2", "layers.1.conv", "conv"), Layer("net.3", "layers.1.norm_act.norm", "norm"),
            Layer("net.5", "layers.2.conv", "conv"),
        ]
    layers = [Layer("model.0", "layers.0.conv", "conv", always_bias=True)]
    for k in range(1, n_layers_D + 1):
        i = 2 + 3 * (k - 1)
        layers += [Layer(f"model.{i}", f"layers.{k}.conv", "conv"), Layer(f"model.{i + 1}", f"layers.{k}.norm_act.norm", "norm")]
    layers.append(Layer(f"model.{2 + 3 * n_layers_D}", f"layers.{n_layers_D + 1}.conv", "conv", always_bias=True))
    return layers


def _expected_keys(layer: Layer, norm: str) -> List[str]:
    """Reference keys of one layer (without the layer prefix)."""
    if layer.kind == "conv":
        return ["weight", "bias"] if layer.always_bias or norm == "instance" else ["weight"]
    return list(_BN_KEYS) if norm == "batch" else []


# ------------------------------------------------------------------ files
def load_reference_state(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A reference ``.pth`` state dict, ``module.`` prefixes removed; CheckpointError in one line."""
    path = Path(path)
    state = torch_load(path, "reference checkpoint")
    if isinstance(state, dict) and state.get("format") == "pix2pix-fast-checkpoint":
        raise CheckpointError(f"{path}: is already a pix2pix-fast checkpoint")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a network state dict (expected a dict of tensors, as the reference saves)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


# -------------------------------------------------------------- inference
def _norm_of(state: Dict[str, torch.Tensor], norm_prefix: str, conv_prefix: str) -> str:
    if norm_prefix + ".weight" in state:
        return "batch"
    return "instance" if conv_prefix + ".bias" in state else "none"


def infer_generator_options(state: Dict[str, torch.Tensor], path: str = "NET_G.pth") -> Dict[str, Any]:
    """{netG, ngf, norm, input_nc, output_nc[, dropout]} read off a reference generator's tensors."""
    if "model.model.0.weight" in state:
        n = 1
        while _unet_prefix(n) + "1.weight" in state:
            n += 1
        first, last = state["model.model.0.weight"], state.get("model.model.3.weight")
        if last is None:
            raise ReferenceCheckpointError(f"{path}: a U-Net without its outermost up conv (missing key model.model.3.weight)")
        return {"netG": f"unet_{2 ** n}", "ngf": first.shape[0], "input_nc": first.shape[1],
                "output_nc": last.shape[1], "norm": _norm_of(state, "model.model.1.model.2", "model.model.1.model.1")}
    if "model.1.weight" in state and "model.10.conv_block.1.weight" in state:
        n_blocks = 0
        while f"model.{10 + n_blocks}.conv_block.1.weight" in state:
            n_blocks += 1
        first, last = state["model.1.weight"], state.get(f"model.{17 + n_blocks}.weight")
        if last is None:
            raise ReferenceCheckpointError(f"{path}: a ResNet generator without its last conv (missing key model.{17 + n_blocks}.weight)")
        return {"netG": f"resnet_{n_blocks}blocks", "ngf": first.shape[0], "input_nc": first.shape[1],
                "output_nc": last.shape[0], "norm": _norm_of(state, "model.2", "model.1"),
                # With dropout the block's second conv sits at 6 (else a norm, or nothing).
                "dropout": getattr(state.get("model.10.conv_block.6.weight"), "ndim", 0) == 4}
    raise ReferenceCheckpointError(
        f"{path}: not a reference generator (no key model.model.0.weight (U-Net) or model.10.conv_block.1.weight (ResNet))")


def infer_discriminator_options(state: Dict[str, torch.Tensor], path: str = "NET_D.pth") -> Dict[str, Any]:
    """{netD, n_layers_D, ndf, norm, in_channels} read off a reference discriminator's tensors."""
    if "net.0.weight" in state:
        first = state["net.0.weight"]
        return {"netD": "pixel", "n_layers_D": 0, "ndf": first.shape[0], "in_channels": first.shape[1],
                "norm": _norm_of(state, "net.3", "net.2")}
    if "model.0.weight" in state and "model.2.weight" in state:
        convs = 0
        while f"model.{2 + 3 * convs}.weight" in state:
            convs += 1
        n_layers = convs - 1
        first = state["model.0.weight"]
        return {"netD": "basic" if n_layers == 3 else "n_layers", "n_layers_D": n_layers, "ndf": first.shape[0],
                "in_channels": first.shape[1], "norm": _norm_of(state, "model.3", "model.2")}
    raise ReferenceCheckpointError(f"{path}: not a reference discriminator (no key model.0.weight (PatchGAN) or net.0.weight (pixel))")


# -------------------------------------------------------------- conversion
def from_reference(
    state: Dict[str, torch.Tensor], layers: List[Layer], norm: str, template: Dict[str, torch.Tensor],
    path: str, expects: str,
) -> Dict[str, torch.Tensor]:
    """A state dict of this package's model (``template``: its own state dict) from a reference one.

    Raises ReferenceCheckpointError naming the first reference key that is missing,
    has the wrong shape, or is not expected.  ``expects`` names the options
    the layout came from, for the message.
    """
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for layer in layers:
        names = _expected_keys(layer, norm)
        if layer.kind == "norm" and norm == "instance":
            used.update(f"{layer.ref}.{s}" for s in _IN_STATS if f"{layer.ref}.{s}" in state)
        for name in names:
            key, ours = f"{layer.ref}.{name}", f"{layer.ours}.{name}"
            if key not in state:
                raise ReferenceCheckpointError(f"{path}: missing key {key} (expected by {expects})")
            want = template[ours]
            if state[key].shape != want.shape:
                raise ReferenceCheckpointError(f"{path}: {key} has shape {_shape(state[key])}, {expects} expects {_shape(want)}")
            out[ours] = state[key].to(want.dtype)
            used.add(key)
        if layer.kind == "conv" and "bias" not in names and f"{layer.ours}.bias" in template:
            out[f"{layer.ours}.bias"] = torch.zeros_like(template[f"{layer.ours}.bias"])
    extra = [k for k in state if k not in used]
    if extra:
        raise ReferenceCheckpointError(f"{path}: unexpected key {extra[0]} (shape {_shape(state[extra[0]])}) for {expects}")
    missing = [k for k in template if k not in out]
    assert not missing, f"layout does not cover {missing[0]}"
    return out


def to_reference(weights: Dict[str, torch.Tensor], layers: List[Layer], norm: str, what: str) -> Dict[str, torch.Tensor]:
    """The reverse of :func:`from_reference`: this package's state dict -> the reference's keys and order."""
    out: Dict[str, torch.Tensor] = {}
    for layer in layers:
        names = _expected_keys(layer, norm)
        for name in names:
            out[f"{layer.ref}.{name}"] = weights[f"{layer.ours}.{name}"].detach().clone()
        bias = weights.get(f"{layer.ours}.bias")
        if layer.kind == "conv" and "bias" not in names and bias is not None and bool(bias.ne(0).any()):
            raise ReferenceCheckpointError(
                f"{what}: {layer.ours}.bias is not zero, and the reference's conv {layer.ref} has no bias with "
                f"--norm {norm}; this model has no exact reference equivalent")
    return out


def _reference_compatible(cfg: TrainConfig, what: str) -> None:
    from pix2pix_fast.models import parse_netG

    kind, _ = parse_netG(cfg.netG)
    if cfg.upsample != "transposed":
        raise ReferenceCheckpointError(f"{what}: --upsample {cfg.upsample} has no reference equivalent (only transposed)")
    want = "zero" if kind == "unet" else "reflect"
    if cfg.padding != want:
        raise ReferenceCheckpointError(f"{what}: a {cfg.netG} with --padding {cfg.padding} has no reference equivalent "
                             f"(the reference's is {want})")


def _discriminator_compatible(cfg: TrainConfig, what: str) -> None:
    if cfg.num_D > 1:
        raise ReferenceCheckpointError(
            f"{what}: the discriminator is {cfg.num_D} PatchGANs at {cfg.num_D} scales (--num-D {cfg.num_D}), the "
            "reference's is one: no equivalent; convert the generator alone")
    # The reference's D pads with zeros beside any generator.
    if cfg.discriminator_padding != "zero":
        raise ReferenceCheckpointError(
            f"{what}: the discriminator pads its 4x4 convs by reflection (--padding {cfg.padding}, --padding-D "
            f"{cfg.padding_D}), the reference's with zeros: no exact equivalent; convert the generator alone")


# ---------------------------------------------------------------- commands
_G_OPTIONS = ("netG", "ngf", "norm", "input_nc", "output_nc", "dropout")


def _describe(opts: Dict[str, Any]) -> str:
    parts = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def import_reference(
    net_g: str | os.PathLike,
    out: str | os.PathLike,
    *,
    net_d: Optional[str | os.PathLike] = None,
    netD: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
) -> Tuple[Path, TrainConfig]:
    """Convert reference ``net_G`` (and optionally ``net_D``) state dicts into a pix2pix-fast checkpoint.

    options: TrainConfig fields given explicitly (they win over inference and
    are checked against the file; the rest of the config keeps its defaults,
    e.g. dataroot for fine-tuning).  netD: basic | n_layers | pixel, checked
    against (or inferred from) ``net_d``.  Without ``net_d`` the checkpoint
    gets a freshly initialised discriminator (seeded by the config's seed),
    so ``train --resume`` can fine-tune from it.  Returns (path, config).
    """
    from pix2pix_fast.models import build_discriminator, build_generator

    options = dict(options or {})
    if netD is not None and netD not in NET_D_CHOICES:
        raise ConfigError(f"--netD: {netD!r} is not one of {', '.join(NET_D_CHOICES)}")
    g_path = str(net_g)
    g_state = load_reference_state(net_g)
    inferred = infer_generator_options(g_state, g_path)
    g_opts = {k: options.get(k, inferred.get(k)) for k in _G_OPTIONS if k in options or k in inferred}
    cfg_fields: Dict[str, Any] = {**options, **g_opts}
    cfg_fields.setdefault("padding", "zero" if str(g_opts["netG"]).startswith("unet_") else "reflect")
    cfg_fields.setdefault("padding_D", "zero")  # the reference's D, beside a U-Net or a ResNet

    d_state = None
    if net_d is not None:
        d_state = load_reference_state(net_d)
        d_inf = infer_discriminator_options(d_state, str(net_d))
        if netD is None:
            n_layers = options.get("n_layers_D", d_inf["n_layers_D"])
        else:
            n_layers = {"basic": 3, "pixel": 0}.get(netD, options.get("n_layers_D", d_inf["n_layers_D"]))
            if netD == "n_layers" and n_layers == 0:
                raise ConfigError("--netD n_layers needs --n-layers-D >= 1 (0 is --netD pixel)")
        cfg_fields["n_layers_D"] = n_layers
        cfg_fields.setdefault("ndf", d_inf["ndf"])
    elif netD is not None:
        cfg_fields["n_layers_D"] = {"basic": 3, "pixel": 0}.get(netD, options.get("n_layers_D", 3))

    cfg = TrainConfig.from_dict(cfg_fields)
    _reference_compatible(cfg, g_path)
    if net_d is not None:
        _discriminator_compatible(cfg, str(net_d))
    torch.manual_seed(cfg.seed)
    G, D = build_generator(cfg), build_discriminator(cfg)
    g_expects = _describe({k: getattr(cfg, k) for k in _G_OPTIONS if k != "dropout" or "dropout" in g_opts})
    g_weights = from_reference(g_state, generator_layers(cfg.netG, cfg.dropout), cfg.norm, G.state_dict(), g_path, g_expects)
    if d_state is not None:
        d_expects = _describe({"n_layers_D": cfg.n_layers_D, "ndf": cfg.ndf, "norm": cfg.norm})
        d_weights = from_reference(d_state, discriminator_layers(cfg.n_layers_D), cfg.norm, D.state_dict(),
                                   str(net_d), d_expects + f" and input_nc + output_nc = {cfg.input_nc + cfg.output_nc}")
    else:
        d_weights = D.state_dict()
    G.load_state_dict(g_weights, strict=True)
    D.load_state_dict(d_weights, strict=True)
    state = {
        "config": cfg.to_dict(), "G": G.state_dict(), "D": D.state_dict(),
        "step": 0, "epoch": 0, "batch_in_epoch": 0,
        "imported_from": {"G": str(net_g), "D": str(net_d) if net_d is not None else ""},
    }
    return save_checkpoint(out, state), cfg


def export_reference(checkpoint: str | os.PathLike, out: str | os.PathLike, net: str = "G") -> Path:
    """Write a checkpoint's generator (net="G") or discriminator ("D") as a reference ``.pth`` state dict."""
    state = load_checkpoint(checkpoint)
    cfg = config_of(state, checkpoint)
    what = str(checkpoint)
    _reference_compatible(cfg, what)
    if net == "D":
        _discriminator_compatible(cfg, what)
    if net not in state:
        raise CheckpointError(f"checkpoint {checkpoint}: has no {net!r} entry")
    weights = {k.removeprefix("_orig_mod."): v for k, v in state[net].items()}
    layers = generator_layers(cfg.netG, cfg.dropout) if net == "G" else discriminator_layers(cfg.n_layers_D)
    try:
        ref = to_reference(weights, layers, cfg.norm, what)
    except KeyError as e:
        raise CheckpointError(f"checkpoint {checkpoint}: its {net!r} weights lack {e.args[0]}") from None
    out = Path(out)
    with atomic_write(out) as f:
        torch.save(ref, f)
    return out
