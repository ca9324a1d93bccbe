import json

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix_fast.data.datasets import PairedDataset
from pix2pix_fast.errors import DataError
from pix2pix_fast.eval import fid as fid_mod
from pix2pix_fast import metrics
from pix2pix_fast.eval.artifacts import border_score, checkerboard_score
from pix2pix_fast.eval.inception import WEIGHTS_ENV, MissingWeightsError
from pix2pix_fast.eval.report import evaluate, evaluate_model, plot_training_log, read_run_log
from pix2pix_fast.inference import Pix2Pix
from pix2pix_fast.models import build_generator
from pix2pix_fast.checkpoint import CheckpointError
from tiny import save_tiny_checkpoint, tiny_config


def make_dataset(root, sizes, split="val"):
    """Aligned A|B PNGs: B is a smooth image, A a blurred/shifted version of it."""
    rng = np.random.default_rng(0)
    folder = root / split
    folder.mkdir(parents=True)
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        b = np.stack([127 + 100 * np.sin(xx / (3 + c) + yy / (5 + k) + c) for c in range(3)], 2)
        a = np.roll(b, 2, axis=1) + rng.normal(0, 8, b.shape)
        ab = np.concatenate([a, b], 1).clip(0, 255).astype(np.uint8)
        Image.fromarray(ab).save(folder / f"img{k}.png")
    return root


def write_log(run_dir, truncated=False):
    lines = []
    for step in range(0, 50, 10):
        lines.append({"step": step, "epoch": step // 20, "loss_D": 0.7 - step / 100, "loss_G_GAN": 0.9,
                      "loss_G_L1": 30 - step / 5, "lr": 2e-4, "time": step / 10})
    lines.append({"step": 20, "epoch": 1, "eval": {"l1": 0.3, "psnr": 12.0, "ssim": 0.2}})
    lines.append({"step": 40, "epoch": 2, "eval": {"l1": 0.25, "psnr": 13.0, "ssim": 0.3}})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if truncated:
        text += '{"step": 50, "epoch": 2, "loss_D": 0.'  # a crash mid-write
    (run_dir / "log.jsonl").write_text(text)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


@pytest.fixture
def run(tmp_path, no_weights):
    data = make_dataset(tmp_path / "data", [(32, 32), (32, 32), (40, 24)])
    cfg = tiny_config(dataroot=str(data))
    ckpt = tmp_path / "runs" / "exp" / "latest.pt"
    save_tiny_checkpoint(ckpt, cfg, step=40, epoch=2)
    write_log(ckpt.parent, truncated=True)
    return ckpt, data


def test_evaluate_writes_report_and_matches_direct_metrics(run):
    ckpt, data = run
    result = evaluate(ckpt, split="val", device="cpu", batch_size=4, eval_mode=True)
    out = ckpt.parent / "eval_val"
    assert result["out_dir"] == str(out) and result["report"] == str(out / "index.html")
    assert result["n_images"] == 3 and result["step"] == 40
    assert set(result["mean"]) == {"l1", "psnr", "ssim", "border", "checkerboard", "checkerboard_target"}
    assert any("FID/KID skipped" in n for n in result["notes"])
    assert any("unreadable line" in n for n in result["notes"])

    model = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True)
    ds = PairedDataset(data, "val")
    for rec, i in zip(result["per_image"], range(len(ds))):
        A, B = ds[i]
        a = torch.from_numpy(np.array(A)).permute(2, 0, 1)[None].float() / 127.5 - 1
        b = torch.from_numpy(np.array(B)).permute(2, 0, 1)[None].float() / 127.5 - 1
        y = model(a)
        assert rec["name"] == ds.names[i]
        assert rec["l1"] == pytest.approx(metrics.l1(y, b).item(), rel=1e-5)
        assert rec["psnr"] == pytest.approx(metrics.psnr(y, b).item(), rel=1e-5)
        assert rec["ssim"] == pytest.approx(metrics.ssim(y, b).item(), rel=1e-5)
        assert rec["border"] == pytest.approx(border_score(y, b).item(), rel=1e-5)
        assert rec["checkerboard"] == pytest.approx(checkerboard_score(y).item(), rel=1e-4)
        assert rec["checkerboard_target"] == pytest.approx(checkerboard_score(b).item(), rel=1e-4)
    assert result["mean"]["l1"] == pytest.approx(np.mean([r["l1"] for r in result["per_image"]]))

    page = (out / "index.html").read_text()
    for name in ds.names:
        assert f"images/{name}_output.png" in page
        assert (out / "images" / f"{name}_input.png").is_file()
    assert "loss_curves.png" in page and "metrics_curves.png" in page
    assert {p.split("/")[-1] for p in result["plots"]} == {"loss_curves.png", "metrics_curves.png"}
    assert Image.open(out / "images" / "img2_target.png").size == (24, 40)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean"]["l1"] == pytest.approx(result["mean"]["l1"])
    assert (out / "per_image.csv").read_text().splitlines()[0] == "name,l1,psnr,ssim,border,checkerboard,checkerboard_target"


