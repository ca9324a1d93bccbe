import numpy as np
import pytest
import torch

from pix2pix_fast.eval import fid, inception

scipy_linalg = pytest.importorskip("scipy.linalg", reason="SciPy is the independent sqrtm reference")


def _gaussian(rng, n, d, shift=0.0, scale=1.0):
    a = rng.normal(size=(d, d)) * scale / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a + shift


def _fid_scipy(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("n,d", [(400, 16), (300, 64), (50, 8)])
def test_frechet_distance_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(d)
    x = _gaussian(rng, n, d)
    y = _gaussian(rng, n, d, shift=0.3, scale=1.5)
    mu1, s1 = fid.feature_statistics(x)
    mu2, s2 = fid.feature_statistics(y)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fid_scipy(x, y), rel=1e-8, abs=1e-8)


def test_frechet_distance_closed_forms():
    d = 5
    eye = np.eye(d)
    # Identical Gaussians: 0. Shifted means only: the squared distance. Scaled
    # isotropic covariances a^2 I vs b^2 I: d (a - b)^2.
    mu = np.arange(d, dtype=float)
    assert fid.frechet_distance(mu, eye, mu, eye) == pytest.approx(0.0, abs=1e-12)
    assert fid.frechet_distance(mu, eye, mu + 2, eye) == pytest.approx(4.0 * d)
    assert fid.frechet_distance(mu, 4 * eye, mu, 9 * eye) == pytest.approx(d * (2 - 3) ** 2)


def test_frechet_distance_rank_deficient_is_finite():
    # Fewer samples than dimensions (the small-validation-set case).
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 0.1
    mu1, s1 = fid.feature_statistics(x)
    mu2, s2 = fid.feature_statistics(y)
    value = fid.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(_fid_scipy(x, y), rel=1e-5)


def _kid_direct(x, y):
    # Unbiased MMD^2 written out as double sums over pairs.
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m = len(x)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 6)), rng.normal(size=(20, 6)) + 0.5
    # One subset of the whole set: no sampling, exactly the unbiased estimate.
    mean, std = fid.kid(x, y, num_subsets=1, subset_size=20)
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_subsets_reproducible_and_separates():
    rng = np.random.default_rng(2)
    x, same, other = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + 1.0
    a = fid.kid(x, other, num_subsets=10, subset_size=30, seed=3)
    assert a == fid.kid(x, other, num_subsets=10, subset_size=30, seed=3)
    near, _ = fid.kid(x, same, num_subsets=10, subset_size=30)
    assert a[0] > 10 * abs(near)
    with pytest.raises(ValueError, match="at least 2"):
        fid.kid(x[:1], same[:1])


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    net = inception.FIDInceptionV3().eval()
    # PyTorch's default init shrinks activations ~6x per layer, down to
    # denormals after 40 layers (slow on CPU and a poor test); He init keeps
    # them O(1).
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


@pytest.fixture(scope="module")
def random_features(random_inception):
    # Inception at 299 px costs ~2 s per image on 2 slow cores: the tests share
    # one forward pass of two images. A pre-hook records what the first conv saw.
    seen = []
    hook = random_inception.Conv2d_1a_3x3.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    feats = fid.InceptionFeatures(network=random_inception, batch_size=1)
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        f = feats.features(images)
    finally:
        hook.remove()
    return images, f, torch.cat(seen)


def test_feature_path_shape_determinism_and_resize(random_inception, random_features):
    images, f1, first_conv_input = random_features
    assert f1.shape == (2, inception.FEATURE_DIM) and f1.dtype == np.float64
    assert np.isfinite(f1).all() and np.abs(f1).sum() > 0
    assert not np.allclose(f1[0], f1[1])
    # The network saw the images resized to 299 x 299 (bilinear, no antialias)
    # and mapped from [0, 1] to [-1, 1].
    expected = torch.nn.functional.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(first_conv_input, expected * 2 - 1, rtol=1e-6, atol=1e-6)
    # Deterministic: the same image again gives bit-identical features.
    feats = fid.InceptionFeatures(network=random_inception, batch_size=1)
    np.testing.assert_array_equal(feats.features(images[1:]), f1[1:])


