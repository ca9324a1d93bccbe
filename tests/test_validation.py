"""Validation in training: batched through the inference runtime of --val-runtime, or skipped."""
import json

import pytest

from pix2pix_fast.config import ConfigError
from pix2pix_fast.data.synthetic import synthetic_dataset
from pix2pix_fast.runtime import onnx_available
from pix2pix_fast.train.trainer import Trainer
from tiny import tiny_run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=4, n_val=5, n_test=1, seed=3)


def test_no_validation_skips_it(data_root, tmp_path):
    result = Trainer(tiny_run(data_root, tmp_path, validation=False, eval_every=1), progress=False).fit()
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert result.status == "done" and result.val == {}
    assert not [r for r in records if "eval" in r] and any("loss_D" in r for r in records)


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime or onnx not installed")
def test_validation_through_onnx_runtime_matches_eager(data_root, tmp_path):
    trainer = Trainer(tiny_run(data_root, tmp_path, val_runtime="eager"), progress=False)
    eager = trainer.validate()
    trainer.cfg = trainer.cfg.replace(val_runtime="onnx")
    onnx = trainer.validate()
    assert set(onnx) == set(eager) == {"l1", "psnr", "ssim", "l1_copy_input"}
    # Means of outputs that agree within fp32 rounding (tests/test_runtime.py's ATOL, 1e-4).
    assert abs(onnx["l1"] - eager["l1"]) <= 1e-4 and abs(onnx["ssim"] - eager["ssim"]) <= 1e-3
    assert onnx["l1_copy_input"] == eager["l1_copy_input"]
    assert trainer.G.training  # validation leaves G in train mode


def test_a_val_runtime_that_cannot_run_is_refused_before_training(data_root, tmp_path, monkeypatch):
    import pix2pix_fast.runtime as rt

    monkeypatch.setattr(rt, "onnx_available", lambda: False)
    with pytest.raises(ConfigError, match="--runtime onnx needs onnxruntime"):
        Trainer(tiny_run(data_root, tmp_path, val_runtime="onnx"), progress=False)
    assert not (tmp_path / "run" / "log.jsonl").exists()
    Trainer(tiny_run(data_root, tmp_path / "b", val_runtime="onnx", validation=False), progress=False)
