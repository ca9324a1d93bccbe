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
