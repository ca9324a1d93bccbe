import math

import numpy as np
import pytest
import torch

from pix2pix_fast import metrics

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the SSIM/PSNR reference")


def _pair(shape, noise=0.2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    y = (x + noise * torch.randn(shape, generator=g, dtype=dtype)).clamp(-1, 1)
    return x, y


def _hwc01(t):
    return ((t + 1) / 2).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (1, 1, 30, 30), (3, 3, 64, 64)])
def test_ssim_matches_skimage(shape):
    x, y = _pair(shape)
    ours = metrics.ssim(x, y)
    assert ours.shape == (shape[0],)
    for i in range(shape[0]):
        ref = skimage_metrics.structural_similarity(
            _hwc01(x[i]), _hwc01(y[i]), data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, channel_axis=-1,
        )
        assert ours[i].item() == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_ssim_float32_close_to_float64():
    x, y = _pair((2, 3, 41, 29))
    s64 = metrics.ssim(x, y)
    s32 = metrics.ssim(x.float(), y.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-5, atol=1e-6)


def test_ssim_identical_is_one_and_small_images_work():
    x, _ = _pair((2, 3, 16, 16))
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2, dtype=x.dtype))
    tiny, tiny2 = _pair((1, 3, 6, 9))  # smaller than the 11-px window
    value = metrics.ssim(tiny, tiny2)
    assert torch.isfinite(value).all() and value.item() < 1


def test_psnr_matches_skimage_and_value_range():
    x, y = _pair((3, 3, 33, 20))
    ours = metrics.psnr(x, y)
    for i in range(3):
        ref = skimage_metrics.peak_signal_noise_ratio(_hwc01(y[i]), _hwc01(x[i]), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)
    x255, y255 = (x + 1) * 127.5, (y + 1) * 127.5
    torch.testing.assert_close(metrics.psnr(x255, y255, value_range=(0, 255)), ours)
    assert math.isinf(metrics.psnr(x, x)[0].item())


def test_l1_is_on_unit_scale():
    x = -torch.ones(2, 3, 8, 8)
    y = torch.ones(2, 3, 8, 8)
    torch.testing.assert_close(metrics.l1(x, y), torch.ones(2))
    a, b = _pair((2, 3, 17, 19))
    torch.testing.assert_close(metrics.l1(a, b), (a - b).abs().mean(dim=(1, 2, 3)) / 2)
    torch.testing.assert_close(
        metrics.l1((a + 1) * 127.5, (b + 1) * 127.5, value_range=(0, 255)), metrics.l1(a, b)
    )


def test_single_image_and_bad_shapes():
    x, y = _pair((3, 20, 20))
    assert metrics.l1(x, y).shape == (1,)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.l1(x, y[:, :10])
    with pytest.raises(ValueError, match="value_range"):
        metrics.l1(x, y, value_range=(1, 1))


def test_accumulator_means_and_per_image():
    acc = metrics.MetricAccumulator()
    xs, ys = _pair((5, 3, 24, 24), dtype=torch.float32)
    acc.update(xs[:2], ys[:2])
    acc.update(xs[2:], ys[2:])
    assert len(acc) == 5
    per = acc.per_image()
    assert set(per) == {"l1", "psnr", "ssim"} and all(len(v) == 5 for v in per.values())
    direct = metrics.image_metrics(xs, ys)
    means = acc.means()
    for k in per:
        np.testing.assert_allclose(per[k], direct[k].double().numpy(), rtol=1e-6)
        assert means[k] == pytest.approx(float(direct[k].double().mean()), rel=1e-6)