def test_evaluate_with_fid(run, monkeypatch, tmp_path):
    # A small stand-in for the Inception network keeps this fast; the
    # weights-file path itself is tested in test_fid.py.
    class Proj(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.randn(3 * 8 * 8, 6, generator=torch.Generator().manual_seed(0))

        def forward(self, x):
            x = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
            return x.flatten(1) @ self.w

    seen = {}

    def fake_load(weights=None, device="cpu"):
        seen["weights"] = weights
        return Proj()

    monkeypatch.setattr(fid_mod, "load_inception", fake_load)
    weights = tmp_path / "w.pth"
    result = evaluate(ckpt := run[0], device="cpu", eval_mode=True, inception_weights=weights, write_images=False)
    assert seen["weights"] == weights
    assert {"fid", "kid", "kid_std"} <= set(result["mean"])
    assert np.isfinite(result["mean"]["fid"]) and result["mean"]["fid"] >= 0
    assert not (ckpt.parent / "eval_val" / "images" / "img0_output.png").exists()


def test_explicit_missing_weights_raise(run, tmp_path):
    with pytest.raises(MissingWeightsError, match="not found"):
        evaluate(run[0], device="cpu", inception_weights=tmp_path / "missing.pth")


def test_paper_mode_is_seeded_and_batchnorm_uses_batch_one(tmp_path, no_weights):
    data = make_dataset(tmp_path / "data", [(64, 64)] * 3)
    ckpt = tmp_path / "run" / "latest.pt"
    save_tiny_checkpoint(ckpt, tiny_config(netG="unet_64", norm="batch", dataroot=str(data)), step=40, epoch=2)
    r1 = evaluate(ckpt, device="cpu", out_dir=tmp_path / "r1", batch_size=3)
    r2 = evaluate(ckpt, device="cpu", out_dir=tmp_path / "r2", batch_size=3)
    r3 = evaluate(ckpt, device="cpu", out_dir=tmp_path / "r3", seed=1)
    assert r1["per_image"] == r2["per_image"]
    assert r1["per_image"] != r3["per_image"]  # dropout differs with the seed
    assert any("batch size 1" in n for n in r1["notes"])
    assert any("no training log" in n for n in r1["notes"])
    assert r1["plots"] == []


def test_synthetic_dataset_when_dataroot_is_empty(tmp_path, no_weights, monkeypatch):
    monkeypatch.setenv("PIX2PIX_FAST_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "run" / "latest.pt"
    save_tiny_checkpoint(ckpt, tiny_config(dataroot=""), step=40, epoch=2)
    result = evaluate(ckpt, split="val", device="cpu", eval_mode=True, write_images=False)
    assert result["n_images"] == 1
    assert result["dataroot"].startswith(str(tmp_path / "cache"))


def test_bad_inputs(run, tmp_path):
    ckpt, data = run
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        evaluate(tmp_path / "nope.pt", device="cpu")
    with pytest.raises(DataError, match="split folder not found"):
        evaluate(ckpt, split="test", device="cpu")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot write to output folder"):
        evaluate(ckpt, device="cpu", out_dir=blocker / "report")
    with pytest.raises(DataError, match="dataset folder not found"):
        evaluate(ckpt, device="cpu", dataroot=tmp_path / "elsewhere")


def test_evaluate_model_quick_and_side_effect_free(tmp_path):
    data = make_dataset(tmp_path / "data", [(64, 64), (64, 64), (32, 48)])
    ds = PairedDataset(data, "val")
    torch.manual_seed(0)
    G = build_generator(tiny_config(netG="unet_64", norm="batch")).train()
    bn_before = {k: v.clone() for k, v in G.named_buffers()}
    rng_before = torch.get_rng_state()

    means = evaluate_model(G, ds, batch_size=2)
    assert set(means) == {"l1", "psnr", "ssim"}
    assert G.training
    torch.testing.assert_close(torch.get_rng_state(), rng_before, rtol=0, atol=0)
    G.eval()
    direct = metrics.MetricAccumulator()
    for i in range(len(ds)):
        A, B = ds[i]
        a = torch.from_numpy(np.array(A)).permute(2, 0, 1)[None].float() / 127.5 - 1
        b = torch.from_numpy(np.array(B)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            direct.update(G(a) if a.shape[-1] == 64 else G(torch.nn.functional.pad(a, (8, 8, 16, 16), mode="reflect"))[..., 16:48, 8:56], b)
    for k, v in direct.means().items():
        assert means[k] == pytest.approx(v, rel=1e-5)

    G.train()
    paper = evaluate_model(G, ds, eval_mode=False, max_images=2)
    assert paper == evaluate_model(G, ds, eval_mode=False, max_images=2)  # seeded
    for k, v in G.named_buffers():
        torch.testing.assert_close(v, bn_before[k], rtol=0, atol=0, msg=f"evaluate_model changed {k}")


def test_evaluate_model_takes_a_loader():
    torch.manual_seed(0)
    G = build_generator(tiny_config())
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)) for _ in range(3)]
    means = evaluate_model(G, batches, max_images=3)
    G.eval()
    acc = metrics.MetricAccumulator()
    with torch.no_grad():
        A = torch.cat([b[0] for b in batches])[:3].float() / 127.5 - 1
        B = torch.cat([b[1] for b in batches])[:3].float() / 127.5 - 1
        acc.update(G(A), B)
    for k, v in acc.means().items():
        assert means[k] == pytest.approx(v, rel=1e-5)
    with pytest.raises(DataError, match="empty"):
        evaluate_model(G, [])


