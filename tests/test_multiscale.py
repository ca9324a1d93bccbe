"""pix2pixHD's multi-scale PatchGAN (--num-D) and feature matching (--lambda-feat).

The discriminator at each scale is a PatchGAN on the input average-pooled
(3x3, stride 2, borders over the pixels inside) once more than the previous
scale; the GAN losses are summed over scales; feature matching is the L1
distance between D's intermediate features on the fake and the real pair,
weighted 4 / (intermediate layers) per layer and 1 / num_D per scale. The fast
step must compute what the eager step computes (compared one step at a time,
tests/same_step.py), training must resume exactly, and one PatchGAN keeps
today's keys.
"""
import pytest
import torch
import torch.nn.functional as F
from same_step import assert_same_step
from test_distributed import assert_one_step_alike, assert_same_losses, run_ranks, single_process_run
from test_distributed import step_losses as rank_losses
from test_fast_step import batches, make
from test_train import interrupt_and_resume, step_losses
from tiny import tiny_config, tiny_run

from pix2pix_fast import checkpoint as ckpt
from pix2pix_fast.cli import main
from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.data.synthetic import synthetic_dataset
from pix2pix_fast.models import MultiscaleDiscriminator, PatchGANDiscriminator, build_discriminator
from pix2pix_fast.nn import InstanceNormAct, fuse
from pix2pix_fast.train.losses import feature_matching_loss
from pix2pix_fast.train.trainer import Trainer

MULTI = {"num_D": 3, "lambda_feat": 10.0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=8, n_val=2, n_test=1, seed=5)


def test_each_scale_is_a_patchgan_on_the_average_pooled_input():
    cfg = tiny_config(num_D=3)
    D = build_discriminator(cfg)
    assert isinstance(D, MultiscaleDiscriminator) and len(D.scales) == 3
    x = torch.randn(2, 6, 32, 32)
    logits = D(x)
    feats = D(x, features=True)
    want = x
    for k, scale in enumerate(D.scales):
        if k:
            # 3x3 mean over the pixels inside the image, stride 2.
            ones = torch.ones(1, 1, *want.shape[2:])
            want = F.conv2d(F.pad(want, (1, 1, 1, 1)), torch.ones(6, 1, 3, 3) / 9, stride=2, groups=6) / (
                F.conv2d(F.pad(ones, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3) / 9, stride=2))
        torch.testing.assert_close(logits[k], scale(want), rtol=1e-5, atol=1e-6)
        assert len(feats[k]) == cfg.n_layers_D + 2 and torch.equal(feats[k][-1], logits[k])
    assert [t.shape[-1] for t in logits] == [14, 6, 2]  # 32, 16 and 8 px through a one-layer PatchGAN


def test_one_patchgan_keeps_its_keys_and_older_checkpoints_build_it(tmp_path):
    """A config without the new options (an older checkpoint's) builds the single PatchGAN, whose
    state_dict loads strictly; K > 1 nests each scale's keys under scales.k."""
    old = {k: v for k, v in tiny_config().to_dict().items() if k not in ("num_D", "lambda_feat",
                                                                          "checkpoint_activations")}
    cfg = TrainConfig.from_dict(old)
    torch.manual_seed(0)
    D = build_discriminator(cfg)
    assert type(D) is PatchGANDiscriminator
    torch.manual_seed(0)
    reference = PatchGANDiscriminator(in_channels=6, ndf=8, n_layers=1)
    D.load_state_dict(reference.state_dict(), strict=True)
    keys = list(reference.state_dict())
    multi = build_discriminator(cfg.replace(num_D=2)).state_dict()
    assert list(multi) == [f"scales.{k}.{key}" for k in range(2) for key in keys]


def test_feature_matching_weights_layers_and_scales_as_pix2pixhd():
    """Features that differ by 1 everywhere: each scale's layers add up to 4 / num_D, so the loss
    is 4 whatever the number of layers and scales; the logit maps are not matched; gradients reach
    only the fake features."""
    for n_feat, num_D in ((2, 1), (4, 3)):
        fake = [[torch.ones(2, 3, 4, 4, requires_grad=True) for _ in range(n_feat)] + [torch.full((2, 1, 2, 2), 9.)]
                for _ in range(num_D)]
        real = [[torch.zeros(2, 3, 4, 4, requires_grad=True) for _ in range(n_feat)] + [torch.zeros(2, 1, 2, 2)]
                for _ in range(num_D)]
        loss = feature_matching_loss(fake, real)
        torch.testing.assert_close(loss, torch.tensor(4.0))
        loss.backward()
        assert fake[0][0].grad is not None and real[0][0].grad is None
    same = [[torch.randn(1, 2, 3, 3), torch.randn(1, 1, 2, 2)]]
    assert feature_matching_loss(same, same).item() == 0.0


@pytest.mark.parametrize("norm,gan_mode", [("instance", "vanilla"), ("batch", "lsgan")])
def test_fast_step_follows_eager_step_with_three_scales_and_feature_matching(norm, gan_mode):
    """As tests/test_fast_step.py: from the same state each fast step (fused layers and loss; on
    CPU without graph and compile; batched D for instance norm, two calls for batch norm)
    computes the eager step's losses, gradients and updates."""
    cfg = tiny_config(batch_size=2, norm=norm, gan_mode=gan_mode, **MULTI)
    eager, eager_parts = make(cfg, fast=False)
    fast, fast_parts = make(cfg, fast=True)
    for A, B in batches(cfg, 2):
        assert_same_step(fast, fast_parts, eager, eager_parts, A, B, cfg.lr)


