"""The fast step computes the same training as the eager reference step.

On a CPU the fast step runs with graph and compile off (fused layers and the
fused loss dispatch to their references there), so from one seed its losses
must follow the eager step's. The GPU version checks the real path: compiled,
bf16, one CUDA graph.
"""
import pytest
import torch

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.train.eager import EagerStep
from pix2pix_fast.train.fast import FastStep
from pix2pix_fast.train.trainer import build_models


def make(cfg, fast, device="cpu", **fast_kw):
    G, D, opt_G, opt_D = build_models(cfg, "fast" if fast else "eager", torch.device(device))
    if fast:
        return FastStep(cfg, G, D, opt_G, opt_D, fast_kw.pop("autocast", None), **fast_kw), G
    return EagerStep(cfg, G, D, opt_G, opt_D, None), G


def batches(cfg, n, device="cpu"):
    g = torch.Generator().manual_seed(7)
    shape = (cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)
    return [((torch.rand(shape, generator=g) * 2 - 1).to(device), (torch.rand(shape, generator=g) * 2 - 1).to(device))
            for _ in range(n)]


@pytest.mark.parametrize("norm,gan_mode", [("instance", "vanilla"), ("batch", "lsgan"), ("none", "hinge")])
def test_fast_step_follows_eager_step_on_cpu(norm, gan_mode):
    cfg = TrainConfig(netG="unet_32", ngf=8, ndf=8, crop_size=32, load_size=32, batch_size=2, norm=norm,
                      gan_mode=gan_mode)
    eager, G_e = make(cfg, fast=False)
    fast, G_f = make(cfg, fast=True, use_graph=False, compile=False)
    assert G_e.state_dict().keys() == G_f.state_dict().keys()
    for A, B in batches(cfg, 4):
        torch.manual_seed(123)  # same dropout masks in both
        le = eager(A, B)
        torch.manual_seed(123)
        lf = fast(A, B)
        torch.testing.assert_close(lf, le, rtol=2e-4, atol=1e-5)
    # Compare what the trained generators compute, not raw parameters: a conv
    # bias feeding instance norm has a true gradient of zero, so Adam turns
    # rounding noise into +-lr steps there, which the norm then removes.
    G_e.eval(), G_f.eval()
    x = batches(cfg, 1)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(G_f(x), G_e(x), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_fast_step_cuda_graph_follows_eager_step():
    """Compiled + bf16 + CUDA graph against the eager fp32 step: the running mean
    of the L1 term over the first steps agrees (bf16 noise, not a different training)."""
    cfg = TrainConfig(netG="unet_64", ngf=32, ndf=32, crop_size=64, load_size=64, batch_size=4)
    eager, _ = make(cfg, fast=False, device="cuda")
    fast, _ = make(cfg, fast=True, device="cuda", autocast=torch.bfloat16)
    data = batches(cfg, 8, device="cuda")
    l1_e, l1_f = [], []
    for i in range(200):
        A, B = data[i % len(data)]
        l1_e.append(eager(A, B)[2].item())
        l1_f.append(fast(A, B)[2].item())
    assert fast.graph is not None  # the graph really was captured and replayed
    mean_e, mean_f = sum(l1_e[-50:]) / 50, sum(l1_f[-50:]) / 50
    assert abs(mean_f - mean_e) < 0.1 * mean_e, (mean_e, mean_f)
    assert l1_f[-1] < 0.7 * l1_f[0]  # it learns
