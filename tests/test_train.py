"""The eager trainer: schedule, losses, checkpoints, resume, NaN stop, signals."""
import json
import math
import os
import signal

import pytest
import torch

from pix2pix_fast.config import ConfigError, TrainConfig
from tiny import tiny_run
from pix2pix_fast.data.synthetic import synthetic_dataset
from pix2pix_fast import checkpoint as ckpt
from pix2pix_fast.train.losses import gan_loss, instance_noise_std
from pix2pix_fast.train.schedule import lr_factor
from pix2pix_fast.train.trainer import Trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=8, n_val=4, n_test=2, seed=3)


def tiny_config(root, out, **kw):
    return tiny_run(root, out, **{"epochs": 2, "save_every": 1, **kw})


class HookedStep:
    """Wraps a trainer's step: `after(losses) -> losses` runs after each step."""

    def __init__(self, inner, after):
        self.inner, self.after = inner, after

    def __call__(self, *args):
        return self.after(self.inner(*args))

    def __getattr__(self, name):  # the rest of the TrainStep interface: the inner step's
        return getattr(self.inner, name)


def step_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss_D"], r["loss_G_GAN"], r["loss_G_L1"]) for r in records if "loss_D" in r}


# ----------------------------------------------------------------- schedule
def test_linear_schedule_matches_reference_rule():
    cfg = TrainConfig(epochs=3, epochs_decay=4)
    factors = [lr_factor(cfg, e) for e in range(7)]
    assert factors[:3] == [1.0, 1.0, 1.0]
    # reference: 1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)
    assert factors[3:] == pytest.approx([1 - k / 5 for k in range(1, 5)])


