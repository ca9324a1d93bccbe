import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_fast.config import ConfigError
from pix2pix_fast.errors import DataError
from pix2pix_fast.inference import Pix2Pix, reflect_pad, to_model_range
from pix2pix_fast.models import build_generator
from pix2pix_fast.checkpoint import CheckpointError
from tiny import save_tiny_checkpoint, tiny_config


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "run" / "latest.pt"
    path.parent.mkdir()
    G = save_tiny_checkpoint(path, step=7)
    return path, G


def _rand_image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _reference(G, x, left, right, top, bottom):
    """Pad with numpy's reflect (independent of ours), run G, crop."""
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
    with torch.no_grad():
        y = G(torch.from_numpy(xp))
    h, w = x.shape[-2:]
    return y[..., top:top + h, left:left + w]


def test_from_checkpoint_loads_the_weights(ckpt):
    path, G = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    assert model.multiple == 32 and model.step == 7 and model.config.ngf == 8
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        expected = G.eval()(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h,w,margin", [(37, 45, 0), (32, 32, 0), (20, 70, 6), (5, 3, 0), (33, 31, 40)])
def test_any_size_reflect_pad_and_crop(ckpt, h, w, margin):
    path, G = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h)) * 2 - 1
    y = model(x, margin=margin)
    assert y.shape == (1, 3, h, w)
    eh, ew = -(h + 2 * margin) % 32, -(w + 2 * margin) % 32
    top, left = margin + eh // 2, margin + ew // 2
    ref = _reference(G.eval(), x, left, margin + ew - ew // 2, top, margin + eh - eh // 2)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_reflect_pad_matches_numpy_for_wide_pads():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(1, 2, 5, 3)
    for pads in [(1, 2, 3, 4), (7, 0, 0, 11), (0, 0, 0, 0)]:
        left, right, top, bottom = pads
        ours = reflect_pad(x, left, right, top, bottom)
        ref = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
        np.testing.assert_array_equal(ours.numpy(), ref)
    one = torch.ones(1, 1, 1, 4)
    assert reflect_pad(one, 0, 0, 3, 2).shape == (1, 1, 6, 4)


def test_types_round_trip(ckpt):
    path, _ = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    arr = _rand_image(37, 45)
    out = model(arr)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (37, 45, 3)
    pil = model(Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (45, 37)
    np.testing.assert_array_equal(np.asarray(pil), out)
    t = to_model_range(torch.from_numpy(arr).permute(2, 0, 1))
    ty = model(t)
    assert ty.shape == (3, 37, 45) and ty.dtype == torch.float32
    assert ty.min() >= -1 and ty.max() <= 1
    np.testing.assert_array_equal(((ty + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), out)
    assert model(t.double()).dtype == torch.float64
    outs = model([arr, arr[:20, :30]])
    assert [o.shape for o in outs] == [(37, 45, 3), (20, 30, 3)]


def test_channel_conversion_and_refusals(ckpt):
    path, _ = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    rgba = _rand_image(24, 24, 4)
    # RGBA is converted as Pillow converts (alpha dropped), like files read by the data pipeline.
    np.testing.assert_array_equal(model(rgba), model(np.ascontiguousarray(rgba[:, :, :3])))
    assert model(Image.fromarray(rgba, "RGBA")).mode == "RGB"
    gray = _rand_image(24, 24, 1)[:, :, 0]
    np.testing.assert_array_equal(model(gray), model(np.repeat(gray[:, :, None], 3, 2)))
    with pytest.raises(DataError, match="4 channels but the model takes 3"):
        model(torch.zeros(1, 4, 16, 16))
    with pytest.raises(DataError, match="must be uint8"):
        model(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DataError, match="must be float"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(DataError, match="cannot convert"):
        model(_rand_image(8, 8, 5))
    with pytest.raises(DataError, match="cannot translate a str"):
        model("image.png")


def test_grayscale_model(tmp_path):
    path = tmp_path / "gray.pt"
    save_tiny_checkpoint(path, tiny_config(input_nc=1, output_nc=1), step=7)
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    gray = _rand_image(20, 28, 1)[:, :, 0]
    out = model(gray)
    assert out.shape == (20, 28) and out.dtype == np.uint8
    assert model(Image.fromarray(_rand_image(20, 28))).mode == "L"


def test_test_time_dropout_and_batchnorm_statistics(tmp_path):
    # unet_64 is the smallest U-Net with a dropout level.
    path = tmp_path / "bn.pt"
    cfg = tiny_config(netG="unet_64", norm="batch")
    G = save_tiny_checkpoint(path, cfg, step=7)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    paper = Pix2Pix.from_checkpoint(path, device="cpu")
    assert paper.G.training
    before = {k: v.clone() for k, v in paper.G.state_dict().items()}
    y1, y2 = paper(x), paper(x)
    assert not torch.equal(y1, y2)  # dropout is on
    for k, v in paper.G.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=f"inference changed {k}")
    torch.manual_seed(5)
    y3 = paper(x)
    torch.manual_seed(5)
    torch.testing.assert_close(paper(x), y3, rtol=0, atol=0)
    # Without dropout, train mode means BatchNorm batch statistics.
    G.train()
    for m in G.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for m in paper.G.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with torch.no_grad():
        torch.testing.assert_close(paper(x), G(x), rtol=1e-5, atol=1e-6)

    det = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    assert not det.G.training
    torch.testing.assert_close(det(x), det(x), rtol=0, atol=0)


def test_compile_fixed_on_cpu_matches_eager(ckpt):
    path, _ = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    run = model.compile_fixed(2, 37, 40, margin=4)
    x = torch.rand(2, 3, 37, 40) * 2 - 1
    torch.testing.assert_close(run(x), model(x, margin=4), rtol=0, atol=0)
    with pytest.raises(DataError, match="shape"):
        run(torch.zeros(1, 3, 37, 40))


@pytest.mark.gpu
def test_compile_fixed_cuda_graph_matches_eager(ckpt):
    path, _ = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cuda", eval_mode=True)
    run = model.compile_fixed(4, 45, 37, margin=8)
    for seed in range(3):
        x = (torch.rand(4, 3, 45, 37, generator=torch.Generator().manual_seed(seed)) * 2 - 1).cuda()
        torch.testing.assert_close(run(x), model(x, margin=8), rtol=1e-5, atol=1e-5)
    # Inputs on the host are copied in; the output stays on the GPU.
    x_cpu = torch.rand(4, 3, 45, 37) * 2 - 1
    assert run(x_cpu).device.type == "cuda"
    bf16 = Pix2Pix.from_checkpoint(path, device="cuda", eval_mode=True, precision="bf16")
    run16 = bf16.compile_fixed(4, 45, 37)
    y16 = run16(x)
    assert y16.dtype == torch.float32
    torch.testing.assert_close(y16, bf16(x), rtol=0, atol=0)
    assert (y16 - model(x)).abs().max() < 0.1


def test_compile_fixed_captures_on_the_models_gpu(ckpt, monkeypatch):
    """The capture runs inside torch.cuda.device(model's device), entered before
    any CUDA work: without it a model on cuda:1 is captured on cuda:0. On a
    machine without GPUs the device context is replaced by one that records
    the device and stops there."""
    path, _ = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    model.device = torch.device("cuda", 1)

    class Entered(Exception):
        pass

    def record_device(device):
        raise Entered(torch.device(device))

    monkeypatch.setattr(torch.cuda, "device", record_device)
    with pytest.raises(Entered) as entered:
        model.compile_fixed(1, 16, 16)
    assert entered.value.args[0] == torch.device("cuda", 1)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_compile_fixed_on_second_gpu_matches_eager(ckpt):
    path, _ = ckpt
    model = Pix2Pix.from_checkpoint(path, device="cuda:1", eval_mode=True)
    run = model.compile_fixed(2, 32, 32)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).to("cuda:1")
    torch.testing.assert_close(run(x), model(x), rtol=1e-5, atol=1e-5)


def test_bf16_precision_on_cpu(ckpt):
    path, _ = ckpt
    fp32 = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True)
    bf16 = Pix2Pix.from_checkpoint(path, device="cpu", eval_mode=True, precision="bf16")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = bf16(x)
    assert y.dtype == torch.float32
    assert (y - fp32(x)).abs().max() < 0.1
    with pytest.raises(ConfigError, match="precision"):
        Pix2Pix.from_checkpoint(path, device="cpu", precision="fp8")


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Pix2Pix.from_checkpoint(tmp_path / "missing.pt", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        Pix2Pix.from_checkpoint(junk, device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a pix2pix-fast checkpoint"):
        Pix2Pix.from_checkpoint(foreign, device="cpu")
    # Weights of a wider network under this config: a different architecture.
    other = tmp_path / "other.pt"
    torch.manual_seed(0)
    wide = build_generator(tiny_config(ngf=16)).state_dict()
    save_tiny_checkpoint(other, tiny_config(), G_state=wide, step=7)
    with pytest.raises(CheckpointError, match="was saved for a different architecture") as e:
        Pix2Pix.from_checkpoint(other, device="cpu")
    assert "\n" not in str(e.value)
    bad_cfg = tmp_path / "badcfg.pt"
    save_tiny_checkpoint(bad_cfg, step=7)
    state = torch.load(bad_cfg, weights_only=True)
    state["config"]["no_such_option"] = 1
    torch.save(state, bad_cfg)
    with pytest.raises(CheckpointError, match="cannot read its config"):
        Pix2Pix.from_checkpoint(bad_cfg, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_gpu(ckpt):
    with pytest.raises(ConfigError, match="no CUDA device"):
        Pix2Pix.from_checkpoint(ckpt[0], device="cuda")
