"""Reference-implementation checkpoints in (`import-reference`) and out (`export --format reference`).

The reference networks are rebuilt here the way pytorch-CycleGAN-and-pix2pix
(models/networks.py) nests them, so their state dicts carry the reference's
key names; they get random weights and BatchNorm running statistics, are
saved as that code saves them (a bare state dict), imported, and must give
exactly the original's eval-mode outputs; exporting back must give the
original tensors under the original keys.
"""

import pytest
import torch
from torch import nn

from pix2pix_fast.checkpoint import load_checkpoint, save_checkpoint
from pix2pix_fast.cli import main
from pix2pix_fast.config import TrainConfig
from pix2pix_fast.inference import Pix2Pix, load_generator
from pix2pix_fast.interop.reference_nets import (
    NLayerDiscriminator,
    PixelDiscriminator,
    ResnetGenerator,
    UnetGenerator,
)
from pix2pix_fast.interop.reference_nets import get_norm_layer as norm_layer
from pix2pix_fast.models import build_discriminator, build_generator


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.6)
    return net.eval()


def _reference_generator(netG, norm, ngf=2, dropout=False, in_nc=3, out_nc=3):
    if netG.startswith("unet_"):
        n = int(netG[5:]).bit_length() - 1
        return UnetGenerator(in_nc, out_nc, n, ngf, norm_layer(norm), dropout)
    return ResnetGenerator(in_nc, out_nc, ngf, norm_layer(norm), dropout, int(netG[7]))


def _import(tmp_path, files, *flags):
    out = tmp_path / "model.pt"
    rc = main(["import-reference", *map(str, files), "--out", str(out), *flags])
    assert rc == 0
    return out


# (netG, norm, dropout, input H x W): every generator and norm at least once.
GENERATORS = [
    ("unet_128", "batch", True, (128, 128)),
    ("unet_256", "instance", True, (256, 256)),
    ("unet_128", "none", False, (128, 128)),
    ("resnet_6blocks", "batch", False, (20, 28)),
    ("resnet_9blocks", "instance", False, (16, 24)),
    ("resnet_6blocks", "none", True, (12, 20)),
]


