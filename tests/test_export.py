import importlib.util

import numpy as np
import pytest
import torch

from pix2pix_fast.config import ConfigError
from pix2pix_fast.errors import DataError
from pix2pix_fast.interop.export import export
from pix2pix_fast.inference import Pix2Pix
from pix2pix_fast.checkpoint import CheckpointError
from tiny import save_tiny_checkpoint, tiny_config


@pytest.fixture
def ckpt(tmp_path):
    # unet_64 has a dropout level and BatchNorm: both must be in eval mode in the export.
    path = tmp_path / "latest.pt"
    save_tiny_checkpoint(path, tiny_config(netG="unet_64", norm="batch", crop_size=64, load_size=64))
    return path


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 128, 192, generator=g) * 2 - 1]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_matches_pytorch_eval_mode(ckpt, tmp_path):
    out = export(ckpt, tmp_path / "exports" / "g.ts", format="torchscript")
    assert out.is_file()
    loaded = torch.jit.load(str(out))
    ref = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True)
    for x in _inputs():
        with torch.no_grad():
            got = loaded(x)
        torch.testing.assert_close(got, ref(x), rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), got, rtol=0, atol=0)  # no dropout in the export


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export test needs onnx, onnxscript and onnxruntime (pip install 'pix2pix-fast[export]')",
)
def test_onnx_matches_pytorch_with_dynamic_shapes(ckpt, tmp_path):
    import onnxruntime as ort

    out = export(ckpt, tmp_path / "g.onnx", format="onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    ref = Pix2Pix.from_checkpoint(ckpt, device="cpu", eval_mode=True)
    for x in _inputs():
        (got,) = sess.run(["output"], {"input": x.numpy()})
        np.testing.assert_allclose(got, ref(x).numpy(), rtol=1e-4, atol=1e-5)


def test_bad_requests(ckpt, tmp_path):
    with pytest.raises(ConfigError, match="--format"):
        export(ckpt, tmp_path / "g.x", format="tflite")
    with pytest.raises(ConfigError, match="--size 48 is not a positive multiple of 64"):
        export(ckpt, tmp_path / "g.ts", format="torchscript", size=48)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export(tmp_path / "nope.pt", tmp_path / "g.ts", format="torchscript")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create output folder"):
        export(ckpt, blocker / "sub" / "g.ts", format="torchscript")
    (tmp_path / "folder.ts").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        export(ckpt, tmp_path / "folder.ts", format="torchscript")
