"""The command line: option resolution, end-to-end train/test, and one-line errors for bad input."""
import pytest

from pix2pix_fast.cli import build_parser, main, resolve_train_config
from pix2pix_fast.config import CPU_QUICKSTART, TrainConfig
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