def test_features_channels_and_value_range():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.mean(dim=(2, 3))

    feats = fid.InceptionFeatures(network=Spy())
    gray = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    feats.features(gray)
    torch.testing.assert_close(seen[-1], ((gray + 1) / 2).expand(-1, 3, -1, -1))
    feats255 = fid.InceptionFeatures(network=Spy(), value_range=(0, 255))
    feats255.features(torch.full((1, 3, 4, 4), 255.0))
    torch.testing.assert_close(seen[-1], torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="1 or 3"):
        feats.features(torch.zeros(1, 4, 32, 32))


def test_architecture_widths(random_inception):
    x = torch.rand(1, 3, 299, 299)
    net = random_inception
    with torch.no_grad():
        x = net.preprocess(x)
        x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x)))
        x = torch.nn.functional.max_pool2d(x, 3, stride=2)
        x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
        x = torch.nn.functional.max_pool2d(x, 3, stride=2)
        widths = []
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            if name == "Mixed_6e":
                for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d"):
                    x = getattr(net, n)(x)
            x = getattr(net, name)(x)
            widths.append(tuple(x.shape[1:]))
    assert widths == [
        (256, 35, 35), (288, 35, 35), (288, 35, 35), (768, 17, 17),
        (768, 17, 17), (1280, 8, 8), (2048, 8, 8), (2048, 8, 8),
    ]
    # torchvision's Inception-v3 has 27,161,264 parameters; without its
    # 1000-class fc (2,049,000) and aux head (3,326,696) that leaves:
    assert sum(p.numel() for p in net.parameters()) == 21_785_568


def test_weights_file_roundtrip(random_inception, random_features, tmp_path):
    path = tmp_path / "inception.pth"
    state = dict(random_inception.state_dict())
    # The published file also holds the 1008-class logits layer and no
    # num_batches_tracked buffers; both must be accepted.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, path)
    loaded = fid.InceptionFeatures(path)
    assert not loaded.net.training
    for k, v in random_inception.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[k], v, rtol=0, atol=0)
    images, f, _ = random_features
    loaded.batch_size = 1
    np.testing.assert_array_equal(loaded.features(images[:1]), f[:1])


def test_missing_and_bad_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    with pytest.raises(inception.MissingWeightsError, match="--inception-weights") as e:
        inception.load_inception()
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(inception.MissingWeightsError, match="not found: .*nope.pth"):
        inception.load_inception(tmp_path / "nope.pth")
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(inception.MissingWeightsError, match="PIX2PIX_FAST_INCEPTION_WEIGHTS"):
        inception.load_inception()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(inception.InceptionWeightsError, match="not a readable"):
        inception.load_inception(junk)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(inception.InceptionWeightsError, match="does not hold FID Inception-v3 weights"):
        inception.load_inception(other)


def test_hub_cache_path_is_used(random_inception, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    path = inception.default_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / inception.FID_WEIGHTS_NAME
    path.parent.mkdir(parents=True)
    torch.save(random_inception.state_dict(), path)
    assert inception.find_weights() == path


def test_fid_kid_accumulate_and_compute():
    # Stand-in network (a fixed projection) to test the bookkeeping cheaply.
    class Proj(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            x = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
            return x.flatten(1) @ self.w

    feats = fid.InceptionFeatures(network=Proj(), batch_size=4)
    g = torch.Generator().manual_seed(1)
    real = torch.rand(10, 3, 16, 16, generator=g) * 2 - 1
    fake = (real + 0.5).clamp(-1, 1)
    feats.update(real, real=True)
    feats.update(real[:5], real=False)
    feats.update(real[5:], real=False)
    same = feats.compute(kid_subsets=5)
    assert set(same) == {"fid", "kid", "kid_std"}
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    feats2 = fid.InceptionFeatures(network=Proj())
    feats2.update(real, real=True)
    feats2.update(fake, real=False)
    r, f = feats2.stacked("real"), feats2.stacked("fake")
    direct = fid.fid_kid_from_features(r, f, kid_subsets=5)
    assert feats2.compute(kid_subsets=5) == direct
    assert direct["fid"] == pytest.approx(_fid_scipy(r, f), rel=1e-6)
    assert direct["fid"] > 1.0
