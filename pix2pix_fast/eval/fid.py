"""FID and KID between two sets of images, from FID-Inception pool features.

* FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to
  the two feature sets,
      |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
  The trace term is computed without a general matrix square root:
  tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), where S1^(1/2)
  comes from a symmetric eigendecomposition; the middle matrix is symmetric
  PSD, so the result is real and stable even for the rank-deficient
  covariances of small sets (FID of N < 2049 images is biased upwards; compare
  FIDs only at equal N).
* KID (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets (mean and std
  reported). Unbiased, so it is usable on small sets and can be slightly
  negative when the sets match.

All statistics in float64 NumPy (SciPy is not needed).
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch

from pix2pix_fast.eval.inception import (
    FEATURE_DIM,
    FIDInceptionV3,
    InceptionWeightsError,
    MissingWeightsError,
    load_inception,
)

__all__ = [
    "feature_statistics", "frechet_distance", "kid", "InceptionFeatures", "fid_kid_from_features",
    "MissingWeightsError", "InceptionWeightsError",
]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) (N - 1 normalisation, as FID uses) of (N, d) features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N, d) features with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased polynomial-kernel MMD^2.

    Each subset draws min(subset_size, N1, N2) rows of each set without
    replacement (a fixed seed keeps it reproducible).
    """
    x_all = np.asarray(features1, np.float64)
    y_all = np.asarray(features2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"need (N, d) feature arrays of equal d, got {x_all.shape} and {y_all.shape}")
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(x_all)} and {len(y_all)}")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = sxx + syy - 2 * kxy.mean()
    return float(values.mean()), float(values.std())


def fid_kid_from_features(
    real: np.ndarray, fake: np.ndarray, *, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """{"fid", "kid", "kid_std"} between two (N, d) feature sets."""
    mu1, s1 = feature_statistics(real)
    mu2, s2 = feature_statistics(fake)
    k, k_std = kid(real, fake, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"fid": frechet_distance(mu1, s1, mu2, s2), "kid": k, "kid_std": k_std}


class InceptionFeatures:
    """Collects FID-Inception features of image batches for two sets ("real", "fake").

    Images are (N, C, H, W) float tensors in `value_range` (default [-1, 1]);
    one channel is repeated to three, other channel counts than 1 or 3 are
    refused. Construction raises MissingWeightsError when no weights are
    found (see `pix2pix_fast.eval.inception.find_weights`); pass `network`
    to use a ready module instead (tests use a random one).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        network: FIDInceptionV3 | None = None,
        value_range: tuple[float, float] = (-1.0, 1.0),
        batch_size: int = 32,
    ):
        self.device = torch.device(device)
        self.net = network.eval().to(self.device) if network is not None else load_inception(weights, self.device)
        self.value_range = value_range
        self.batch_size = batch_size
        self._feats: dict[str, list[np.ndarray]] = {"real": [], "fake": []}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) images -> (N, 2048) float64 features."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"FID needs (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
        lo, hi = self.value_range
        out = []
        for chunk in images.split(self.batch_size):
            x = (chunk.to(self.device).float() - lo) / (hi - lo)
            x = x.clamp(0, 1)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            out.append(self.net(x).double().cpu().numpy())
        f = np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))
        return f

    def update(self, images: torch.Tensor, *, real: bool) -> None:
        self._feats["real" if real else "fake"].append(self.features(images))

    def extend(self, batches: Iterable[torch.Tensor], *, real: bool) -> None:
        for b in batches:
            self.update(b, real=real)

    def stacked(self, which: str) -> np.ndarray:
        parts = self._feats[which]
        return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM))

    def compute(self, *, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
        """{"fid", "kid", "kid_std"} between the real and fake images seen so far."""
        return fid_kid_from_features(
            self.stacked("real"), self.stacked("fake"),
            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
        )
