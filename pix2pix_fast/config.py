"""TrainConfig: the single source of every training default.

The CLI flags of `pix2pix-fast train` and the optional YAML/JSON config file
are generated from this dataclass, and the resolved config is saved in every
checkpoint, so a checkpoint always knows how to rebuild its models.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pix2pix_fast.errors import ConfigError

# How inference runs a generator (runtime.py): test, eval, the demo and validation.
RUNTIMES = ("auto", "eager", "compiled", "onnx")

# Allowed values of the string options; the CLI and `validate` both read these.
CHOICES: dict[str, tuple[str, ...]] = {
    "direction": ("AtoB", "BtoA"),
    "layout": ("auto", "aligned", "paired"),
    "preprocess": ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"),
    "norm": ("instance", "batch", "none"),
    "padding": ("zero", "reflect"),
    "padding_D": ("same", "zero", "reflect"),
    "upsample": ("transposed", "nearest", "bilinear"),
    "init_type": ("normal", "xavier", "kaiming", "orthogonal"),
    "gan_mode": ("vanilla", "lsgan", "hinge", "none"),
    "lr_policy": ("linear", "step", "cosine"),
    "device": ("auto", "cpu", "cuda", "mps"),  # device.DEVICES
    "backend": ("auto", "eager", "fast"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "conv_impl": ("cudnn", "triton"),
    "val_runtime": RUNTIMES,
}


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric option: the one check every number a user gives goes through.

    `Range(int, 1, 1024)` is an integer from 1 to 1024; `Range(float, 0, 1,
    lo_open=True)` a finite number above 0 and at most 1. As an argparse
    `type=` it parses and checks a flag's text (a bad value is one line
    naming the flag); `check` does the same for a value from a config file or
    the API; `describe` is what --help states.
    """

    kind: type
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        if self.kind is int:
            return f"an integer from {self.lo} to {self.hi}"
        if not (self.lo_open or self.hi_open):
            return f"a number from {self.lo:g} to {self.hi:g}"
        return f"a number {'>' if self.lo_open else '>='} {self.lo:g} and {'<' if self.hi_open else '<='} {self.hi:g}"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def check(self, flag: str, value: Any) -> Any:
        """`value`, or ConfigError naming `flag` and the range."""
        if not self.contains(value):
            raise ConfigError(f"{flag} must be {self.describe()}, got {value!r}")
        return value

    def __call__(self, text: str) -> Any:
        """argparse `type=`: the flag's text as a number in range, or argparse's one-line error."""
        import argparse

        try:
            value = self.kind(text.strip())
        except ValueError:
            value = None
        if value is None or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.kind.__name__


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its --help text (and, for numbers, its `range`)."""
    return field(default=default, metadata={"help": help, **meta})


def _int(default: int, help: str, lo: int, hi: int) -> Any:
    return _opt(default, help, range=Range(int, lo, hi))


def _num(default: float, help: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Any:
    return _opt(default, help, range=Range(float, lo, hi, lo_open, hi_open))


MAX_SIZE = 8192  # image sides, load and crop sizes
MAX_STEPS = 10**9
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1
# The pad-then-crop margin of test, eval and the demo, pixels a side.
MARGIN = Range(int, 0, 256)
# "At most this many images (0 = all)" of test --limit and eval --max-images.
COUNT = Range(int, 0, MAX_STEPS)
# Sides of the built-in synthetic dataset (its layouts need at least 16 pixels).
SYNTHETIC_SIZE = Range(int, 16, MAX_SIZE)


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---------------------------------------------------------------
    dataroot: str = _opt("", "dataset folder (train/ val/ test/ of AB images, or A/ and B/ folders); empty = the built-in synthetic dataset")
    layout: str = _opt("auto", "dataset layout: aligned (A|B side by side), paired (A/ and B/ folders), or auto-detect")
    direction: str = _opt("AtoB", "translation direction: AtoB or BtoA")
    input_nc: int = _int(3, "channels of the input image (1 = grayscale)", 1, 64)
    output_nc: int = _int(3, "channels of the output image", 1, 64)
    load_size: int = _int(286, "images are resized to this size before cropping", 1, MAX_SIZE)
    crop_size: int = _int(256, "random crop size = the network's input size", 1, MAX_SIZE)
    crop_height: int = _int(0, "crop height, for rectangular crops: --crop-size is then the width (--crop-size 512 --crop-height 256 trains on 512 wide x 256 high crops); 0 = square", 0, MAX_SIZE)
    load_height: int = _int(0, "height images are resized to before cropping, for rectangular crops (--load-size is then the width); 0 = --load-size x crop height / --crop-size, rounded (the same aspect as the crop)", 0, MAX_SIZE)
    preprocess: str = _opt("resize_and_crop", "jitter: resize_and_crop | crop | scale_width | scale_width_and_crop | none")
    flip: bool = _opt(True, "random horizontal flip (the same for A and B)")
    loader_threads: int = _int(0, "native data-loader threads (0 = one per core; on a CPU run a quarter of the cores, at least one, leaving the rest to the step)", 0, 256)
    synthetic_count: int = _int(400, "training pairs of the built-in synthetic dataset (val/test get a quarter each)", 1, 100_000)
    # --- models -------------------------------------------------------------
    netG: str = _opt("unet_256", "generator: unet_<size> (unet_128, unet_256, ...; size = 2^downsamplings) or resnet_6blocks / resnet_9blocks")
    ngf: int = _int(64, "generator filters in the first conv layer", 1, 1024)
    n_layers_D: int = _int(3, "PatchGAN conv layers: 0 = 1x1 PixelGAN, 1 = 16x16, 3 = 70x70, 5 = 286x286 receptive field", 0, 8)
    ndf: int = _int(64, "discriminator filters in the first conv layer", 1, 1024)
    num_D: int = _int(1, "PatchGANs at full, 1/2, 1/4, ... scale (pix2pixHD's multi-scale D; 3x3 average pooling with stride 2 between scales; the GAN loss is summed over them); 1 = the paper's single PatchGAN", 1, 8)
    norm: str = _opt("instance", "normalisation in G and D: instance | batch | none")
    padding: str = _opt("zero", "conv padding: zero (as the paper) | reflect (fewer border artifacts)")
    padding_D: str = _opt("same", "discriminator conv padding: same (as --padding) | zero | reflect; the reference pads its discriminator with zeros beside any generator")
    upsample: str = _opt("transposed", "generator upsampling: transposed conv (as the paper) | nearest / bilinear resize + 3x3 conv (no checkerboard)")
    dropout: bool = _opt(True, "dropout in the generator's decoder (the paper's noise source)")
    init_type: str = _opt("normal", "weight init: normal | xavier | kaiming | orthogonal")
    init_gain: float = _num(0.02, "scale of the weight init", 0, 10, lo_open=True)
    # --- losses -------------------------------------------------------------
    gan_mode: str = _opt("vanilla", "GAN loss: vanilla (BCE) | lsgan | hinge | none (the L1-only baseline)")
    lambda_l1: float = _num(100.0, "weight of the L1 term in G's loss", 0, 1e6)
    lambda_feat: float = _num(0.0, "weight of pix2pixHD's feature-matching loss in G's loss: L1 between D's intermediate features on the real and the fake pair (layer weights 4/(n_layers_D+1), 1/num_D per scale); logged in loss_G_GAN; 0 = off (pix2pixHD uses 10)", 0, 1e6)
    real_label: float = _num(1.0, "target for real patches; < 1 is one-sided label smoothing", 0, 1)
    real_label_min: float = _num(-1.0, "if >= 0, real targets are drawn uniformly from [real_label_min, real_label] each step", -1, 1)
    label_flip_prob: float = _num(0.0, "probability of swapping real and fake targets in D's loss", 0, 1)
    instance_noise: float = _num(0.0, "std of Gaussian noise added to D's inputs at step 0, decaying linearly to 0", 0, 10)
    instance_noise_steps: int = _int(0, "steps over which instance noise decays (0 = the whole run)", 0, MAX_STEPS)
    # --- optimisation -------------------------------------------------------
    lr: float = _num(2e-4, "Adam learning rate", 0, 1, lo_open=True)
    beta1: float = _num(0.5, "Adam beta1", 0, 1, hi_open=True)
    beta2: float = _num(0.999, "Adam beta2", 0, 1, hi_open=True)
    batch_size: int = _int(1, "batch size", 1, 4096)
    epochs: int = _int(100, "epochs at the initial learning rate", 0, MAX_EPOCHS)
    epochs_decay: int = _int(100, "epochs of learning-rate decay after that", 0, MAX_EPOCHS)
    lr_policy: str = _opt("linear", "learning-rate schedule: linear (decay to 0) | step | cosine")
    lr_step_epochs: int = _int(50, "step schedule: multiply the LR by 0.1 every this many epochs", 1, MAX_EPOCHS)
    max_steps: int = _int(0, "stop after this many steps (0 = the whole schedule)", 0, MAX_STEPS)
    # --- run ----------------------------------------------------------------
    name: str = _opt("experiment", "run name: outputs go to <output_dir>/<name>")
    output_dir: str = _opt("runs", "folder for runs (checkpoints, samples, logs, plots)")
    seed: int = _int(0, "random seed (models, data order, jitter, dropout)", 0, MAX_SEED)
    device: str = _opt("auto", "auto (cuda, else mps, else cpu) | cpu | cuda | mps (Apple silicon: the eager backend; untested on real hardware)")
    backend: str = _opt("auto", "auto (fast on CUDA, eager on a CPU and MPS) | eager (the reference step) | fast (on CUDA fused kernels + CUDA graph; on a CPU channels_last, batched D, fused Adam: train/cpu.py)")
    precision: str = _opt("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16")
    checkpoint_activations: bool = _opt(False, "recompute G's and D's activations block by block in the backward pass (torch.utils.checkpoint): less memory at high resolution, about one more forward pass of time; the same gradients")
    compile: bool = _opt(True, "fast backend: torch.compile the models")
    cuda_graph: bool = _opt(True, "fast backend: capture the whole step in one CUDA graph after warm-up")
    cudnn_benchmark: bool = _opt(True, "fast backend: let cuDNN time its convolution algorithms during warm-up (before capture)")
    pad_channels: bool = _opt(False, "fast backend: run convs whose input or output channels are not a multiple of 8 (the 3/6-channel image convs, the 3-channel output, the 1-channel logits) zero-padded to 8 (tensor cores; same results and checkpoints)")
    fused_pad: bool = _opt(False, "fast backend: reflect pads (--padding reflect; the ResNet's 7x7 convs) by the package's kernels, fused into the norm+activation that feeds the pad directly (same results and checkpoints)")
    cpu_channels_last: bool = _opt(True, "fast backend on a CPU: models and inputs in channels_last (oneDNN's convolutions)")
    cpu_compile: bool = _opt(False, "fast backend on a CPU: torch.compile G and D with inductor's C++ backend (a C++ compiler; 1-4 minutes of compiling measured on a loaded 2-core CPU)")
    conv_impl: str = _opt("cudnn", "fast backend: cudnn (cuDNN conv + fused norm kernel) | triton (each Conv2d followed by instance norm runs as one conv with the norm fused in, deferred into the next conv where possible; same results and checkpoints)")
    log_every: int = _int(50, "steps between reading losses back for the log and progress bar", 1, MAX_STEPS)
    sample_every: int = _int(500, "steps between sample grids (input | output | target)", 1, MAX_STEPS)
    save_every: int = _int(5, "epochs between kept checkpoints (latest.pt is written every epoch)", 1, MAX_EPOCHS)
    eval_every: int = _int(0, "epochs between validation runs (0 = at the end only)", 0, MAX_EPOCHS)
    validation: bool = _opt(True, "score the val split at the end (and every --eval-every epochs); --no-validation skips it")
    val_runtime: str = _opt("auto", "how validation runs the generator: auto | eager | compiled | onnx (as test --runtime)")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        cfg = cls(**{k: _coerce(cls, k, v) for k, v in d.items()})
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Load a YAML or JSON file; keys may use dashes or underscores."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text = p.read_text()
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # any parser error is the user's file
            reason = " ".join(str(e).split())
            raise ConfigError(f"cannot parse config file {p}: {reason}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of option: value")
        bad = next((k for k in data if not isinstance(k, str)), None)
        if bad is not None:
            raise ConfigError(f"config file {p}: option names are words, got {bad!r}")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        data.update(overrides)
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        for f in fields(self):
            if isinstance(f.default, str) and not isinstance(getattr(self, f.name), str):
                raise ConfigError(f"--{_flag(f.name)} must be text, got {getattr(self, f.name)!r}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{_flag(name)}: {value!r} is not one of {', '.join(allowed)}")
        if not (self.netG.startswith("unet_") or self.netG in ("resnet_6blocks", "resnet_9blocks")):
            raise ConfigError(f"--netG: {self.netG!r} is not unet_<size>, resnet_6blocks or resnet_9blocks")
        if self.netG.startswith("unet_"):
            size = self.netG[5:]
            if not size.isdigit() or int(size) < 4 or int(size) & (int(size) - 1):
                raise ConfigError(f"--netG: {self.netG!r}: the size must be a power of two, e.g. unet_256")
        for f in fields(self):
            if "range" in f.metadata:
                f.metadata["range"].check(f"--{_flag(f.name)}", getattr(self, f.name))
        if self.name in ("", ".", "..") or any(c in self.name for c in "/\\\0"):
            raise ConfigError(f"--name must be one folder name (no '/', '..' or empty), got {self.name!r}")
        if self.epochs + self.epochs_decay < 1 and self.max_steps < 1:
            raise ConfigError("--epochs plus --epochs-decay must be at least 1")
        if "crop" in self.preprocess and self.preprocess != "crop" and self.crop_size > self.load_size:
            raise ConfigError(f"--crop-size {self.crop_size} is larger than --load-size {self.load_size}")
        if self.preprocess == "resize_and_crop" and self.crop_hw[0] > self.load_hw[0]:
            raise ConfigError(f"the crop height {self.crop_hw[0]} (--crop-height) is larger than the load height "
                              f"{self.load_hw[0]} (--load-height)")
        if self.real_label_min >= 0 and self.real_label_min > self.real_label:
            raise ConfigError("--real-label-min must not exceed --real-label")
        if self.gan_mode == "hinge" and (self.real_label != 1.0 or self.real_label_min >= 0):
            raise ConfigError("--real-label / --real-label-min (label smoothing) have no meaning with --gan-mode hinge")
        if self.gan_mode == "none" and self.lambda_feat > 0:
            raise ConfigError("--lambda-feat matches the discriminator's features: --gan-mode none trains no discriminator")
        if self.gan_mode == "none" and self.lambda_l1 == 0:
            raise ConfigError("--gan-mode none with --lambda-l1 0 leaves nothing to train")

    @property
    def discriminator_padding(self) -> str:
        """zero | reflect: --padding-D, or G's --padding where it is 'same'."""
        return self.padding if self.padding_D == "same" else self.padding_D

    @property
    def crop_hw(self) -> tuple[int, int]:
        """(height, width) of the training crops."""
        return (self.crop_height or self.crop_size, self.crop_size)

    @property
    def load_hw(self) -> tuple[int, int]:
        """(height, width) the training images are resized to before cropping (resize_and_crop)."""
        if self.load_height:
            return (self.load_height, self.load_size)
        return (max(1, round(self.load_size * self.crop_hw[0] / self.crop_size)), self.load_size)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay


def _flag(name: str) -> str:
    return name.replace("_", "-")



def _coerce(cls: type, name: str, value: Any) -> Any:
    """Coerce a config-file value to the field's type, or raise ConfigError."""
    default = next(f.default for f in fields(cls) if f.name == name)
    kind = type(default)
    try:
        if kind is str:
            if not isinstance(value, str):
                raise TypeError(value)
            return value
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(value)
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{_flag(name)}: cannot read {value!r} as {kind.__name__}") from None


# Used by `train` on a machine without a GPU when the user gives no dataset and
# no model size: the paper's configuration takes ~2 s/step on 2 CPU cores, so
# the first run uses small images and a narrow network to show learning within
# minutes. Any flag the user passes wins over these.
CPU_QUICKSTART: dict[str, Any] = {
    "load_size": 72,
    "crop_size": 64,
    "netG": "unet_64",
    "ngf": 32,
    "ndf": 32,
    "batch_size": 4,
    "synthetic_count": 200,
    "epochs": 6,
    "epochs_decay": 4,
    "log_every": 10,
    "sample_every": 100,
    "save_every": 5,
}