def test_plots_from_log(tmp_path):
    write_log(tmp_path, truncated=True)
    records, bad = read_run_log(tmp_path / "log.jsonl")
    assert len(records) == 7 and bad == 1
    notes = []
    paths = plot_training_log(tmp_path / "log.jsonl", tmp_path, notes=notes)
    assert [p.name for p in paths] == ["loss_curves.png", "metrics_curves.png"]
    assert all(Image.open(p).size[0] > 100 for p in paths)
    # Hinge losses go negative: still plotted (linear scale).
    (tmp_path / "hinge").mkdir()
    (tmp_path / "hinge" / "log.jsonl").write_text(json.dumps({"step": 1, "loss_D": -0.5, "loss_G_GAN": 0.0, "loss_G_L1": 3.0}) + "\n")
    assert [p.name for p in plot_training_log(tmp_path / "hinge" / "log.jsonl", tmp_path / "hinge")] == ["loss_curves.png"]
    assert plot_training_log(tmp_path / "missing.jsonl", tmp_path) == []


def test_artifact_scores_are_nan_where_images_are_too_small():
    from pix2pix_fast.eval.report import _artifact_scores

    g = torch.Generator().manual_seed(0)
    big = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    torch.testing.assert_close(_artifact_scores(*big)["checkerboard"], checkerboard_score(big[0]).double())
    small = _artifact_scores(torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g))
    assert torch.isfinite(small["border"]).all()
    assert small["checkerboard"].isnan().all() and small["checkerboard_target"].isnan().all()
    tiny = _artifact_scores(torch.rand(1, 3, 2, 2, generator=g), torch.rand(1, 3, 2, 2, generator=g))
    assert all(v.isnan().all() for v in tiny.values())
