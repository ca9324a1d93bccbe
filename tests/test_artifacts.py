import math

import pytest
import torch

from pix2pix_fast.eval import artifacts


def _smooth(n, h, w, seed=0):
    """Smooth test images in [-0.8, 0.8]: a few low-frequency sinusoids plus a ramp."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(h, 1)
    xx = torch.linspace(0, 1, w).view(1, w)
    out = torch.zeros(n, 3, h, w)
    for _ in range(4):
        fy, fx, phase = torch.rand(3, n, 3, 1, 1, generator=g) * torch.tensor([3.0, 3.0, 6.28]).view(3, 1, 1, 1, 1)
        out += torch.sin(2 * math.pi * (fy * yy + fx * xx) + phase) / 4
    return 0.8 * torch.tanh(out + 0.3 * (yy + xx))


def _checker(h, w, period=2):
    i = torch.arange(h).view(h, 1) // (period // 2)
    j = torch.arange(w).view(1, w) // (period // 2)
    return ((i + j) % 2).float() * 2 - 1


def _noise(shape, std, seed=1):
    return std * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h,w", [(64, 64), (48, 80), (37, 53)])
def test_checkerboard_detects_period_2_pattern(h, w):
    clean = _smooth(3, h, w)
    scores_clean = artifacts.checkerboard_score(clean)
    scores_art = artifacts.checkerboard_score(clean + 0.03 * _checker(h, w))
    assert scores_clean.shape == (3,)
    assert (scores_clean < 2).all()
    assert (scores_art > 50).all()


def test_checkerboard_on_residual():
    target = _smooth(4, 64, 64, seed=2)
    noisy = target + _noise(target.shape, 0.05)
    with_pattern = noisy + 0.02 * _checker(64, 64)
    plain = artifacts.checkerboard_score(noisy, target)
    art = artifacts.checkerboard_score(with_pattern, target)
    assert (plain > 0.3).all() and (plain < 3).all()  # white noise: no spike
    assert (art > 5).all()
    # Exact outputs: 0 / 0 reads as "no artifact".
    torch.testing.assert_close(artifacts.checkerboard_score(target, target), torch.ones(4))


def test_checkerboard_row_and_column_stripes_and_period_4():
    clean = _smooth(2, 64, 64, seed=3)
    cols = torch.tensor([1.0, -1.0]).repeat(32).view(1, 64)  # frequency (0, pi)
    assert (artifacts.checkerboard_score(clean + 0.03 * cols) > 50).all()
    p4 = torch.cos(torch.arange(64) * math.pi / 2).view(64, 1)  # frequency (pi/2, 0)
    assert (artifacts.checkerboard_score(clean + 0.03 * p4) < 2).all()
    assert (artifacts.checkerboard_score(clean + 0.03 * p4, periods=(2, 4)) > 20).all()
    assert (artifacts.checkerboard_score(clean, periods=(2, 4, 8)) < 2).all()


def test_checkerboard_scale_invariant_and_validates():
    x = _smooth(1, 32, 32) + 0.01 * _checker(32, 32)
    torch.testing.assert_close(artifacts.checkerboard_score(10 * x), artifacts.checkerboard_score(x), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="at least 8x8"):
        artifacts.checkerboard_score(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="periods"):
        artifacts.checkerboard_score(x, periods=(1,))


def test_border_score_flags_bad_edges():
    target = _smooth(3, 64, 64)
    out = target + _noise(target.shape, 0.05)
    even = artifacts.border_score(out, target)
    assert ((even > 0.9) & (even < 1.1)).all()
    bad = out.clone()
    bad[..., :, :3] += 0.5  # a corrupted left edge, inside the default 4-px band
    bad[..., -2:, :] -= 0.4  # and bottom rows
    scores = artifacts.border_score(bad, target)
    assert (scores > 3).all()
    torch.testing.assert_close(artifacts.border_score(target, target), torch.ones(3))


def test_border_band_width():
    assert artifacts.default_border(256, 256) == 16
    assert artifacts.default_border(512, 1024) == 32
    assert artifacts.default_border(32, 48) == 2
    assert artifacts.default_border(8, 8) == 1
    target = torch.zeros(1, 1, 40, 40)
    out = torch.full((1, 1, 40, 40), 0.1)
    out[..., :5, :] = 0.3  # a 5-px bad band: its ratio depends on the band width
    wide = artifacts.border_score(out, target, border=5)
    # Band of width 5: 40*40 - 30*30 = 700 px, 200 of them at 0.3 -> mean (200*0.3 + 500*0.1)/700.
    assert wide.item() == pytest.approx((200 * 0.3 + 500 * 0.1) / 700 / 0.1, rel=1e-5)
    with pytest.raises(ValueError, match="no interior"):
        artifacts.border_score(out, target, border=20)


def test_artifact_scores_dict():
    target = _smooth(2, 32, 32)
    out = target + _noise(target.shape, 0.02)
    scores = artifacts.artifact_scores(out + 0.03 * _checker(32, 32), target)
    assert set(scores) == {"border", "checkerboard", "checkerboard_target"}
    assert all(v.shape == (2,) for v in scores.values())
    # The output alone carries the pattern; the target alone does not.
    assert (scores["checkerboard"] > 10).all() and (scores["checkerboard_target"] < 2).all()
