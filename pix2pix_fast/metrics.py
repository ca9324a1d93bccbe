"""Paired image metrics: L1, PSNR and SSIM, batched, on any device.

Every function takes `output` and `target` as float tensors of shape
(N, C, H, W) (or one (C, H, W) image) and returns one value per image, shape
(N,). The images are first mapped to the [0, 1] scale from `value_range`
(default (-1, 1), the generator's tanh range; pass (0, 255) for raw pixel
values), so that:

* `l1`   is the mean absolute error on the [0, 1] scale (0 = identical,
  1 = black vs white everywhere); that is half the error on the [-1, 1]
  scale the generator's L1 loss sees, and 1/255 of the error in pixel units.
* `psnr` is 10 log10(1 / MSE) in dB on the [0, 1] scale (data range 1);
  identical images give +inf.
* `ssim` is the mean SSIM of Wang et al. 2004: an 11-tap Gaussian window with
  sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) covariances, the
  map averaged over the "valid" positions (no padding) and over channels.
  That equals `skimage.metrics.structural_similarity(a, b, data_range=1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  channel_axis=-1)`. Images smaller than the window use the largest odd
  window that fits (skimage refuses them).

Everything runs in float32 (float64 inputs stay float64), whatever the
device; no CPU round trip.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ValueRange = tuple[float, float]

__all__ = ["to_unit", "l1", "psnr", "ssim", "image_metrics", "MetricAccumulator", "METRIC_NAMES"]

METRIC_NAMES = ("l1", "psnr", "ssim")


def to_unit(x: torch.Tensor, value_range: ValueRange = (-1.0, 1.0)) -> torch.Tensor:
    """Map a float (or uint8) tensor from `value_range` to [0, 1] (float32, or float64 if given)."""
    lo, hi = value_range
    if hi <= lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if x.dtype != torch.float64:
        x = x.float()
    return (x - lo) / (hi - lo)


def _pair(output: torch.Tensor, target: torch.Tensor, value_range: ValueRange) -> tuple[torch.Tensor, torch.Tensor]:
    if output.shape != target.shape:
        raise ValueError(f"output and target shapes differ: {tuple(output.shape)} vs {tuple(target.shape)}")
    if output.dim() == 3:
        output, target = output.unsqueeze(0), target.unsqueeze(0)
    if output.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) or (C, H, W) images, got shape {tuple(output.shape)}")
    x, y = to_unit(output, value_range), to_unit(target, value_range)
    if x.dtype != y.dtype:
        x, y = x.double(), y.double()
    return x, y


def l1(output: torch.Tensor, target: torch.Tensor, *, value_range: ValueRange = (-1.0, 1.0)) -> torch.Tensor:
    """Per-image mean absolute error on the [0, 1] scale, shape (N,)."""
    x, y = _pair(output, target, value_range)
    return (x - y).abs().mean(dim=(1, 2, 3))


def psnr(output: torch.Tensor, target: torch.Tensor, *, value_range: ValueRange = (-1.0, 1.0)) -> torch.Tensor:
    """Per-image PSNR in dB with data range 1 on the [0, 1] scale, shape (N,); +inf where identical."""
    x, y = _pair(output, target, value_range)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def ssim(
    output: torch.Tensor,
    target: torch.Tensor,
    *,
    value_range: ValueRange = (-1.0, 1.0),
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image mean SSIM (Gaussian window, valid positions, channel mean), shape (N,)."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number, got {window_size}")
    x, y = _pair(output, target, value_range)
    n, c, h, w = x.shape
    size = min(window_size, h if h % 2 else h - 1, w if w % 2 else w - 1)
    size = max(size, 1)
    g = _gaussian_window(size, sigma, x.dtype, x.device)
    # Separable depthwise filter over the five moment maps at once.
    gh = g.view(1, 1, 1, size).repeat(5 * c, 1, 1, 1)
    gv = g.view(1, 1, size, 1).repeat(5 * c, 1, 1, 1)

    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    moments = F.conv2d(F.conv2d(stack, gh, groups=5 * c), gv, groups=5 * c)
    mx, my, mxx, myy, mxy = moments.split(c, dim=1)
    # Local (co)variances as E[xy] - E[x]E[y], as every SSIM reference does: on
    # the [0, 1] scale the fp32 cancellation error (~1e-7) is far below
    # C2 = 9e-4, so the centred two-pass form would buy nothing here.
    vx = mxx - mx * mx
    vy = myy - my * my
    vxy = mxy - mx * my
    c1 = k1**2
    c2 = k2**2
    smap = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.mean(dim=(1, 2, 3))


def image_metrics(
    output: torch.Tensor, target: torch.Tensor, *, value_range: ValueRange = (-1.0, 1.0)
) -> dict[str, torch.Tensor]:
    """{"l1", "psnr", "ssim"}: per-image tensors of shape (N,)."""
    return {
        "l1": l1(output, target, value_range=value_range),
        "psnr": psnr(output, target, value_range=value_range),
        "ssim": ssim(output, target, value_range=value_range),
    }


class MetricAccumulator:
    """Collects per-image metrics over batches; `means()` and `per_image()` at the end.

    Values stay on the device until read, so updating costs no host sync.
    """

    def __init__(self, value_range: ValueRange = (-1.0, 1.0)):
        self.value_range = value_range
        self._parts: dict[str, list[torch.Tensor]] = {k: [] for k in METRIC_NAMES}

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        values = image_metrics(output, target, value_range=self.value_range)
        for k, v in values.items():
            self._parts[k].append(v.detach())
        return values

    def __len__(self) -> int:
        return sum(int(p.numel()) for p in self._parts["l1"])

    def per_image(self) -> dict[str, list[float]]:
        return {k: torch.cat(p).double().cpu().tolist() if p else [] for k, p in self._parts.items()}

    def means(self) -> dict[str, float]:
        """Mean over images. PSNR is averaged per image (as most papers do); +inf if any image is exact."""
        out = {}
        for k, p in self._parts.items():
            out[k] = float(torch.cat(p).double().mean()) if p else math.nan
        return out
