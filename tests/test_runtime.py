"""Inference runtimes (runtime.py): the same outputs as eager, and one-line errors."""
import pytest
import torch

from pix2pix_fast.cli import main
from pix2pix_fast.config import ConfigError
from pix2pix_fast.inference import Pix2Pix
from pix2pix_fast import runtime as rt
from tiny import save_tiny_checkpoint

CPU = torch.device("cpu")
needs_onnx = pytest.mark.skipif(not rt.onnx_available(), reason="onnxruntime or onnx not installed")
# fp32 rounding of the tiny U-Net: its widest sums have 4 x 4 x 64 = 1024 terms, so one
# layer may differ by about 1024 x 2**-24 (6e-5) of the sum of |terms| in another summation
# order; activations and weights keep those sums below 1, and tanh does not amplify.
ATOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "latest.pt"
    save_tiny_checkpoint(path, step=3)
    return path


def _inputs(n=2, h=37, w=45):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(n * h)) * 2 - 1


def test_resolve_runtime_refuses_what_cannot_run(monkeypatch):
    with pytest.raises(ConfigError, match="--eval-mode"):
        rt.resolve_runtime("onnx", CPU, eval_mode=False)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        rt.resolve_runtime("onnx", torch.device("cuda"), eval_mode=True)
    with pytest.raises(ConfigError, match="fp32"):
        rt.resolve_runtime("onnx", CPU, eval_mode=True, precision="bf16")
    with pytest.raises(ConfigError, match="not one of"):
        rt.resolve_runtime("tensorrt", CPU, eval_mode=True)
    monkeypatch.setattr(rt, "onnx_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'pix2pix-fast\[export\]'"):
        rt.resolve_runtime("onnx", CPU, eval_mode=True)
    # auto never asks for what is missing or cannot run: eager then
    assert rt.resolve_runtime("auto", CPU, eval_mode=True) == "eager"
    assert rt.resolve_runtime("auto", torch.device("cuda"), eval_mode=True) == "eager"


def test_auto_is_eager_in_train_mode_and_for_single_calls(ckpt):
    sampling = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=False)
    assert sampling.runtime_name == "eager"
    deterministic = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True)
    deterministic(_inputs())
    assert deterministic.runtime_name == "eager"  # nothing expected beyond this call: no export


@needs_onnx
def test_onnx_runtime_matches_eager_at_any_size_and_margin(ckpt):
    eager = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, runtime="eager")
    onnx = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, runtime="onnx")
    assert onnx.runtime_name == "onnx"
    for n, h, w, margin in ((1, 32, 32, 0), (3, 37, 45, 0), (2, 20, 70, 6)):
        x = _inputs(n, h, w)
        torch.testing.assert_close(onnx(x, margin=margin), eager(x, margin=margin), rtol=0, atol=ATOL)


def test_auto_switches_to_onnx_when_the_work_ahead_pays_for_the_export(ckpt, monkeypatch):
    exported = []

    def fake_onnx(G, multiple, input_nc):  # the real export is checked above; here: when it happens
        exported.append((multiple, input_nc))
        return lambda x: G(x) + 1

    monkeypatch.setattr(rt, "_onnx", fake_onnx)
    monkeypatch.setattr(rt, "onnx_available", lambda: True)
    monkeypatch.setattr(rt, "ONNX_PAYS_AFTER_S", 0.0)
    eager = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, runtime="eager")
    x = _inputs(2, 32, 32)
    auto = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, expected_images=2)
    torch.testing.assert_close(auto(x), eager(x), rtol=0, atol=0)
    assert auto.runtime_name == "eager" and not exported  # the first call was all the work
    auto = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, expected_images=4)
    torch.testing.assert_close(auto(x), eager(x), rtol=0, atol=0)  # the first call runs eager
    assert auto.runtime_name == "onnx" and exported == [(32, 3)]
    torch.testing.assert_close(auto(x), (eager(x) + 1).clamp(-1, 1), rtol=0, atol=0)


@pytest.mark.slow  # inductor compiles the tiny U-Net: about a minute on 2 cores
def test_compiled_runtime_matches_eager(ckpt):
    eager = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, runtime="eager")
    compiled = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True, runtime="compiled")
    assert compiled.runtime_name == "compiled"
    x = _inputs(2, 32, 32)
    torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=ATOL)


@pytest.mark.parametrize("verb", ["test", "eval"])
def test_cli_runtime_onnx_without_eval_mode_is_one_line(ckpt, verb, capsys):
    assert main([verb, str(ckpt), "--runtime", "onnx", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-mode" in err[0] and "Traceback" not in err[0], err


def test_cli_runtime_choices_are_checked(ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        main(["test", str(ckpt), "--runtime", "tensorrt"])
    assert e.value.code == 2
    assert "--runtime" in capsys.readouterr().err


@needs_onnx
def test_cli_test_through_onnx_runtime_writes_the_eager_outputs(ckpt, tmp_path):
    import numpy as np
    from PIL import Image

    from pix2pix_fast.data.synthetic import synthetic_dataset

    root = synthetic_dataset(tmp_path / "data", size=32, n_train=1, n_val=1, n_test=2, seed=1)
    outs = {}
    for runtime in ("eager", "onnx"):
        out = tmp_path / runtime
        assert main(["test", str(ckpt), "--dataroot", str(root), "--eval-mode", "--runtime", runtime,
                     "--device", "cpu", "--out", str(out), "--quiet"]) == 0
        outs[runtime] = sorted((out / "images").glob("*_output.png"))
    assert len(outs["onnx"]) == 2 and [p.name for p in outs["onnx"]] == [p.name for p in outs["eager"]]
    for a, b in zip(outs["eager"], outs["onnx"]):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 1  # fp32 rounding can move a value across a uint8 rounding boundary
