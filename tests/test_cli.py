"""The command line: option resolution, end-to-end train/test, and one-line errors for bad input."""
import json

import pytest

from pix2pix_fast.cli import build_parser, main, resolve_train_config
from pix2pix_fast.config import CPU_QUICKSTART, Range, TrainConfig
from pix2pix_fast.data.synthetic import synthetic_dataset

TINY = ["--netG", "unet_32", "--ngf", "8", "--ndf", "8", "--load-size", "36", "--crop-size", "32",
        "--batch-size", "2", "--epochs", "1", "--epochs-decay", "1", "--loader-threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=4, n_val=2, n_test=2, seed=5)


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pix2pix-fast"), err
    assert "Traceback" not in err[0]
    return err[0]


def parse_train(argv):
    return resolve_train_config(build_parser().parse_args(["train", *argv]))[0]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in out, name


def test_flags_and_config_file_resolution(tmp_path):
    cfg = parse_train(["--dataroot", "x", "--ngf", "32", "--no-flip", "--gan-mode", "lsgan"])
    assert (cfg.ngf, cfg.flip, cfg.gan_mode, cfg.ndf) == (32, False, "lsgan", 64)
    conf = tmp_path / "c.yaml"
    conf.write_text("dataroot: y\nlambda-l1: 10\nngf: 16\n")
    cfg = parse_train(["--config", str(conf), "--ngf", "8"])
    assert (cfg.dataroot, cfg.lambda_l1, cfg.ngf) == ("y", 10.0, 8)  # the flag wins over the file


def test_cpu_quickstart_applies_only_to_options_not_given(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = parse_train([])
    assert all(getattr(cfg, k) == v for k, v in CPU_QUICKSTART.items())
    cfg = parse_train(["--ngf", "16"])
    assert cfg.ngf == 16 and cfg.crop_size == CPU_QUICKSTART["crop_size"]
    assert parse_train(["--full"]).netG == "unet_256"
    assert parse_train(["--dataroot", "somewhere"]).netG == "unet_256"


def test_train_then_test_end_to_end(data_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--dataroot", str(data_root), "--output-dir", str(out), *TINY]) == 0
    ckpt = out / "experiment" / "latest.pt"
    assert ckpt.is_file() and (out / "experiment" / "loss_curves.png").is_file()
    assert main(["test", str(ckpt), "--split", "test", "--quiet"]) == 0
    index = out / "experiment" / "test_test" / "index.html"
    assert index.is_file() and index.read_text().count("<img") == 2 * 3
    # a folder of images of another size: reflect-padded and cropped back
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (45, 29), (120, 30, 200)).save(folder / "odd.png")
    assert main(["test", str(ckpt), "--input", str(folder), "--out", str(tmp_path / "t2"), "--quiet"]) == 0
    assert Image.open(tmp_path / "t2" / "images" / "odd_output.png").size == (45, 29)
    # resume with a changed model option is refused in one line
    assert main(["train", "--dataroot", str(data_root), "--output-dir", str(out), *TINY[:-1], "--ngf", "16",
                 "--resume"]) == 2
    assert "--ngf" in one_error_line(capsys)


@pytest.mark.parametrize("case", ["missing_folder", "empty_folder", "corrupt_image", "not_an_image", "bad_config",
                                  "missing_checkpoint", "unwritable_output"])
def test_bad_input_gives_one_line(case, tmp_path, capsys):
    root = tmp_path / "data"
    victim = None
    argv = ["train", "--dataroot", str(root), "--output-dir", str(tmp_path / "runs"), *TINY]
    if case == "empty_folder":
        (root / "train").mkdir(parents=True)
    elif case in ("corrupt_image", "not_an_image"):
        good = synthetic_dataset(tmp_path / "syn", size=32, n_train=4, n_val=1, n_test=1, seed=1)
        import shutil

        shutil.copytree(good, root)
        victim = sorted((root / "train").iterdir())[1]
        if case == "corrupt_image":
            victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
        else:
            victim.write_text("this is not an image")
    elif case == "bad_config":
        conf = tmp_path / "c.yaml"
        conf.write_text("ngf: [1, 2\n")
        argv = ["train", "--config", str(conf)]
    elif case == "missing_checkpoint":
        argv = ["test", str(tmp_path / "nope.pt")]
    elif case == "unwritable_output":
        synthetic_dataset(root, size=32, n_train=4, n_val=1, n_test=1, seed=1)
        blocker = tmp_path / "file"
        blocker.write_text("x")
        argv = ["train", "--dataroot", str(root), "--output-dir", str(blocker / "runs"), *TINY]
    assert main(argv) == 2
    line = one_error_line(capsys)
    expected = {"missing_folder": str(root), "empty_folder": str(root), "corrupt_image": str(victim),
                "not_an_image": str(victim), "bad_config": "c.yaml", "missing_checkpoint": "nope.pt",
                "unwritable_output": "runs"}[case]
    assert expected in line


def test_unknown_option_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--norm", "layer"])
    assert e.value.code == 2
    assert "--norm" in one_error_line(capsys)


# ------------------------------------------------------- numbers and names
def exit_status(argv):
    """main()'s status; argparse's own errors end in SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def numeric_options():
    """(verb, flag, action) for every option of every verb that takes a number."""
    import argparse

    out = []

    def walk(parser, verb):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{verb} {name}".strip())
            elif action.option_strings and (isinstance(action.type, Range) or action.type in (int, float)
                                            or action.dest == "batch_sizes"):
                out.append((verb, action.option_strings[-1], action))

    walk(build_parser(), "")
    return out


def test_every_numeric_option_is_checked_by_one_range_stated_in_its_help():
    options = numeric_options()
    assert {verb for verb, _, _ in options} >= {"train", "test", "eval", "export", "bench", "demo", "data synthetic",
                                                 "import-reference"}
    for verb, flag, action in options:
        assert action.type is not int and action.type is not float, f"{verb} {flag} bypasses Range"
        if isinstance(action.type, Range):
            assert action.type.describe() in action.help, f"{verb} {flag}: its range is not in --help"


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "99999999999999999999999"])
def test_every_numeric_option_of_every_verb_fails_in_one_line(value, tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    base = {  # each fails fast, in one line, once its options are accepted
        "train": ["train", "--resume", missing],
        "test": ["test", missing],
        "eval": ["eval", missing],
        "export": ["export", missing, "--out", str(tmp_path / "g.onnx")],
        "demo": ["demo", missing],
        "import-reference": ["import-reference", missing, "--out", str(tmp_path / "m.pt")],
        "data synthetic": ["data", "synthetic", str(a_file)],
        "bench": ["bench", "--variant", "nope", "--device", "cpu"],
    }
    for verb, flag, action in numeric_options():
        capsys.readouterr()
        assert exit_status([*base[verb], flag, value]) == 2, (verb, flag, value)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], (verb, flag, value, err)
        number = action.type if isinstance(action.type, Range) else None
        parsed = None
        try:
            parsed = number.kind(value) if number else None
        except ValueError:
            pass
        if number is None or not number.contains(parsed):
            assert flag in err[0], (verb, flag, value, err)


@pytest.mark.parametrize("text, option", [
    ("1: 2\n", "1"),
    ("lr: .nan\n", "--lr"),
    ("name: {a: 1}\n", "--name"),
    ("name: ''\n", "--name"),
    ("name: ../x\n", "--name"),
    ("ngf: true\n", "--ngf"),
    ("beta2: .inf\n", "--beta2"),
])
def test_bad_config_file_values_are_one_line(text, option, tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    # (the missing dataroot would stop a run that took the value, before it trained)
    assert main(["train", "--config", str(conf), "--output-dir", str(tmp_path / "runs"),
                 "--dataroot", str(tmp_path / "missing")]) == 2
    assert option in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["", "../../x", "a/b", ".."])
def test_name_is_one_folder_name(name, tmp_path, capsys):
    assert main(["train", "--name", name, "--output-dir", str(tmp_path / "runs"), "--dataroot",
                 str(tmp_path / "missing"), *TINY]) == 2
    assert "--name" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["crop_not_a_multiple", "none_not_a_multiple", "scale_width_of_tiny_images",
                                  "discriminator_too_deep", "synthetic_too_small"])
def test_sizes_the_networks_cannot_take_are_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIX2PIX_FAST_CACHE", str(tmp_path / "cache"))
    argv = ["train", "--full", "--output-dir", str(tmp_path / "runs"), "--ngf", "8", "--ndf", "8", "--batch-size", "1",
            "--synthetic-count", "4", "--loader-threads", "1", "--quiet"]
    if case == "crop_not_a_multiple":
        argv += ["--netG", "unet_256", "--crop-size", "100", "--load-size", "100"]
        expected = "multiples of 256"
    elif case == "none_not_a_multiple":
        argv += ["--netG", "unet_64", "--crop-size", "100", "--preprocess", "none"]
        expected = "multiples of 64"
    elif case == "scale_width_of_tiny_images":
        from PIL import Image

        for side in ("A", "B"):
            (tmp_path / "tiny" / "train" / side).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (2, 1), (40 * i, 0, 0)).save(tmp_path / "tiny" / "train" / side / f"{i}.png")
        argv += ["--dataroot", str(tmp_path / "tiny"), "--netG", "unet_64", "--crop-size", "64", "--load-size",
                 "72", "--preprocess", "scale_width"]
        expected = "64x72"
    elif case == "discriminator_too_deep":
        argv += ["--netG", "unet_16", "--crop-size", "16", "--load-size", "16"]
        expected = "3-layer PatchGAN"
    else:
        argv += ["--netG", "unet_8", "--crop-size", "8", "--load-size", "8"]
        expected = "--crop-size"
    assert main(argv) == 2
    assert expected in one_error_line(capsys)


# ------------------------------------------------ run folders and checkpoints
@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A 4-step run's latest.pt (2 epochs of 2 steps)."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--dataroot", str(data_root), "--output-dir", str(out), *TINY]) == 0
    return out / "experiment" / "latest.pt"


def copy_with_config(src, dst, **config):
    from pix2pix_fast.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(src)
    state["config"].update(config)
    return save_checkpoint(dst, state)


def test_resume_writes_where_the_command_line_says_never_where_the_checkpoint_says(trained, tmp_path, capsys):
    from pix2pix_fast.checkpoint import load_checkpoint

    ckpt = copy_with_config(trained, tmp_path / "run" / "latest.pt",
                            output_dir=str(tmp_path / "some" / "dir"), name="../escaped")
    # no --output-dir / --name: the folder the checkpoint lies in
    assert main(["train", "--resume", str(ckpt), "--epochs", "2", "--loader-threads", "1", "--quiet"]) == 0
    assert not (tmp_path / "some").exists()
    assert load_checkpoint(ckpt)["step"] == 6 and (tmp_path / "run" / "log.jsonl").is_file()
    # given: exactly there
    assert main(["train", "--resume", str(ckpt), "--epochs", "3", "--output-dir", str(tmp_path / "elsewhere"),
                 "--name", "cont", "--loader-threads", "1", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "elsewhere" / "cont" / "latest.pt")["step"] == 8
    assert not (tmp_path / "some").exists()


def test_train_refuses_a_folder_that_holds_a_run_unless_told_to_overwrite(data_root, tmp_path, capsys):
    argv = ["train", "--dataroot", str(data_root), "--output-dir", str(tmp_path), "--name", "x", *TINY]
    assert main(argv) == 0
    first = (tmp_path / "x" / "latest.pt").read_bytes()
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "--resume" in line and "--overwrite" in line and str(tmp_path / "x") in line
    assert (tmp_path / "x" / "latest.pt").read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0
    log = (tmp_path / "x" / "log.jsonl").read_text().splitlines()
    assert [r["step"] for r in map(json.loads, log) if "loss_D" in r] == [2, 4]  # the new run's, once


@pytest.mark.parametrize("verb", ["test", "eval", "export", "demo"])
def test_a_checkpoint_whose_config_disagrees_with_its_weights_allocates_nothing(verb, trained, tmp_path, capsys,
                                                                                monkeypatch):
    import pix2pix_fast.models as models

    built = []
    real = models.build_generator

    def spy(cfg, **kw):
        net = real(cfg, **kw)
        built.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(models, "build_generator", spy)
    ckpt = copy_with_config(trained, tmp_path / "wide.pt", ngf=16)  # its weights are ngf 8
    argv = {"test": ["test", str(ckpt)], "eval": ["eval", str(ckpt)],
            "export": ["export", str(ckpt), "--out", str(tmp_path / "g.pt"), "--format", "torchscript"],
            "demo": ["demo", str(ckpt), "--port", "0"]}[verb]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "different architecture" in line and "(8, 3, 4, 4)" in line and "(16, 3, 4, 4)" in line
    assert built and set(built) == {"meta"}
    assert not (tmp_path / "g.pt").exists()


def test_a_huge_config_in_a_tiny_checkpoint_is_one_line(trained, tmp_path, capsys):
    from pix2pix_fast.checkpoint import save_checkpoint

    cfg = TrainConfig().to_dict()
    save_checkpoint(tmp_path / "big.pt", {"config": {**cfg, "ngf": 8192}, "G": {}})
    save_checkpoint(tmp_path / "empty.pt", {"config": {**cfg, "ngf": 1024}, "G": {}})
    assert main(["test", str(tmp_path / "big.pt")]) == 2
    assert "--ngf" in one_error_line(capsys)
    assert main(["test", str(tmp_path / "empty.pt")]) == 2
    assert "different architecture (G: no 'down.0.conv.weight'" in one_error_line(capsys)


def test_test_refuses_inputs_whose_outputs_would_collide(trained, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "x.png")
    Image.new("RGB", (32, 32)).save(folder / "x.jpg")
    assert main(["test", str(trained), "--input", str(folder), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "x.png" in line and "x.jpg" in line


def _limited(max_bytes):
    import resource
    import signal

    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return set_limit


@pytest.mark.parametrize("fmt", ["torchscript", "reference"])
def test_export_onto_a_file_size_limit_is_one_line_and_leaves_nothing(fmt, trained, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out" / f"g.{'pth' if fmt == 'reference' else 'pt'}"
    out.parent.mkdir()
    code = "import sys; from pix2pix_fast.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "export", str(trained), "--format", fmt, "--out", str(out)],
                       preexec_fn=_limited(20_000), capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [f"pix2pix-fast: error: cannot write {out}: File too large"]
    assert list(out.parent.iterdir()) == []


def test_full_disk_while_training_names_the_file_and_the_last_good_checkpoint(data_root, tmp_path, capsys,
                                                                              full_disk):
    from pix2pix_fast.checkpoint import load_checkpoint

    full_disk("latest.pt", after=2000, skip=1)  # epoch 1's checkpoint is written, epoch 2's is not
    assert main(["train", "--dataroot", str(data_root), "--output-dir", str(tmp_path), *TINY]) == 2
    latest = tmp_path / "experiment" / "latest.pt"
    assert one_error_line(capsys) == (f"pix2pix-fast: error: no space left on device writing {latest}; "
                                      f"the last good checkpoint is {latest}")
    assert load_checkpoint(latest)["step"] == 2
    assert not [p for p in latest.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("writer", ["test", "combine"])
def test_full_disk_while_writing_outputs_is_one_line(writer, trained, data_root, tmp_path, capsys, full_disk):
    full_disk("*.png", after=100)
    if writer == "test":
        argv = ["test", str(trained), "--split", "test", "--out", str(tmp_path / "o"), "--quiet"]
    else:
        argv = ["data", "combine", str(data_root / "train"), str(data_root / "train"), str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after combine's progress bar
    assert line.startswith(f"pix2pix-fast: error: no space left on device writing {tmp_path / 'o'}")
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file() and p.suffix in (".png", ".tmp")]