def test_the_options_change_the_losses_and_feature_matching_is_in_g_gan():
    """Same state and data: three scales change D's and G's GAN loss; feature matching adds
    lambda_feat x its loss to G's GAN term and leaves D's loss and L1 alone."""
    cfg = tiny_config(batch_size=2, dropout=False)
    (A, B), = batches(cfg, 1)
    losses = {}
    for name, kw in (("one", {}), ("three", {"num_D": 3}), ("feat", MULTI)):
        step, _ = make(cfg.replace(**kw), fast=False)
        losses[name] = step(A, B)
    assert losses["three"][0] != losses["one"][0] and losses["three"][1] != losses["one"][1]
    assert losses["feat"][0] == losses["three"][0] and losses["feat"][2] == losses["three"][2]
    assert losses["feat"][1] > losses["three"][1]


def test_trains_on_the_built_in_data_and_resumes_exactly(data_root, tmp_path):
    cfg = tiny_run(data_root, tmp_path / "a", n_layers_D=1, **MULTI)
    straight = Trainer(cfg, progress=False).fit()
    expected = step_losses(straight.run_dir)
    assert straight.status == "done" and len(expected) == straight.step == 8

    resumed = interrupt_and_resume(cfg.replace(output_dir=str(tmp_path / "b")), 3)  # mid-epoch (4 steps each)
    assert step_losses(resumed.run_dir) == expected  # bit-identical on CPU
    a, b = (ckpt.load_checkpoint(r.run_dir / "latest.pt") for r in (straight, resumed))
    assert list(a["D"]) == list(build_discriminator(cfg).state_dict())
    assert all(torch.equal(v, b["D"][k]) for k, v in a["D"].items())


def test_too_many_scales_for_the_crop_are_refused_in_one_line(data_root, tmp_path):
    cfg = tiny_run(data_root, tmp_path, num_D=5, n_layers_D=3)
    with pytest.raises(ConfigError, match="at 5 scales.*--num-D"):
        Trainer(cfg, progress=False)


def test_feature_matching_without_a_discriminator_is_refused():
    with pytest.raises(ConfigError, match="--lambda-feat"):
        tiny_config(gan_mode="none", lambda_feat=10.0).validate()


def test_fuse_of_a_multiscale_discriminator_keeps_function_and_keys():
    cfg = tiny_config(num_D=2)
    torch.manual_seed(1)
    D = build_discriminator(cfg)
    fused = fuse(D)
    assert sum(isinstance(m, InstanceNormAct) for m in fused.modules()) == 2  # one norm per scale
    assert fused.state_dict().keys() == D.state_dict().keys()
    x = torch.randn(2, 6, 32, 32)
    for got, want in zip(fused(x), D(x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_export_refuses_a_multiscale_discriminator_in_one_line(tmp_path, capsys):
    cfg = tiny_config(num_D=2)
    torch.manual_seed(0)
    from pix2pix_fast.models import build_generator

    state = {"config": cfg.to_dict(), "G": build_generator(cfg).state_dict(), "D": build_discriminator(cfg).state_dict(),
             "step": 0, "epoch": 0}
    path = ckpt.save_checkpoint(tmp_path / "model.pt", state)
    rc = main(["export", str(path), "--format", "reference", "--net", "D", "--out", str(tmp_path / "D.pth")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--num-D 2" in err[0] and "convert the generator alone" in err[0]
    assert not (tmp_path / "D.pth").exists()
    assert main(["export", str(path), "--format", "reference", "--out", str(tmp_path / "G.pth")]) == 0


@pytest.mark.slow  # 2 spawned ranks and 2 single-process runs: about a minute on 2 cores
def test_two_ranks_train_like_one_process_with_the_double_batch(data_root, tmp_path):
    """torchrun (gloo, 2 ranks x batch 2) against 1 process x batch 4, one step from the same
    state with three scales and feature matching, eager and fast: the same losses, gradients
    and updates (as tests/test_distributed.py)."""
    single = tiny_run(data_root, tmp_path / "single", batch_size=4, dropout=False, max_steps=1, n_layers_D=1,
                      **MULTI)
    jobs, refs = [], {}
    for fast in (False, True):
        root = tmp_path / ("fast" if fast else "eager")
        refs[fast] = single_process_run(single.replace(output_dir=str(root / "ref")), fast, threads=2).run_dir
        jobs.append({"cfg": single.replace(output_dir=str(root / "two"), batch_size=2).to_dict(), "fast": fast})
    results = run_ranks(jobs, tmp_path)
    for rank in range(2):
        assert [r.get("status") for r in results[rank]] == ["done", "done"], results[rank]
    for fast in (False, True):
        two = tmp_path / ("fast" if fast else "eager") / "two" / "run"
        assert_same_losses(rank_losses(two), rank_losses(refs[fast]))
        assert_one_step_alike(ckpt.load_checkpoint(two / "latest.pt"), ckpt.load_checkpoint(refs[fast] / "latest.pt"),
                              single)
