"""TrainConfig: the single source of every training default.

The CLI flags of `pix2pix-fast train` and the optional YAML/JSON config file
are generated from this dataclass, and the resolved config is saved in every
checkpoint, so a checkpoint always knows how to rebuild its models.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Allowed values of the string options; the CLI and `validate` both read these.
CHOICES: dict[str, tuple[str, ...]] = {
    "direction": ("AtoB", "BtoA"),
    "layout": ("auto", "aligned", "paired"),
    "preprocess": ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"),
    "norm": ("instance", "batch", "none"),
    "padding": ("zero", "reflect"),
    "upsample": ("transposed", "nearest", "bilinear"),
    "init_type": ("normal", "xavier", "kaiming", "orthogonal"),
    "gan_mode": ("vanilla", "lsgan", "hinge", "none"),
    "lr_policy": ("linear", "step", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    "backend": ("auto", "eager", "fast"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "conv_impl": ("cudnn", "triton"),
}


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its --help text (and optional CLI metadata)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---------------------------------------------------------------
    dataroot: str = _opt("", "dataset folder (train/ val/ test/ of AB images, or A/ and B/ folders); empty = the built-in synthetic dataset")
    layout: str = _opt("auto", "dataset layout: aligned (A|B side by side), paired (A/ and B/ folders), or auto-detect")
    direction: str = _opt("AtoB", "translation direction: AtoB or BtoA")
    input_nc: int = _opt(3, "channels of the input image (1 = grayscale)")
    output_nc: int = _opt(3, "channels of the output image")
    load_size: int = _opt(286, "images are resized to this size before cropping")
    crop_size: int = _opt(256, "random crop size = the network's input size")
    preprocess: str = _opt("resize_and_crop", "jitter: resize_and_crop | crop | scale_width | scale_width_and_crop | none")
    flip: bool = _opt(True, "random horizontal flip (the same for A and B)")
    loader_threads: int = _opt(0, "native data-loader threads (0 = one per core)")
    synthetic_count: int = _opt(400, "training pairs of the built-in synthetic dataset (val/test get a quarter each)")
    # --- models -------------------------------------------------------------
    netG: str = _opt("unet_256", "generator: unet_<size> (unet_128, unet_256, ...; size = 2^downsamplings) or resnet_6blocks / resnet_9blocks")
    ngf: int = _opt(64, "generator filters in the first conv layer")
    n_layers_D: int = _opt(3, "PatchGAN conv layers: 0 = 1x1 PixelGAN, 1 = 16x16, 3 = 70x70, 5 = 286x286 receptive field")
    ndf: int = _opt(64, "discriminator filters in the first conv layer")
    norm: str = _opt("instance", "normalisation in G and D: instance | batch | none")
    padding: str = _opt("zero", "conv padding: zero (as the paper) | reflect (fewer border artifacts)")
    upsample: str = _opt("transposed", "generator upsampling: transposed conv (as the paper) | nearest / bilinear resize + 3x3 conv (no checkerboard)")
    dropout: bool = _opt(True, "dropout in the generator's decoder (the paper's noise source)")
    init_type: str = _opt("normal", "weight init: normal | xavier | kaiming | orthogonal")
    init_gain: float = _opt(0.02, "scale of the weight init")
    # --- losses -------------------------------------------------------------
    gan_mode: str = _opt("vanilla", "GAN loss: vanilla (BCE) | lsgan | hinge | none (the L1-only baseline)")
    lambda_l1: float = _opt(100.0, "weight of the L1 term in G's loss")
    real_label: float = _opt(1.0, "target for real patches; < 1 is one-sided label smoothing")
    real_label_min: float = _opt(-1.0, "if >= 0, real targets are drawn uniformly from [real_label_min, real_label] each step")
    label_flip_prob: float = _opt(0.0, "probability of swapping real and fake targets in D's loss")
    instance_noise: float = _opt(0.0, "std of Gaussian noise added to D's inputs at step 0, decaying linearly to 0")
    instance_noise_steps: int = _opt(0, "steps over which instance noise decays (0 = the whole run)")
    # --- optimisation -------------------------------------------------------
    lr: float = _opt(2e-4, "Adam learning rate")
    beta1: float = _opt(0.5, "Adam beta1")
    beta2: float = _opt(0.999, "Adam beta2")
    batch_size: int = _opt(1, "batch size")
    epochs: int = _opt(100, "epochs at the initial learning rate")
    epochs_decay: int = _opt(100, "epochs of learning-rate decay after that")
    lr_policy: str = _opt("linear", "learning-rate schedule: linear (decay to 0) | step | cosine")
    lr_step_epochs: int = _opt(50, "step schedule: multiply the LR by 0.1 every this many epochs")
    max_steps: int = _opt(0, "stop after this many steps (0 = the whole schedule)")
    # --- run ----------------------------------------------------------------
    name: str = _opt("experiment", "run name: outputs go to <output_dir>/<name>")
    output_dir: str = _opt("runs", "folder for runs (checkpoints, samples, logs, plots)")
    seed: int = _opt(0, "random seed (models, data order, jitter, dropout)")
    device: str = _opt("auto", "auto | cpu | cuda")
    backend: str = _opt("auto", "auto (fast on CUDA, eager elsewhere) | eager (the reference step) | fast (fused kernels + CUDA graph)")
    precision: str = _opt("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16")
    compile: bool = _opt(True, "fast backend: torch.compile the models")
    cuda_graph: bool = _opt(True, "fast backend: capture the whole step in one CUDA graph after warm-up")
    cudnn_benchmark: bool = _opt(True, "fast backend: let cuDNN time its convolution algorithms during warm-up (before capture)")
    pad_channels: bool = _opt(False, "fast backend: run convs whose input or output channels are not a multiple of 8 (the 3/6-channel image convs, the 3-channel output, the 1-channel logits) zero-padded to 8 (tensor cores; same results and checkpoints)")
    fused_pad: bool = _opt(False, "fast backend: reflect pads (--padding reflect; the ResNet's 7x7 convs) by the package's kernels, fused into the norm+activation that feeds the pad directly (same results and checkpoints)")
    conv_impl: str = _opt("cudnn", "fast backend: cudnn (cuDNN conv + fused norm kernel) | triton (each Conv2d followed by instance norm runs as one conv with the norm fused in, deferred into the next conv where possible; same results and checkpoints)")
    log_every: int = _opt(50, "steps between reading losses back for the log and progress bar")
    sample_every: int = _opt(500, "steps between sample grids (input | output | target)")
    save_every: int = _opt(5, "epochs between kept checkpoints (latest.pt is written every epoch)")
    eval_every: int = _opt(0, "epochs between validation runs (0 = at the end only)")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
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
        data = {k.replace("-", "_"): v for k, v in data.items()}
        data.update(overrides)
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
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
        for name in ("input_nc", "output_nc", "load_size", "crop_size", "ngf", "ndf", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "epochs_decay", "max_steps", "n_layers_D", "loader_threads", "eval_every", "instance_noise_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("log_every", "sample_every", "save_every", "lr_step_epochs", "synthetic_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.epochs + self.epochs_decay < 1 and self.max_steps < 1:
            raise ConfigError("--epochs plus --epochs-decay must be at least 1")
        if "crop" in self.preprocess and self.preprocess != "crop" and self.crop_size > self.load_size:
            raise ConfigError(f"--crop-size {self.crop_size} is larger than --load-size {self.load_size}")
        if not 0.0 <= self.label_flip_prob <= 1.0:
            raise ConfigError(f"--label-flip-prob must be in [0, 1], got {self.label_flip_prob}")
        if self.real_label_min >= 0 and self.real_label_min > self.real_label:
            raise ConfigError("--real-label-min must not exceed --real-label")
        if self.lr <= 0 or self.instance_noise < 0 or self.lambda_l1 < 0:
            raise ConfigError("--lr must be > 0; --instance-noise and --lambda-l1 must be >= 0")
        if self.gan_mode == "hinge" and (self.real_label != 1.0 or self.real_label_min >= 0):
            raise ConfigError("--real-label / --real-label-min (label smoothing) have no meaning with --gan-mode hinge")
        if self.gan_mode == "none" and self.lambda_l1 == 0:
            raise ConfigError("--gan-mode none with --lambda-l1 0 leaves nothing to train")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay


class ConfigError(ValueError):
    """A bad option or config file; the CLI prints it as one line."""


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Coerce a config-file value to the field's type, or raise ConfigError."""
    default = next(f.default for f in fields(cls) if f.name == name)
    kind = type(default)
    try:
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
