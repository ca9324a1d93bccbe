"""--checkpoint-activations: G's and D's blocks recompute their activations in the backward pass.

It must be the same training: the same losses, gradients, updates and batch-norm
statistics as without it (dropout draws the same masks in the recompute), on the
eager and on the fast step, while the forward pass keeps fewer bytes for backward.
"""
import pytest
import torch
from same_step import assert_same_gradients, same_state
from test_fast_step import batches, make
from tiny import tiny_config

from pix2pix_fast.models import build_discriminator, build_generator


def saved_bytes(fn, *models) -> int:
    """Bytes of the tensors autograd keeps for backward while `fn` runs (each storage once), without
    the models' weights (kept anyway)."""
    weights = {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("netG", ["unet_32", "resnet_6blocks"])
def test_models_keep_fewer_bytes_for_backward(netG):
    """A bounded-allocation check. Without checkpointing a block keeps its input (for the conv's
    weight gradient), the conv's output (the norm's input) and the norm's output (the activation's
    input); with it only the input, so the forward keeps at most two thirds of the bytes (about half
    here: the strided encoder's outputs are half its inputs' size)."""
    cfg = tiny_config(netG=netG)
    x = torch.randn(2, 3, 32, 32)
    kept = {}
    for on in (False, True):
        c = cfg.replace(checkpoint_activations=on)
        G, D = build_generator(c), build_discriminator(c.replace(num_D=2))
        kept[on] = saved_bytes(lambda: D(torch.cat([x, G(x)], 1)), G, D)
    assert kept[True] < 2 / 3 * kept[False], kept


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("netG,norm", [("unet_32", "instance"), ("resnet_6blocks", "batch")])
def test_a_step_computes_the_same_with_and_without(netG, norm, fast):
    """From the same state, one step with and one without checkpointing: the same losses and
    gradients (the recompute runs the same kernels on the same inputs; compared as
    tests/same_step.py does), the same batch-norm statistics (the recompute does not count a
    batch twice) and the same dropout (U-Net and ResNet blocks with dropout on)."""
    cfg = tiny_config(netG=netG, norm=norm, batch_size=2, dropout=True, num_D=2, lambda_feat=10.0)
    plain, plain_parts = make(cfg, fast=fast)
    ckpt, ckpt_parts = make(cfg.replace(checkpoint_activations=True), fast=fast)
    for A, B in batches(cfg, 2):
        same_state(ckpt_parts, plain_parts)
        torch.manual_seed(5)
        want = plain(A, B)
        torch.manual_seed(5)
        got = ckpt(A, B)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for part_c, part_p in zip(ckpt_parts[:2], plain_parts[:2]):
            assert_same_gradients({n: p.grad for n, p in part_c.named_parameters()},
                                  {n: p.grad for n, p in part_p.named_parameters()})
            for (name, b_c), b_p in zip(part_c.named_buffers(), part_p.buffers()):
                assert torch.equal(b_c, b_p), name


def test_eval_mode_runs_the_blocks_plainly():
    """Checkpointing is for training: in eval mode (inference, export) the blocks run as without it."""
    x = torch.randn(1, 3, 32, 32)
    kept = []
    for on in (False, True):
        torch.manual_seed(0)
        G = build_generator(tiny_config(checkpoint_activations=on)).eval()
        kept.append(saved_bytes(lambda: G(x), G))
    assert kept[0] == kept[1] > 0