def test_step_and_cosine_schedules():
    step = TrainConfig(lr_policy="step", lr_step_epochs=2)
    assert [lr_factor(step, e) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cos = TrainConfig(lr_policy="cosine", epochs=2, epochs_decay=2)
    assert lr_factor(cos, 0) == 1.0
    assert lr_factor(cos, 2) == pytest.approx(0.5)
    assert lr_factor(cos, 4) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------- losses
def test_gan_losses_match_definitions():
    x = torch.randn(3, 1, 5, 4) * 3
    assert torch.allclose(gan_loss(x, True, "vanilla"), torch.nn.functional.softplus(-x).mean())
    assert torch.allclose(gan_loss(x, False, "vanilla"), torch.nn.functional.softplus(x).mean())
    assert torch.allclose(gan_loss(x, True, "lsgan"), ((x - 1) ** 2).mean())
    assert torch.allclose(gan_loss(x, False, "lsgan"), (x ** 2).mean())
    assert torch.allclose(gan_loss(x, True, "hinge"), torch.relu(1 - x).mean())
    assert torch.allclose(gan_loss(x, False, "hinge"), torch.relu(1 + x).mean())
    assert torch.allclose(gan_loss(x, True, "hinge", for_discriminator=False), -x.mean())
    # G never sees smoothing: its target is 1 whatever the D options are.
    assert torch.allclose(gan_loss(x, True, "lsgan", for_discriminator=False, real_label=0.5), ((x - 1) ** 2).mean())


def test_label_smoothing_and_flipping():
    x = torch.zeros(4000, 1, 1, 1)
    # lsgan at logits 0: loss = mean(target^2); smoothing to 0.9 gives 0.81.
    assert gan_loss(x, True, "lsgan", real_label=0.9).item() == pytest.approx(0.81)
    torch.manual_seed(0)
    ranged = gan_loss(x, True, "lsgan", real_label=1.0, real_label_min=0.7).item()
    assert ranged == pytest.approx((1.0**3 - 0.7**3) / (3 * 0.3), rel=0.02)  # E[U^2] on [0.7, 1]
    flipped = gan_loss(x, False, "lsgan", flip_prob=0.25).item()  # fakes get target 1 a quarter of the time
    assert flipped == pytest.approx(0.25, abs=0.03)


def test_instance_noise_decays_linearly():
    cfg = TrainConfig(instance_noise=0.2)
    assert instance_noise_std(cfg, 0, 100) == pytest.approx(0.2)
    assert instance_noise_std(cfg, 50, 100) == pytest.approx(0.1)
    assert instance_noise_std(cfg, 100, 100) == 0.0
    assert instance_noise_std(TrainConfig(), 0, 100) == 0.0


# -------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"config": {}, "G": {"w": torch.ones(2)}, "step": 7})
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["G"]["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="junk.pt"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a pix2pix-fast checkpoint"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")


# -------------------------------------------------------------- training
def test_training_writes_outputs(data_root, tmp_path):
    result = Trainer(tiny_config(data_root, tmp_path), progress=False).fit()
    run = result.run_dir
    assert result.status == "done" and result.step == 3 * 4  # 3 epochs x 8 pairs / batch 2
    for name in ("latest.pt", "epoch_0001.pt", "log.jsonl", "loss_curves.png", "samples/final.png"):
        assert (run / name).is_file(), name
    state = ckpt.load_checkpoint(run / "latest.pt")
    assert state["step"] == 12 and state["epoch"] == 3
    assert TrainConfig.from_dict(state["config"]) == tiny_config(data_root, tmp_path)
    assert set(result.val) == {"l1", "psnr", "ssim", "l1_copy_input"}
    assert all(math.isfinite(v) for losses in step_losses(run).values() for v in losses)


def test_periodic_validation_is_logged_once_per_epoch_and_plotted(data_root, tmp_path):
    result = Trainer(tiny_config(data_root, tmp_path, eval_every=1), progress=False).fit()
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [(r["epoch"], r["step"]) for r in evals] == [(1, 4), (2, 8), (3, 12)]  # the end reuses epoch 3's
    assert all(set(r["eval"]) == {"l1", "psnr", "ssim", "l1_copy_input"} for r in evals)
    assert result.val == evals[-1]["eval"]
    assert (result.run_dir / "metrics_curves.png").is_file()


def interrupt_and_resume(cfg, step: int):
    """Train `cfg` with a Ctrl-C (SIGINT) arriving during step `step`, then resume it from its
    latest.pt to the end; the resumed run's result."""
    trainer = Trainer(cfg, progress=False)

    def interrupt(losses):
        if trainer.step == step - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    trainer.step_fn = HookedStep(trainer.step_fn, interrupt)
    first = trainer.fit()
    assert first.status == "interrupted" and first.step == step
    return Trainer(cfg, resume=first.run_dir / "latest.pt", progress=False).fit()


def test_resume_after_interrupt_gives_identical_losses(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "a", real_label_min=0.8, label_flip_prob=0.1, instance_noise=0.05)
    straight = Trainer(cfg, progress=False).fit()
    expected = step_losses(straight.run_dir)

    resumed = interrupt_and_resume(cfg.replace(output_dir=str(tmp_path / "b")), 6)  # mid-epoch (4 steps each)
    assert resumed.status == "done" and resumed.step == straight.step
    assert step_losses(resumed.run_dir) == expected  # bit-identical on CPU


@pytest.fixture(scope="module")
def data_root_12(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data12"), size=32, n_train=12, n_val=2, n_test=1, seed=4)


def test_resume_is_exact_after_every_step_position_of_an_epoch(data_root_12, tmp_path):
    """12 pairs at batch 2: 6 steps an epoch. Interrupt right after each step of
    epoch 1 (the last one, step 12, included), resume, and compare every tensor
    of the final checkpoint with the uninterrupted run's."""
    cfg = tiny_config(data_root_12, tmp_path / "straight", epochs=1, epochs_decay=2, dropout=False,
                      label_flip_prob=0.1, eval_every=0, save_every=100)
    straight = Trainer(cfg, progress=False).fit()
    assert straight.step == 18
    expected = ckpt.load_checkpoint(straight.run_dir / "latest.pt")

    for stop_after in range(7, 13):
        cfg_i = cfg.replace(output_dir=str(tmp_path / f"stop{stop_after}"))
        trainer = Trainer(cfg_i, progress=False)

        def interrupt(losses, trainer=trainer, stop_after=stop_after):
            if trainer.step == stop_after - 1:  # the step being taken is number `stop_after`
                os.kill(os.getpid(), signal.SIGINT)
            return losses

        trainer.step_fn = HookedStep(trainer.step_fn, interrupt)
        first = trainer.fit()
        assert first.status == "interrupted" and first.step == stop_after
        saved = ckpt.load_checkpoint(first.run_dir / "latest.pt")
        assert (saved["epoch"], saved["batch_in_epoch"]) == divmod(stop_after, 6)
        resumed = Trainer(cfg_i, resume=first.run_dir / "latest.pt", progress=False).fit()
        assert resumed.status == "done" and resumed.step == 18
        final = ckpt.load_checkpoint(resumed.run_dir / "latest.pt")
        assert final["epoch"] == expected["epoch"] == 3
        for net in ("G", "D"):
            assert final[net].keys() == expected[net].keys()
            for key, value in expected[net].items():
                assert torch.equal(final[net][key], value), (stop_after, net, key)
        for opt in ("opt_G", "opt_D"):
            for index, state in expected[opt]["state"].items():
                for key, value in state.items():
                    assert torch.equal(final[opt]["state"][index][key], value), (stop_after, opt, index, key)


def test_resume_from_a_checkpoint_saved_at_the_end_of_an_epoch_by_older_versions(data_root_12, tmp_path):
    """Older checkpoints stored an epoch's end as (epoch, steps_per_epoch): resume reads it as (epoch + 1, 0)."""
    cfg = tiny_config(data_root_12, tmp_path / "straight", epochs=1, epochs_decay=1, dropout=False)
    straight = Trainer(cfg, progress=False).fit()
    expected = ckpt.load_checkpoint(straight.run_dir / "latest.pt")

    cfg_b = cfg.replace(output_dir=str(tmp_path / "b"), max_steps=6)
    first = Trainer(cfg_b, progress=False).fit()
    state = ckpt.load_checkpoint(first.run_dir / "latest.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 0)
    state["epoch"], state["batch_in_epoch"] = 0, 6
    ckpt.save_checkpoint(first.run_dir / "old.pt", state)
    resumed = Trainer(cfg.replace(output_dir=str(tmp_path / "b")), resume=first.run_dir / "old.pt", progress=False).fit()
    assert resumed.step == 12
    final = ckpt.load_checkpoint(resumed.run_dir / "latest.pt")
    for key, value in expected["G"].items():
        assert torch.equal(final["G"][key], value), key


def test_loader_standing_at_the_end_of_its_epoch_yields_nothing(data_root_12):
    from pix2pix_fast.train.trainer import make_dataset, make_loader

    cfg = tiny_config(data_root_12, "unused")
    loader = make_loader(cfg, make_dataset(cfg, "train"), train=True, device=torch.device("cpu"))
    loader.state = {**loader.state, "epoch": 2, "batch": len(loader)}
    loader.set_epoch(2)
    assert list(loader) == []
    loader.set_epoch(3)
    assert len(list(loader)) == len(loader) == 6


def test_resume_restores_fp16_loss_scale(data_root, tmp_path, monkeypatch):
    # fp16 needs CUDA; a CPU GradScaler stands in for the one EagerStep makes there.
    import pix2pix_fast.train.build as build_mod

    class ScaledStep(build_mod.EagerStep):
        def __init__(self, *args):
            super().__init__(*args)
            self.scaler = torch.amp.GradScaler("cpu")

    monkeypatch.setattr(build_mod, "EagerStep", ScaledStep)
    cfg = tiny_config(data_root, tmp_path)
    first = Trainer(cfg, progress=False)
    state = first.step_fn.scaler.state_dict()
    first.step_fn.scaler.load_state_dict({**state, "scale": 512.0, "_growth_tracker": 7})
    path = first.save_checkpoint("latest.pt")
    assert ckpt.load_checkpoint(path)["scaler"]["scale"] == 512.0

    resumed = Trainer(cfg, resume=path, progress=False)
    assert resumed.step_fn.scaler.state_dict() == {**state, "scale": 512.0, "_growth_tracker": 7}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path):
    trainer = Trainer(tiny_config(data_root, tmp_path), progress=False)
    trainer.step_fn = HookedStep(trainer.step_fn, lambda out: out * float("nan") if trainer.step >= 4 else out)
    latest = trainer.run_dir / "latest.pt"
    result = trainer.fit()
    assert result.status == "nan"
    state = ckpt.load_checkpoint(latest)
    assert state["step"] == 4  # written at the end of epoch 1, never overwritten with NaN weights
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())


def test_resume_rejects_other_architecture(data_root, tmp_path):
    run = Trainer(tiny_config(data_root, tmp_path, epochs=1, epochs_decay=0), progress=False).fit()
    before = (run.run_dir / "latest.pt").read_bytes()
    other = tiny_config(data_root, tmp_path, ngf=16, name="other")
    with pytest.raises(ckpt.CheckpointError, match="different architecture"):
        Trainer(other, resume=run.run_dir / "latest.pt", progress=False)
    assert (run.run_dir / "latest.pt").read_bytes() == before


def test_l1_only_baseline_trains_without_discriminator(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, gan_mode="none", epochs=1, epochs_decay=0)
    trainer = Trainer(cfg, progress=False)
    d_before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    result = trainer.fit()
    assert result.status == "done"
    assert all(torch.equal(d_before[k], v) for k, v in trainer.D.state_dict().items())
    assert all(losses[0] == 0 and losses[1] == 0 for losses in step_losses(result.run_dir).values())


def test_a_flipped_byte_deep_in_a_checkpoint_is_an_error_naming_the_file(data_root, tmp_path):
    import zipfile

    run = Trainer(tiny_config(data_root, tmp_path, epochs=1, epochs_decay=0), progress=False).fit()
    path = run.run_dir / "latest.pt"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        biggest = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        data = zf.read(biggest)
    at = raw.find(data) + len(data) // 2
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match=f"{path}: checkpoint is damaged"):
        ckpt.load_checkpoint(path)


def test_nan_before_any_checkpoint_does_not_claim_one(data_root, tmp_path, capsys):
    trainer = Trainer(tiny_config(data_root, tmp_path), progress=False)
    trainer.step_fn = HookedStep(trainer.step_fn, lambda out: out * float("nan"))
    assert trainer.fit().status == "nan"
    err = capsys.readouterr().err
    assert f"no checkpoint was written ({trainer.run_dir} holds none)" in err and "kept in" not in err
    assert not (trainer.run_dir / "latest.pt").exists()


def test_start_removes_what_killed_saves_left(data_root, tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = ("import sys; from pix2pix_fast.fileio import temp_sibling; "
            "temp_sibling(sys.argv[1]).write_bytes(b'x' * 1000)")  # the process ends as if killed mid-save
    subprocess.run([sys.executable, "-c", code, str(run_dir / "latest.pt")], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    Trainer(tiny_config(data_root, tmp_path), progress=False)
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_refused_pickle_says_why(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("never printed",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "G": Payload()}, path)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: refused to load") and "Unsupported global: GLOBAL print" in str(e.value)


def test_trainer_resume_enforces_the_rule_of_the_command_line(data_root, tmp_path):
    """Trainer(cfg, resume=...) refuses what `train --resume` refuses (train/resume.py): an option
    outside the run-control ones that differs from the checkpoint's config; those may change."""
    run = Trainer(tiny_config(data_root, tmp_path, max_steps=2), progress=False).fit()
    with pytest.raises(ConfigError, match=r"^--lr differs from the checkpoint's config") as e:
        Trainer(tiny_config(data_root, tmp_path, max_steps=4, lr=1e-3), resume=run.run_dir / "latest.pt",
                progress=False)
    assert "\n" not in str(e.value)
    resumed = Trainer(tiny_config(data_root, tmp_path, max_steps=4), resume=run.run_dir / "latest.pt", progress=False)
    assert resumed.fit().step == 4
