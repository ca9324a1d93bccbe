"""Two implementations of one training step, judged by what the math fixes.

Two fp32 steps that differ only in summation order (another backend, thread
count, CPU or number of ranks) compute gradients that agree to rounding; Adam
then divides each gradient by its own size, so where a gradient is itself
rounding noise (the exact gradient of a conv bias that feeds an instance
norm is zero) the two updates are +-lr steps of random sign. Over several
steps the models drift apart by an amount that depends on the CPU's kernels,
while computing the same function. So steps are compared one at a time,
from the same state: the losses, every gradient (atol scaled to the largest
one), and the update wherever the gradient is above rounding noise.
"""
from __future__ import annotations

from typing import Mapping

import torch

from pix2pix_fast.checkpoint import load_opt_state

GRAD_RTOL = 1e-4  # fp32 gradients of two summation orders: ~1e-6 of the largest seen; a real bug is O(1)
SIGNAL = 1e-2  # gradients above this fraction of the largest are not rounding noise


def assert_same_gradients(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> float:
    """Every gradient agrees with atol scaled to the model's largest gradient; returns that scale.

    The scale is model-wide: all the computed entries of a gradient whose
    exact value is zero are rounding noise, which only an atol relative to
    the gradients that carry signal can judge.
    """
    assert got.keys() == want.keys()
    scale = max(g.abs().max().item() for g in want.values())
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale, msg=name)
    return scale


def assert_same_updates(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor],
                        grads: Mapping[str, torch.Tensor], scale: float, lr: float) -> None:
    """Adam's updates `got` and `want` (or the weights after steps from equal weights) agree
    wherever the gradient is above rounding noise.

    Where |g| >= SIGNAL x scale, the gradients' difference (<= GRAD_RTOL x
    scale) is at most GRAD_RTOL / SIGNAL = 1% of g. Adam's update
    lr x m_hat / (sqrt(v_hat) + eps) then moves by at most
    lr x (1 - beta1) / sqrt(1 - beta2) x 1% ~ 0.032 lr for the default betas
    (the bias corrections only shrink it). Elsewhere the sign of g is
    rounding noise and Adam turns it into a full +-lr step, so those entries
    are not compared.
    """
    for name, g in grads.items():
        signal = g.abs() >= SIGNAL * scale
        torch.testing.assert_close(got[name][signal], want[name][signal], rtol=0, atol=0.05 * lr, msg=name)


def same_state(dst: tuple, src: tuple) -> None:
    """Copy models and optimizer states (G, D, opt_G, opt_D) from src into dst."""
    for d, s in zip(dst[:2], src[:2]):
        d.load_state_dict(s.state_dict())
    for d, s in zip(dst[2:], src[2:]):
        load_opt_state(d, s.state_dict())


def assert_same_step(step, parts: tuple, ref, ref_parts: tuple, A: torch.Tensor, B: torch.Tensor, lr: float) -> None:
    """`step` and `ref` each take one step on (A, B) from the same state (`parts` and
    `ref_parts`: G, D, opt_G, opt_D; copied here) and the same dropout masks: the same
    losses, and for G and D the same gradients and updates (as the functions above judge)."""
    same_state(parts, ref_parts)
    before = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in ref_parts[:2]]
    torch.manual_seed(123)
    want = ref(A, B)
    torch.manual_seed(123)
    got = step(A, B)
    # atol: a loss is a mean of O(1) terms and can itself be ~0 (hinge's G loss).
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for part, ref_part, start in zip(parts[:2], ref_parts[:2], before):
        grads = {n: p.grad for n, p in ref_part.named_parameters()}
        scale = assert_same_gradients({n: p.grad for n, p in part.named_parameters()}, grads)
        assert_same_updates({n: p.detach() - start[n] for n, p in part.named_parameters()},
                            {n: p.detach() - start[n] for n, p in ref_part.named_parameters()}, grads, scale, lr)
