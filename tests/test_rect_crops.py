"""Rectangular crops (--crop-size W --crop-height H, --load-height): the loader's jitter on
rectangles (native against the NumPy reference), training at 2:1 with the U-Net and the
ResNet, and a crop the generator cannot take refused in one line naming the nearest sizes."""
import pytest
from test_loader import aligned, kw, run
from tiny import tiny_run

from pix2pix_fast import checkpoint as ckpt
from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.data import transforms as T
from pix2pix_fast.data.loader import PairedLoader
from pix2pix_fast.data.synthetic import synthetic_dataset
from pix2pix_fast.train.trainer import Trainer

_C = pytest.importorskip("pix2pix_fast._C")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=4, n_val=1, n_test=1, seed=9)


def test_sizes_are_height_by_width_and_the_load_height_keeps_the_crops_aspect():
    cfg = TrainConfig(crop_size=512, crop_height=256, load_size=572)
    assert cfg.crop_hw == (256, 512) and cfg.load_hw == (286, 572)
    assert TrainConfig(crop_size=64, crop_height=32, load_size=72, load_height=40).load_hw == (40, 72)
    square = TrainConfig()
    assert square.crop_hw == (256, 256) and square.load_hw == (286, 286)
    with pytest.raises(ConfigError, match="--crop-height"):
        TrainConfig(crop_size=64, crop_height=48, load_size=72, load_height=40).validate()


@pytest.mark.parametrize("mode, load, crop", [
    ("resize_and_crop", (20, 31), (16, 24)), ("crop", 1, (10, 24)), ("scale_width_and_crop", (1, 29), (9, 12)),
])
def test_native_rectangles_match_the_numpy_reference(tmp_path, mode, load, crop):
    """The same windows and flips as the reference (exact for crop, a grey level where it resizes),
    with A and B cut alike, for every sample of two epochs."""
    ds = aligned(tmp_path)
    opts = dict(batch_size=4, load_size=load, crop_size=crop, preprocess=mode, seed=3, **kw(tmp_path))
    nat = run(PairedLoader(ds, backend="native", threads=2, **opts), epochs=2)
    ref = run(PairedLoader(ds, backend="python", **opts), epochs=2)
    assert len(nat) == len(ref) == 6  # 9 pairs in batches of 4, two epochs
    for (a, b), (ra, rb) in zip(nat, ref):
        assert a.shape == ra.shape == (len(a), 3, *crop)
        tol = 0 if mode == "crop" else 1
        assert (a.int() - ra.int()).abs().max() <= tol and (b.int() - rb.int()).abs().max() <= tol
    for seed in range(50):  # the draws: the native sampler against the reference's
        in_hw = (20 + seed, 40 + 3 * seed)
        p = T.sample_params(seed, 1, seed, in_hw, (36, 72), (32, 64), "resize_and_crop", True)
        got = _C.loader.sample_params(seed, 1, seed, *in_hw, 72, 64, "resize_and_crop", True, load_h=36, crop_h=32)
        assert got == (p.resize_h, p.resize_w, p.crop_y, p.crop_x, p.crop_h, p.crop_w, p.flip)


@pytest.mark.parametrize("netG", ["unet_32", "resnet_6blocks"])
def test_trains_on_2_to_1_crops(data_root, tmp_path, netG):
    """64 wide x 32 high crops of the built-in 32 px set (resized to 72 x 36 first), through G, a
    two-scale D, validation and sample images; the checkpoint resumes."""
    cfg = tiny_run(data_root, tmp_path, netG=netG, ngf=4, crop_size=64, crop_height=32, load_size=72,
                   n_layers_D=1, num_D=2, max_steps=2)
    trainer = Trainer(cfg, progress=False)
    batch = next(iter(trainer.loader))
    assert batch[0].shape == (2, 3, 32, 64)
    assert trainer.fit().status == "done"
    resumed = Trainer(cfg.replace(max_steps=3), resume=trainer.run_dir / "latest.pt", progress=False).fit()
    assert resumed.step == 3 and ckpt.load_checkpoint(trainer.run_dir / "latest.pt")["step"] == 3


def test_a_crop_the_generator_cannot_take_names_the_nearest_sizes(data_root, tmp_path):
    cfg = tiny_run(data_root, tmp_path, crop_size=64, crop_height=40, load_size=72)
    with pytest.raises(ConfigError) as e:
        Trainer(cfg, progress=False)
    line = str(e.value)
    assert "\n" not in line and "40x64 (HxW)" in line and "multiples of 32" in line and "height 32 or 64" in line
    assert "width" not in line.split("nearest:")[1].split("(")[0]  # the width fits: not named
