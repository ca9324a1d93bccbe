"""The examples run: a short CycleGAN run with fuse() applied, against the same run unfused."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def cyclegan():
    spec = importlib.util.spec_from_file_location("cyclegan_fused", EXAMPLES / "cyclegan_fused.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cyclegan_fused_loss_curve_matches_unfused(cyclegan):
    kw = dict(steps=3, size=32, ngf=4, n_blocks=2, seed=1, verbose=False)
    fused = cyclegan.train(fused=True, **kw)
    plain = cyclegan.train(fused=False, **kw)
    g = fused["fused"]["G"]
    # stem, 2 downs, 2 ups and one per block carry their ReLU; each block folds a pad, the head's pad too.
    assert (g["InstanceNormAct"], g["folded_acts"], g["folded_pads"]) == (5 + 2 * 2, 5 + 2, 2 + 1)
    assert fused["fused"]["D"]["InstanceNormAct"] == 3
    assert len(fused["losses"]) == len(plain["losses"]) == 3
    for step, (a, b) in enumerate(zip(fused["losses"], plain["losses"])):
        for k in b:
            assert abs(a[k] - b[k]) <= 1e-5 * abs(b[k]) + 1e-6, f"step {step} {k}: {a[k]} vs {b[k]}"


def test_cyclegan_example_command_line(cyclegan, capsys):
    cyclegan.main(["--steps", "1", "--size", "32", "--ngf", "2", "--n-blocks", "1"])
    out = capsys.readouterr().out
    assert "step     1" in out and f"fused per generator: {5 + 2 * 1} InstanceNormAct" in out
