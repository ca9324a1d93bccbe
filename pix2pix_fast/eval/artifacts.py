"""Diagnostics for the two artifacts pix2pix generators are known for.

Border artifacts (zero padding: the network sees a black frame, so outputs go
wrong near the edges)::

    border_score = mean |output - target| in a band along the edges
                   / mean |output - target| in the interior

About 1 when errors are spread evenly; well above 1 when the edges are worse.
The band is `border` pixels wide; by default 16 px at 256 px, scaled with the
shorter image side (at least 1 px).

Checkerboard artifacts (stride-2 transposed convolutions overlap unevenly and
leave a pattern of period 2, and of 4, 8, ... when stacked)::

    checkerboard_score = spectral energy at the stride-period frequencies
                         / energy of the same number of bins around them

For period p the frequencies are (2 pi a / p, 2 pi b / p), a, b in 0..p-1, not
both 0; for p = 2 that is (pi, 0), (0, pi) and (pi, pi). The signal is the
output, or output - target when a target is given. Reports score the output
alone and the target alone beside it: the residual also holds every fine
texture the target has and the output lacks (pix2pix outputs are smoother
than their targets), which swamps the generator's own pattern. The target's
score says how much period-2 energy real images of the data have. Each channel is centred and
multiplied by a 2-D Hann window before the FFT, so edge discontinuities do not
leak energy along the axes, and a periodic pattern lands in exactly the 3 x 3
bins around its frequency. Those 3 x 3 blocks are the "peak" energy; the
"neighbourhood" is the ring of bins at Chebyshev distance 2..r around each
frequency (r = max(3, min(H, W) // 16)), excluding other peak blocks, scaled
to 9 bins. About 1 for a spectrum without a spike there (noise, natural
images, smooth outputs give <= 1); a visible checkerboard gives 10-1000s.

Both work on batches (N, C, H, W) on any device and return (N,) tensors.
"""
from __future__ import annotations

import math

import torch

__all__ = ["default_border", "border_score", "checkerboard_score", "artifact_scores"]


def default_border(height: int, width: int) -> int:
    """16 px at 256 px, scaled with the shorter side, at least 1."""
    return max(1, round(16 * min(height, width) / 256))


def _batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) or (C, H, W) images, got shape {tuple(x.shape)}")
    return x if x.dtype == torch.float64 else x.float()


def border_score(output: torch.Tensor, target: torch.Tensor, *, border: int | None = None) -> torch.Tensor:
    """Per-image ratio of mean absolute error in the edge band to the interior, shape (N,)."""
    x, y = _batch(output), _batch(target)
    if x.shape != y.shape:
        raise ValueError(f"output and target shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    h, w = x.shape[-2:]
    b = default_border(h, w) if border is None else int(border)
    if b < 1 or 2 * b >= min(h, w):
        raise ValueError(f"border band {b} px leaves no interior in a {h}x{w} image")
    err = (x - y).abs().mean(dim=1)  # (N, H, W)
    total = err.sum(dim=(1, 2))
    inner = err[:, b : h - b, b : w - b].sum(dim=(1, 2))
    n_inner = (h - 2 * b) * (w - 2 * b)
    band_mean = (total - inner) / (h * w - n_inner)
    inner_mean = inner / n_inner
    # A tiny floor so exact outputs score 1 (0/0) rather than NaN.
    eps = 1e-12
    return (band_mean + eps) / (inner_mean + eps)


def _peak_frequencies(h: int, w: int, periods: tuple[int, ...]) -> list[tuple[int, int]]:
    peaks = set()
    for p in periods:
        if p < 2:
            raise ValueError(f"checkerboard periods must be >= 2, got {p}")
        for a in range(p):
            for b in range(p):
                if a or b:
                    peaks.add((round(a * h / p) % h, round(b * w / p) % w))
    peaks.discard((0, 0))
    return sorted(peaks)


def _hann(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Periodic Hann: its DFT has exactly three non-zero bins (-1/4, 1/2, -1/4).
    k = torch.arange(n, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * k / n)).to(dtype=dtype, device=device)


def checkerboard_score(
    output: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    periods: tuple[int, ...] = (2,),
    radius: int | None = None,
) -> torch.Tensor:
    """Per-image spectral peak ratio at the period-`periods` frequencies, shape (N,).

    With `target`, the spectrum is that of output - target.
    """
    x = _batch(output)
    if target is not None:
        y = _batch(target)
        if x.shape != y.shape:
            raise ValueError(f"output and target shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        x = x - y
    n, c, h, w = x.shape
    if min(h, w) < 8:
        raise ValueError(f"checkerboard score needs images of at least 8x8, got {h}x{w}")
    r = max(3, min(h, w) // 16) if radius is None else int(radius)
    if r < 2:
        raise ValueError(f"radius must be >= 2, got {r}")
    x = x - x.mean(dim=(2, 3), keepdim=True)
    win = _hann(h, x.dtype, x.device).view(h, 1) * _hann(w, x.dtype, x.device).view(1, w)
    power = torch.fft.fft2(x * win).abs().square().mean(dim=1)  # (N, H, W)

    peaks = _peak_frequencies(h, w, tuple(periods))
    peak_mask = torch.zeros(h, w, dtype=torch.bool)
    ring_mask = torch.zeros(h, w, dtype=torch.bool)
    d = torch.arange(-r, r + 1)
    for py, px in peaks:
        rows = (py + d) % h
        cols = (px + d) % w
        cheb = torch.maximum(d.abs().view(-1, 1), d.abs().view(1, -1))
        block = torch.zeros(h, w, dtype=torch.bool)
        block[rows.view(-1, 1), cols.view(1, -1)] = cheb <= 1
        ring = torch.zeros(h, w, dtype=torch.bool)
        ring[rows.view(-1, 1), cols.view(1, -1)] = cheb >= 2
        peak_mask |= block
        ring_mask |= ring
    ring_mask &= ~peak_mask
    ring_mask[0, 0] = False  # DC is zero after centring; keep it out of the average
    if not ring_mask.any():
        raise ValueError(f"no neighbourhood bins left for a {h}x{w} image with radius {r}")
    peak_mask, ring_mask = peak_mask.to(x.device), ring_mask.to(x.device)

    flat = power.reshape(n, -1)
    peak_energy = flat[:, peak_mask.flatten()].sum(dim=1)
    bg_per_bin = flat[:, ring_mask.flatten()].mean(dim=1)
    bg_energy = bg_per_bin * int(peak_mask.sum())
    eps = 1e-12 * flat.mean(dim=1) + 1e-30
    return (peak_energy + eps) / (bg_energy + eps)


def artifact_scores(
    output: torch.Tensor, target: torch.Tensor, *, border: int | None = None, periods: tuple[int, ...] = (2,)
) -> dict[str, torch.Tensor]:
    """{"border", "checkerboard", "checkerboard_target"} per image.

    "checkerboard" scores the output alone, "checkerboard_target" the target
    alone (the data's own level, for reference).
    """
    return {
        "border": border_score(output, target, border=border),
        "checkerboard": checkerboard_score(output, periods=periods),
        "checkerboard_target": checkerboard_score(target, periods=periods),
    }
