"""A small, complete CycleGAN training loop with pix2pix-fast's fused layers.

The networks and the loss are the CycleGAN reference implementation's own
(ResNet generators, PatchGAN discriminators, an LSGAN criterion): ordinary
PyTorch modules that know nothing about the fused layers.  Those come in
with three lines:

    from pix2pix_fast.nn import fuse
    G_AB, G_BA, D_A, D_B = (fuse(net) for net in (G_AB, G_BA, D_A, D_B))
    criterion_gan = fuse(criterion_gan)

Data: unpaired label maps (domain A) and facade renderings (domain B) drawn
from the built-in synthetic facades (``pix2pix_fast.data.synthetic``).

    python examples/cyclegan_fused.py                 # 200 steps at 64 px: 275 s measured on 2 busy CPU cores
    python examples/cyclegan_fused.py --steps 2000 --size 128 --ngf 32
    python examples/cyclegan_fused.py --no-fuse       # the same run without fusing

On a GPU the fused layers run as Triton kernels; on a CPU they run their
PyTorch reference, so the point there is that the loop works unchanged.
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from torch import nn

from pix2pix_fast.data.synthetic import render_pair
from pix2pix_fast.interop.reference_nets import NLayerDiscriminator, ResnetGenerator, get_norm_layer
from pix2pix_fast.nn import explain_fuse, fuse


# --------------------------------------------------------------- the model
# The CycleGAN reference implementation's own networks and criterion: its layout
# (nested nn.Sequential, in-place ReLUs, reflection pads as modules, conv biases
# in front of instance norms), the networks from pix2pix_fast.interop.reference_nets
# (written from its structure, so its latest_net_G.pth loads into them).
INSTANCE = get_norm_layer("instance")


class GANLoss(nn.Module):
    """LSGAN criterion with its target labels as buffers."""

    def __init__(self, gan_mode: str = "lsgan", target_real_label: float = 1.0, target_fake_label: float = 0.0):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.gan_mode = gan_mode
        self.loss = nn.MSELoss() if gan_mode == "lsgan" else nn.BCEWithLogitsLoss()

    def forward(self, prediction, target_is_real):
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.expand_as(prediction))


# ---------------------------------------------------------------- the data
def unpaired_batch(rng: np.random.Generator, batch: int, size: int):
    """A label maps and B renderings of *different* facades, as float tensors in [-1, 1]."""
    a = np.stack([render_pair(rng, size)[0] for _ in range(batch)])
    b = np.stack([render_pair(rng, size)[1] for _ in range(batch)])

    def to_tensor(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    return to_tensor(a), to_tensor(b)


# ------------------------------------------------------------ the training
def train(steps: int = 200, size: int = 64, ngf: int = 16, n_blocks: int = 6, batch: int = 1,
          fused: bool = True, seed: int = 0, lr: float = 2e-4, lambda_cycle: float = 10.0,
          lambda_identity: float = 0.5, log_every: int = 20, verbose: bool = True) -> dict:
    """Train a CycleGAN for `steps` steps; returns {"losses": [per-step dicts], "fused": counts}."""
    torch.manual_seed(seed)
    G_AB, G_BA = (ResnetGenerator(3, 3, ngf, INSTANCE, n_blocks=n_blocks) for _ in range(2))
    D_A, D_B = (NLayerDiscriminator(3, ngf, n_layers=3, norm_layer=INSTANCE) for _ in range(2))
    criterion_gan = GANLoss("lsgan")
    counts = {}
    if fused:
        counts = {"G": explain_fuse(G_AB).counts(), "D": explain_fuse(D_A).counts()}
        # The three lines: the rest of the loop is unchanged.
        G_AB, G_BA, D_A, D_B = (fuse(net) for net in (G_AB, G_BA, D_A, D_B))
        criterion_gan = fuse(criterion_gan)
    l1 = nn.L1Loss()
    opt_G = torch.optim.Adam(itertools.chain(G_AB.parameters(), G_BA.parameters()), lr=lr, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(itertools.chain(D_A.parameters(), D_B.parameters()), lr=lr, betas=(0.5, 0.999))
    rng = np.random.default_rng(seed)
    history = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        real_A, real_B = unpaired_batch(rng, batch, size)

        # Generators: fool both discriminators, reconstruct both ways, keep identity.
        fake_B, fake_A = G_AB(real_A), G_BA(real_B)
        for p in itertools.chain(D_A.parameters(), D_B.parameters()):
            p.requires_grad_(False)
        loss_gan = criterion_gan(D_B(fake_B), True) + criterion_gan(D_A(fake_A), True)
        loss_cycle = l1(G_BA(fake_B), real_A) + l1(G_AB(fake_A), real_B)
        loss_idt = l1(G_AB(real_B), real_B) + l1(G_BA(real_A), real_A)
        loss_G = loss_gan + lambda_cycle * loss_cycle + lambda_cycle * lambda_identity * loss_idt
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()

        # Discriminators: real vs (detached) fake.
        for p in itertools.chain(D_A.parameters(), D_B.parameters()):
            p.requires_grad_(True)
        loss_D = 0.5 * (criterion_gan(D_B(real_B), True) + criterion_gan(D_B(fake_B.detach()), False)
                        + criterion_gan(D_A(real_A), True) + criterion_gan(D_A(fake_A.detach()), False))
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()

        losses = {"G_gan": loss_gan, "cycle": loss_cycle, "idt": loss_idt, "D": loss_D}
        record = {k: v.item() for k, v in losses.items()}
        if not all(np.isfinite(v) for v in record.values()):
            raise FloatingPointError(f"non-finite loss at step {step}: {record}")
        history.append(record)
        if verbose and (step % log_every == 0 or step == steps):
            rate = step / (time.perf_counter() - start)
            print(f"step {step:5d}  " + "  ".join(f"{k}={v:.3f}" for k, v in record.items()) + f"  ({rate:.1f} it/s)")
    return {"losses": history, "fused": counts}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, default=64, help="image size (a multiple of 4)")
    p.add_argument("--ngf", type=int, default=16, help="generator and discriminator width")
    p.add_argument("--n-blocks", type=int, default=6, help="residual blocks per generator")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fuse", dest="fused", action="store_false", help="train the unfused models")
    args = p.parse_args(argv)
    result = train(steps=args.steps, size=args.size, ngf=args.ngf, n_blocks=args.n_blocks, batch=args.batch_size,
                   fused=args.fused, seed=args.seed)
    if args.fused:
        g, d = result["fused"]["G"], result["fused"]["D"]
        print(f"fused per generator: {g['InstanceNormAct']} InstanceNormAct ({g['folded_acts']} with their ReLU, "
              f"{g['folded_pads']} with the next reflect pad), {g['ReflectPad2d']} ReflectPad2d; "
              f"per discriminator: {d['InstanceNormAct']} InstanceNormAct")


if __name__ == "__main__":
    main()