@pytest.mark.parametrize("netG,norm,dropout,hw", GENERATORS, ids=[f"{g}-{n}" for g, n, _, _ in GENERATORS])
def test_import_gives_identical_outputs_and_round_trips(netG, norm, dropout, hw, tmp_path):
    ref = _randomise(_reference_generator(netG, norm, dropout=dropout, in_nc=3, out_nc=2), seed=1)
    saved = ref.state_dict()
    torch.save(saved, tmp_path / "latest_net_G.pth")
    # U-Net dropout has no weights to tell it by; the ResNet's shifts the keys and is inferred.
    flags = [] if dropout or netG.startswith("resnet") else ["--no-dropout"]
    ckpt = _import(tmp_path, [tmp_path / "latest_net_G.pth"], *flags)

    G, cfg, meta = load_generator(ckpt)
    assert (cfg.netG, cfg.norm, cfg.ngf, cfg.input_nc, cfg.output_nc, cfg.dropout) == (netG, norm, 2, 3, 2, dropout)
    assert meta == {"step": 0, "epoch": 0}
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = ref(x)
        got = G.eval()(x)
        model_out = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True)(x)
    assert torch.equal(got, want)
    assert torch.allclose(model_out, want.clamp(-1, 1), rtol=0, atol=0)

    assert main(["export", str(ckpt), "--format", "reference", "--out", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(saved)
    for k in saved:
        assert back[k].dtype == saved[k].dtype and torch.equal(back[k], saved[k]), k
    ref.load_state_dict(back, strict=True)


def test_old_instance_stats_and_data_parallel_prefix(tmp_path):
    ref = _randomise(_reference_generator("unet_128", "instance"), seed=2)
    saved = ref.state_dict()
    old = {"module." + k: v for k, v in saved.items()}  # saved from nn.DataParallel
    # Older reference versions built InstanceNorm2d with running statistics.
    inorms = [(name, m.num_features) for name, m in ref.named_modules() if isinstance(m, nn.InstanceNorm2d)]
    assert inorms
    for name, c in inorms:
        old[f"module.{name}.running_mean"] = torch.randn(c)
        old[f"module.{name}.running_var"] = torch.rand(c) + 0.5
        old[f"module.{name}.num_batches_tracked"] = torch.tensor(7)
    torch.save(old, tmp_path / "net_G.pth")
    ckpt = _import(tmp_path, [tmp_path / "net_G.pth"])
    G, cfg, _ = load_generator(ckpt)
    assert cfg.norm == "instance"
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(G.eval()(x), ref(x))


@pytest.mark.parametrize("netD,n_layers,norm", [("basic", 3, "batch"), ("n_layers", 2, "instance"), ("pixel", 0, "batch")])
def test_discriminator_import_and_round_trip(netD, n_layers, norm, tmp_path):
    g_ref = _randomise(_reference_generator("unet_32", norm, dropout=True), seed=3)
    d_norm = norm_layer(norm)
    d_ref = PixelDiscriminator(6, 3, d_norm) if netD == "pixel" else NLayerDiscriminator(6, 3, n_layers, d_norm)
    d_ref = _randomise(d_ref, seed=4)
    torch.save(g_ref.state_dict(), tmp_path / "net_G.pth")
    torch.save(d_ref.state_dict(), tmp_path / "net_D.pth")
    ckpt = _import(tmp_path, [tmp_path / "net_G.pth", tmp_path / "net_D.pth"], "--netD", netD)
    state = load_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(state["config"])
    assert (cfg.n_layers_D, cfg.ndf) == (n_layers, 3)
    D = build_discriminator(cfg)
    D.load_state_dict(state["D"])
    x = torch.rand(2, 6, 40, 36) * 2 - 1
    with torch.no_grad():
        assert torch.equal(D.eval()(x), d_ref(x))
    assert main(["export", str(ckpt), "--format", "reference", "--net", "D", "--out", str(tmp_path / "D.pth")]) == 0
    back = torch.load(tmp_path / "D.pth", weights_only=True)
    saved = d_ref.state_dict()
    assert list(back) == list(saved) and all(torch.equal(back[k], saved[k]) for k in saved)


def test_discriminator_next_to_a_resnet_generator_imports_exactly(tmp_path):
    """The reference pads a ResNet generator by reflection and its discriminator with zeros: the
    import keeps both (--padding reflect, --padding-D zero), so D gives the original's outputs
    exactly, G and D export back to the original tensors, and fine-tuning trains that D."""
    from pix2pix_fast.data.synthetic import synthetic_dataset

    g_ref = _randomise(_reference_generator("resnet_6blocks", "instance"), seed=6)
    d_ref = _randomise(NLayerDiscriminator(6, 3, 3, norm_layer("instance")), seed=7)
    torch.save(g_ref.state_dict(), tmp_path / "net_G.pth")
    torch.save(d_ref.state_dict(), tmp_path / "net_D.pth")
    root = synthetic_dataset(tmp_path / "data", size=32, n_train=2, n_val=1, n_test=1, seed=3)
    ckpt = _import(tmp_path, [tmp_path / "net_G.pth", tmp_path / "net_D.pth"], "--netD", "basic",
                   "--dataroot", str(root), "--load-size", "32", "--crop-size", "32", "--max-steps", "1",
                   "--device", "cpu")
    state = load_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(state["config"])
    assert (cfg.padding, cfg.padding_D, cfg.discriminator_padding) == ("reflect", "zero", "zero")
    D = build_discriminator(cfg)
    D.load_state_dict(state["D"])
    x = torch.rand(2, 6, 40, 36) * 2 - 1  # the borders matter: zero and reflect padding differ there
    with torch.no_grad():
        assert torch.equal(D.eval()(x), d_ref(x))
        assert not torch.equal(build_discriminator(cfg.replace(padding_D="same")).eval()(x), d_ref(x))
    for net, ref in (("G", g_ref), ("D", d_ref)):
        assert main(["export", str(ckpt), "--format", "reference", "--net", net, "--out", str(tmp_path / f"{net}.pth")]) == 0
        back, saved = torch.load(tmp_path / f"{net}.pth", weights_only=True), ref.state_dict()
        assert list(back) == list(saved) and all(torch.equal(back[k], saved[k]) for k in saved)
    assert main(["train", "--resume", str(ckpt), "--output-dir", str(tmp_path / "runs"), "--name", "ft",
                 "--quiet"]) == 0
    tuned = load_checkpoint(tmp_path / "runs" / "ft" / "latest.pt")
    assert tuned["step"] == 1 and TrainConfig.from_dict(tuned["config"]).padding_D == "zero"
    assert any(not torch.equal(tuned["D"][k], state["D"][k]) for k in state["D"] if k.endswith("weight"))


def test_reflect_padded_discriminator_has_no_reference_equivalent(tmp_path, capsys):
    """A discriminator trained here with reflect padding (--padding reflect, --padding-D same)
    is not the reference's: its export is refused in one line, the generator's still works."""
    cfg = TrainConfig(netG="resnet_6blocks", ngf=2, ndf=3, padding="reflect")
    torch.manual_seed(0)
    state = {"config": cfg.to_dict(), "G": build_generator(cfg).state_dict(), "D": build_discriminator(cfg).state_dict(),
             "step": 0, "epoch": 0}
    ckpt = save_checkpoint(tmp_path / "model.pt", state)
    line = _error_line(capsys, ["export", str(ckpt), "--format", "reference", "--net", "D",
                                "--out", str(tmp_path / "D.pth")])
    assert "no exact equivalent" in line and "--padding-D same" in line
    assert not (tmp_path / "D.pth").exists()
    assert main(["export", str(ckpt), "--format", "reference", "--out", str(tmp_path / "G.pth")]) == 0


def _error_line(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    return err[0]


def test_mismatches_are_one_line_naming_the_key(tmp_path, capsys):
    ref = _randomise(_reference_generator("unet_64", "batch"), seed=5)
    path = tmp_path / "net_G.pth"
    torch.save(ref.state_dict(), path)
    out = str(tmp_path / "m.pt")
    line = _error_line(capsys, ["import-reference", str(path), "--out", out, "--norm", "instance"])
    assert "missing key model.model.0.bias" in line and "--norm instance" in line
    line = _error_line(capsys, ["import-reference", str(path), "--out", out, "--netG", "unet_32"])
    assert "missing key model.model.1.model.3.model.3.model.3.model.3.weight" in line  # unet_32's innermost up conv
    line = _error_line(capsys, ["import-reference", str(path), "--out", out, "--ngf", "4"])
    assert "model.model.0.weight has shape (2, 3, 4, 4)" in line and "expects (4, 3, 4, 4)" in line
    line = _error_line(capsys, ["import-reference", str(path), "--out", out, "--norm", "none"])
    assert "unexpected key model.model.1.model.2.weight" in line
    d = _randomise(NLayerDiscriminator(5, 3, 3, norm_layer("batch")), seed=6)
    torch.save(d.state_dict(), tmp_path / "net_D.pth")
    line = _error_line(capsys, ["import-reference", str(path), str(tmp_path / "net_D.pth"), "--out", out])
    assert "model.0.weight has shape (3, 5, 4, 4)" in line
    torch.save({"a": 1}, tmp_path / "junk.pth")
    line = _error_line(capsys, ["import-reference", str(tmp_path / "junk.pth"), "--out", out])
    assert "junk.pth" in line
    assert not (tmp_path / "m.pt").exists()


def test_export_refuses_what_the_reference_cannot_express(tmp_path, capsys):
    ref = _randomise(_reference_generator("unet_32", "none"), seed=7)
    torch.save(ref.state_dict(), tmp_path / "net_G.pth")
    ckpt = _import(tmp_path, [tmp_path / "net_G.pth"])
    state = load_checkpoint(ckpt)
    state["G"]["down.1.conv.bias"].fill_(0.5)  # a bias the reference's conv does not have
    torch.save(state, ckpt)
    line = _error_line(capsys, ["export", str(ckpt), "--format", "reference", "--out", str(tmp_path / "x.pth")])
    assert "down.1.conv.bias is not zero" in line


def test_imported_checkpoint_works_everywhere(tmp_path, capsys):
    from pix2pix_fast.data.synthetic import synthetic_dataset

    root = synthetic_dataset(tmp_path / "data", size=32, n_train=2, n_val=1, n_test=1, seed=3)
    ref = _randomise(_reference_generator("unet_32", "batch"), seed=8)
    torch.save(ref.state_dict(), tmp_path / "net_G.pth")
    ckpt = _import(tmp_path, [tmp_path / "net_G.pth"], "--dataroot", str(root), "--load-size", "32",
                   "--crop-size", "32", "--max-steps", "2", "--output-dir", str(tmp_path / "runs"),
                   "--name", "ft", "--log-every", "1", "--device", "cpu")
    capsys.readouterr()
    assert main(["test", str(ckpt), "--quiet", "--eval-mode", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "index.html").is_file()
    assert main(["eval", str(ckpt), "--quiet", "--no-fid", "--out", str(tmp_path / "e")]) == 0
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "g.ts")]) == 0
    # Fine-tuning: training resumes from the imported weights, in the run folder given here.
    assert main(["train", "--resume", str(ckpt), "--output-dir", str(tmp_path / "runs"), "--name", "ft",
                 "--quiet"]) == 0
    latest = load_checkpoint(tmp_path / "runs" / "ft" / "latest.pt")
    assert latest["step"] == 2
    imported = load_checkpoint(ckpt)["G"]
    assert any(not torch.equal(latest["G"][k], imported[k]) for k in imported if k.endswith("conv.weight"))
