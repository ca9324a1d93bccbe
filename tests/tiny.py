"""Tiny configurations and checkpoints the tests share: small enough for CI's two cores."""
from __future__ import annotations

import torch

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.models import build_discriminator, build_generator

MODEL = {"netG": "unet_32", "ngf": 8, "ndf": 8, "crop_size": 32, "load_size": 32}


def tiny_config(**kw) -> TrainConfig:
    """The tiny model (U-Net-32, 8 filters, a one-layer PatchGAN), no data."""
    return TrainConfig(**{**MODEL, "n_layers_D": 1, "synthetic_count": 4, **kw})


def tiny_run(root, out, **kw) -> TrainConfig:
    """A tiny training run on the dataset at `root`, written to `out`/run: one epoch + one of decay."""
    return TrainConfig(**{
        **MODEL, "dataroot": str(root), "output_dir": str(out), "name": "run", "load_size": 36, "batch_size": 2,
        "epochs": 1, "epochs_decay": 1, "log_every": 1, "sample_every": 1000, "save_every": 100,
        "loader_threads": 1, **kw})


def save_tiny_checkpoint(path, cfg: TrainConfig | None = None, *, seed: int = 0, G_state=None, step: int = 1,
                         epoch: int = 1) -> torch.nn.Module:
    """A checkpoint of freshly initialised models (seeded), as the trainer would write one; returns G."""
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    G, D = build_generator(cfg), build_discriminator(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "pix2pix-fast-checkpoint", "version": 1, "config": cfg.to_dict(),
                "G": G_state if G_state is not None else G.state_dict(), "D": D.state_dict(),
                "step": step, "epoch": epoch}, path)
    return G
