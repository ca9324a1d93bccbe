"""The fast models' performance levers (pix2pix_fast.models.fast).

Each lever (pad_channels, fused_pad, conv_impl="triton") must leave the
function and the state_dict alone: the model with a lever on gives the same
outputs, input gradient and parameter gradients as the fast model with every
lever off, loaded from the same state_dict, in NCHW and channels_last, on the
PyTorch path and with the Triton kernels under the interpreter. The
structure tests check that each lever does change the layers it targets, so
the equality tests cannot pass by the lever doing nothing.
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from pix2pix_fast.config import TrainConfig
from pix2pix_fast.models import ResnetGenerator, build_discriminator, build_generator
from pix2pix_fast.models.fast import FastBlocks, lever_counts

PAD = dict(pad_channels=True)
FUSED_PAD = dict(fused_pad=True)
TRITON = dict(conv_impl="triton")
ALL = dict(pad_channels=True, fused_pad=True, conv_impl="triton")

# name -> (TrainConfig fields, input channels, input size). Tiny, but each
# lever finds layers to change in each case (test_levers_change_the_tiny_models).
CASES = {
    "unet_reflect": (dict(netG="unet_32", ngf=8, padding="reflect"), 3, 32),
    "resnet_reflect": (dict(netG="resnet_6blocks", ngf=8, padding="reflect", dropout=False), 3, 16),
    "patchgan_zero": (dict(ndf=8, n_layers_D=3), 6, 32),
    "patchgan_reflect": (dict(ndf=8, n_layers_D=3, padding="reflect"), 6, 32),
}


# Tiny models: a second OpenMP thread only adds spin-waits on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def build(case: str, fused: bool = True, **levers) -> nn.Module:
    kw, _, _ = CASES[case]
    cfg = TrainConfig(**kw, **levers)
    if case.startswith("resnet"):
        # One residual block (the config offers 6 or 9): the same layer kinds,
        # a third of the depth, so fp32 rounding stays near 1e-5.
        kw = dict(blocks=FastBlocks.from_config(cfg)) if fused else {}
        return ResnetGenerator(cfg.input_nc, cfg.output_nc, ngf=cfg.ngf, n_blocks=1, norm=cfg.norm,
                               padding=cfg.padding, dropout=cfg.dropout, **kw)
    return (build_discriminator if case.startswith("patchgan") else build_generator)(cfg, fused=fused)


def random_state(model: nn.Module, seed: int) -> dict:
    # Non-trivial weights everywhere, so every parameter shapes the output.
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}


def to_format(t, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return t.to(memory_format=fmt)


def outputs_and_grads(model: nn.Module, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    """[y, dL/dx, dL/dparam...] for L = sum(model(x) * w), in train mode."""
    model.train().zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(0)  # dropout draws
    y = model(x)
    (y * w).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in model.parameters()]


@functools.lru_cache(maxsize=None)
def unmodified(case: str, channels_last: bool):
    """(state_dict, x, w, results) of the fast model with every lever off (PyTorch path)."""
    _, cin, size = CASES[case]
    model = build(case)
    sd = random_state(model, 7)
    model.load_state_dict(sd)
    g = torch.Generator().manual_seed(3)
    x = to_format(torch.randn(2, cin, size, size, generator=g), channels_last)
    model = to_format(model, channels_last)
    with torch.no_grad():
        shape = model(x).shape
    w = torch.randn(shape, generator=g)
    return sd, x, w, outputs_and_grads(model, x, w)


def assert_same(got: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(got) == len(ref)
    # Parameter gradients: atol relative to the largest one, since some are
    # exactly zero (the bias of a conv feeding an instance norm) and only
    # rounding noise remains there.
    scale = max(r.abs().max().item() for r in ref[2:])
    for i, (a, b) in enumerate(zip(got, ref)):
        atol = 1e-5 * (b.abs().max().item() if i < 2 else scale)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)


# The PyTorch path runs every setting; the interpreter the settings that
# launch kernels of their own (pad_channels alone only changes conv shapes).
SETTINGS = [("torch", PAD), ("torch", FUSED_PAD), ("torch", TRITON), ("torch", ALL),
            ("interpret", FUSED_PAD), ("interpret", TRITON), ("interpret", ALL)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "device,levers", SETTINGS, indirect=["device"],
    ids=[f"{d}-{'+'.join(f'{k}={v}' for k, v in lv.items())}" for d, lv in SETTINGS],
)
def test_lever_matches_unmodified(device, levers, case, channels_last):
    sd, x, w, ref = unmodified(case, channels_last)
    model = build(case, **levers)
    model.load_state_dict(sd)
    model = to_format(model, channels_last)
    got = outputs_and_grads(model, x, w)
    assert_same(got, ref)
    if channels_last:
        assert got[0].is_contiguous(memory_format=torch.channels_last)
    else:
        assert got[0].is_contiguous()


# --------------------------------------------------------------------------
# The levers change what they target, and nothing in the state_dict.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_levers_change_the_tiny_models(case):
    with torch.device("meta"):
        assert lever_counts(build(case, **PAD))["pad_in"] == 1  # the image (pair) conv
        fused_pad = lever_counts(build(case, **FUSED_PAD))
        triton = lever_counts(build(case, **TRITON))
        off = build(case)
    if case.endswith("reflect"):
        assert fused_pad["fused_pad"] > 0
    else:  # zero padding: nothing to fuse
        assert sum(fused_pad.values()) == 0
    assert triton["conv_norm_act"] > 0
    if case == "patchgan_zero":
        assert triton["deferred"] == 3  # layers 1 -> 2 -> 3 -> 4, one chain
    assert not any(isinstance(m, nn.ReflectionPad2d) for m in build(case, **FUSED_PAD).modules())
    assert sum(lever_counts(off).values()) == 0


def _count(which: str, **kw) -> dict[str, int]:
    with torch.device("meta"):
        cfg = TrainConfig(**kw)
        return lever_counts((build_generator if which == "G" else build_discriminator)(cfg, fused=True))


def test_lever_counts_paper_models():
    # U-Net-256: the 3-channel first conv and the 3-channel last transposed conv.
    assert _count("G", netG="unet_256", **PAD) == dict(
        pad_in=1, pad_out=1, reflect_pad=0, fused_pad=0, conv_norm_act=0, deferred=0)
    # With reflect padding: the pads of encoder levels 3..8 move into the norm
    # of the level before; levels 1 and 2 follow no norm.
    c = _count("G", netG="unet_256", padding="reflect", **FUSED_PAD)
    assert (c["fused_pad"], c["reflect_pad"]) == (6, 2)
    # conv_norm_act: the six normalised encoder convs (the decoder is transposed).
    assert _count("G", netG="unet_256", **TRITON)["conv_norm_act"] == 6
    # ResNet-9 with the default dropout: only the head's pad fuses (dropout
    # sits between each block's first norm and the second pad).
    c = _count("G", netG="resnet_9blocks", padding="reflect", **FUSED_PAD)
    assert (c["fused_pad"], c["reflect_pad"]) == (1, 19)
    c = _count("G", netG="resnet_9blocks", padding="reflect", dropout=False, **FUSED_PAD)
    assert (c["fused_pad"], c["reflect_pad"]) == (10, 10)
    # 70x70 PatchGAN: the 6-channel first conv, the 1-channel logit conv; the
    # three normalised convs chain into the logit conv.
    c = _count("D", **ALL)
    assert (c["pad_in"], c["pad_out"], c["conv_norm_act"], c["deferred"]) == (1, 1, 4, 3)


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_same_across_levers(case):
    torch.manual_seed(5)
    off = build(case)
    torch.manual_seed(5)
    on = build(case, **ALL)
    sd_off, sd_on = off.state_dict(), on.state_dict()
    assert list(sd_off) == list(sd_on)
    for k in sd_off:  # same shapes and, from the same seed, the same init
        torch.testing.assert_close(sd_on[k], sd_off[k], rtol=0, atol=0)
    reference = build(case, fused=False)
    assert list(reference.state_dict()) == list(sd_on)
    other = random_state(off, 1)
    on.load_state_dict(other)
    off.load_state_dict(on.state_dict())
    reference.load_state_dict(on.state_dict())


def test_levers_only_on_the_fast_model():
    cfg = TrainConfig(netG="unet_32", ngf=8, padding="reflect", **ALL)
    with torch.device("meta"):
        assert sum(lever_counts(build_generator(cfg)).values()) == 0
        assert sum(lever_counts(build_discriminator(cfg)).values()) == 0


def test_bad_conv_impl_raises():
    with torch.device("meta"), pytest.raises(ValueError, match="conv_impl"):
        ResnetGenerator(ngf=8, n_blocks=1, blocks=FastBlocks(conv_impl="cutlass"))


# --------------------------------------------------------------------------
# torch.compile(fullgraph=True), one tiny model per lever.
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "case,levers",
    [("patchgan_zero", PAD), ("patchgan_reflect", FUSED_PAD), ("patchgan_zero", TRITON)],
    ids=["pad_channels", "fused_pad", "triton"],
)
def test_compiled_matches_eager(case, levers):
    sd, x, w, _ = unmodified(case, True)
    model = to_format(build(case, **levers), True)
    model.load_state_dict(sd)
    eager = outputs_and_grads(model, x, w)
    compiled = outputs_and_grads(torch.compile(model, fullgraph=True), x, w)
    assert_same(compiled, eager)
