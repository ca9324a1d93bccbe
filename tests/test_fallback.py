"""A failure of the fast path costs speed, never the run; checkpoints move between backends.

The fast step runs on CPU here without compile and graph (its math is the
same); failures are injected at each point where the GPU path can fail:
compile, a warm-up step (after it has already updated the weights), and the
capture (which really fails on a machine without CUDA). Each run must end
with exactly the weights of a run that never failed in the mode it ended in.
"""
import pytest
import torch

from pix2pix_fast.config import TrainConfig
from tiny import tiny_run
from pix2pix_fast.data.synthetic import synthetic_dataset
from pix2pix_fast import checkpoint as ckpt
from pix2pix_fast.train import build as build_mod
from pix2pix_fast.train.fallback import Mode, next_mode
from pix2pix_fast.cuda_graph import CudaGraph
from pix2pix_fast.train.fast import FastStep, FastStepFailure
from pix2pix_fast.checkpoint import load_opt_state, portable_opt_state
from pix2pix_fast.train.build import build_models
from pix2pix_fast.train.trainer import Trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data"), size=32, n_train=8, n_val=2, n_test=1, seed=5)


def tiny_config(root, out, **kw):
    return tiny_run(root, out, **{"dropout": True, "label_flip_prob": 0.2, **kw})


def on_cpu_as_fast(monkeypatch, mode: Mode):
    """Make the trainer take the fast backend on CPU, starting in `mode`."""
    monkeypatch.setattr(build_mod, "resolve_backend", lambda cfg, device: "fast")
    monkeypatch.setattr(build_mod, "initial_mode", lambda cfg, backend, device: mode)


def final_state(result):
    return ckpt.load_checkpoint(result.run_dir / "latest.pt")


def assert_same_training(got, want):
    assert got["step"] == want["step"] and got["epoch"] == want["epoch"]
    for net in ("G", "D"):
        assert got[net].keys() == want[net].keys()
        for key, value in want[net].items():
            assert torch.equal(got[net][key], value), (net, key)
    for opt in ("opt_G", "opt_D"):
        for index, state in want[opt]["state"].items():
            for key, value in state.items():
                assert torch.equal(got[opt]["state"][index][key].cpu(), value.cpu()), (opt, index, key)


class InjectedCompileError(torch._dynamo.exc.TorchDynamoException):
    pass


def failing_compile(model, **kwargs):
    def call(*args):
        raise InjectedCompileError("injected: inductor could not compile")

    return call


def test_next_mode_order():
    full = Mode("fast", compile=True, graph=True)
    assert next_mode(full, "compile") == Mode("fast", compile=False, graph=True)
    assert next_mode(full, "capture") == Mode("fast", compile=True, graph=False)
    assert next_mode(full, "warm-up") == Mode("eager")
    assert next_mode(Mode("fast", compile=False, graph=True), "compile") == Mode("eager")


def test_compile_failure_continues_uncompiled_without_losing_a_step(data_root, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(data_root, tmp_path / "plain")
    on_cpu_as_fast(monkeypatch, Mode("fast"))
    want = final_state(Trainer(cfg, progress=False).fit())

    on_cpu_as_fast(monkeypatch, Mode("fast", compile=True))
    monkeypatch.setattr(torch, "compile", failing_compile)
    result = Trainer(cfg.replace(output_dir=str(tmp_path / "failing")), progress=False).fit()
    assert result.status == "done" and result.step == 8
    lines = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert len(lines) == 1
    assert "compile of the fast step failed (InjectedCompileError" in lines[0]
    assert "continuing on the fast backend (not compiled, no CUDA graph) from step 0" in lines[0]
    assert_same_training(final_state(result), want)


def test_capture_failure_continues_without_graph(data_root, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(data_root, tmp_path / "plain")
    on_cpu_as_fast(monkeypatch, Mode("fast"))
    want = final_state(Trainer(cfg, progress=False).fit())

    # Warm-up steps run on a CUDA side stream before a capture; here plainly.
    # The capture itself is real: it fails on a machine without CUDA.
    monkeypatch.setattr(CudaGraph, "warm_up", lambda graph: graph.fn(*graph.static_in))
    on_cpu_as_fast(monkeypatch, Mode("fast", graph=True))
    result = Trainer(cfg.replace(output_dir=str(tmp_path / "failing")), progress=False).fit()
    assert result.status == "done"
    err = capsys.readouterr().err
    assert "capture of the fast step failed" in err
    assert "continuing on the fast backend (not compiled, no CUDA graph) from step 3" in err
    assert_same_training(final_state(result), want)


@pytest.mark.parametrize("failing_call", [1, 2])
def test_warmup_failure_after_an_update_goes_eager_from_the_state_before_it(
        data_root, tmp_path, monkeypatch, capsys, failing_call):
    """The injected failure comes after the step has updated D and G: the
    snapshot must undo it, and the eager step then takes that step again."""
    cfg = tiny_config(data_root, tmp_path / "ref")
    # The expected run: the fast step for the steps before the failure, then
    # resumed from its checkpoint on the eager backend.
    on_cpu_as_fast(monkeypatch, Mode("fast"))
    done_fast = failing_call - 1
    if done_fast:
        Trainer(cfg.replace(max_steps=done_fast), progress=False).fit()
        monkeypatch.setattr(build_mod, "resolve_backend", lambda cfg, device: "eager")
        monkeypatch.setattr(build_mod, "initial_mode", lambda cfg, backend, device: Mode("eager"))
        want = final_state(Trainer(cfg, resume=tmp_path / "ref" / "run" / "latest.pt", progress=False).fit())
    else:
        monkeypatch.setattr(build_mod, "resolve_backend", lambda cfg, device: "eager")
        monkeypatch.setattr(build_mod, "initial_mode", lambda cfg, backend, device: Mode("eager"))
        want = final_state(Trainer(cfg, progress=False).fit())

    calls = {"n": 0}
    original = FastStep._step

    def step_then_fail(self, A, B):
        out = original(self, A, B)
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise RuntimeError("injected: a kernel failed after the update")
        return out

    monkeypatch.setattr(FastStep, "_step", step_then_fail)
    on_cpu_as_fast(monkeypatch, Mode("fast"))
    trainer = Trainer(cfg.replace(output_dir=str(tmp_path / "failing")), progress=False)
    result = trainer.fit()
    assert result.status == "done" and trainer.backend == "eager"
    err = capsys.readouterr().err
    assert "warm-up of the fast step failed (RuntimeError: injected" in err
    assert f"continuing on the eager backend from step {done_fast}" in err
    assert_same_training(final_state(result), want)


def test_explicit_fast_backend_makes_a_failure_fatal(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root, tmp_path, backend="fast")
    on_cpu_as_fast(monkeypatch, Mode("fast", compile=True))
    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.raises(FastStepFailure, match="compile of the fast step failed"):
        Trainer(cfg, progress=False).fit()


def test_cli_reports_a_fatal_fast_step_failure_in_one_line(data_root, tmp_path, monkeypatch, capsys):
    from pix2pix_fast.cli import main

    on_cpu_as_fast(monkeypatch, Mode("fast", compile=True))
    monkeypatch.setattr(torch, "compile", failing_compile)
    code = main(["train", "--dataroot", str(data_root), "--output-dir", str(tmp_path), "--netG", "unet_32",
                 "--ngf", "8", "--ndf", "8", "--load-size", "32", "--crop-size", "32", "--batch-size", "2",
                 "--backend", "fast", "--max-steps", "2", "--loader-threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("pix2pix-fast: error: compile of the fast step failed (InjectedCompileError")


# ------------------------------------------------ auto picks what runs
def test_auto_backend_takes_eager_when_the_fast_path_cannot_run(monkeypatch, capsys):
    cfg = TrainConfig()
    cuda = torch.device("cuda")  # only compared, never used: the probe is replaced
    monkeypatch.setattr(build_mod, "fast_backend_problem", lambda device: "triton is not installed")
    assert build_mod.resolve_backend(cfg, cuda) == "eager"
    assert "pix2pix-fast: triton is not installed; training on the eager backend" in capsys.readouterr().err
    monkeypatch.setattr(build_mod, "fast_backend_problem", lambda device: None)
    assert build_mod.resolve_backend(cfg, cuda) == "fast"
    assert build_mod.resolve_backend(cfg.replace(backend="eager"), cuda) == "eager"


def test_auto_precision_without_bf16_trains_fp32_and_says_so(monkeypatch, capsys):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert build_mod.resolve_precision(TrainConfig(), cuda, "fast") is None
    assert "no bf16; the fast backend trains in fp32" in capsys.readouterr().err
    with pytest.raises(Exception, match="no bf16"):
        build_mod.resolve_precision(TrainConfig(precision="bf16"), cuda, "fast")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert build_mod.resolve_precision(TrainConfig(), cuda, "fast") is torch.bfloat16
    assert build_mod.resolve_precision(TrainConfig(), cuda, "eager") is None


def test_probe_names_the_missing_pieces(monkeypatch):
    from pix2pix_fast.train import fallback

    assert "CUDA" in fallback.fast_backend_problem(torch.device("cpu"))
    monkeypatch.setattr("pix2pix_fast.ops._common.triton_available", lambda: False)
    assert fallback.fast_backend_problem(torch.device("cuda")) == "triton is not installed"


# ------------------------------------- optimizer state across backends
def _steps(cfg, backend, G, D, opt_G, opt_D, n, seed):
    from pix2pix_fast.train.eager import EagerStep

    if backend == "fast":
        step = FastStep(cfg, G, D, opt_G, opt_D, None, use_graph=False, compile=False)
    else:
        step = EagerStep(cfg, G, D, opt_G, opt_D, None)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        A = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        B = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        losses = step(A, B)
    return losses


@pytest.mark.parametrize("source,target", [("eager", "fast"), ("fast", "eager")])
def test_optimizer_state_moves_between_backends(source, target):
    """An eager checkpoint resumed on the fast backend keeps the fast Adam's flags
    (fused, capturable, tensor LR), and the moments take each parameter's layout."""
    cfg = TrainConfig(netG="unet_32", ngf=8, ndf=8, crop_size=32, load_size=32, batch_size=2, dropout=False)
    G, D, opt_G, opt_D = build_models(cfg, source, torch.device("cpu"))
    if source == "fast":  # as on a GPU: channels_last parameters and moments
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        opt_G = build_mod.make_adam(G, cfg, "fast", torch.device("cpu"))
        opt_D = build_mod.make_adam(D, cfg, "fast", torch.device("cpu"))
    _steps(cfg, source, G, D, opt_G, opt_D, 2, seed=1)
    saved = {"G": G.state_dict(), "D": D.state_dict(),
             "opt_G": portable_opt_state(opt_G), "opt_D": portable_opt_state(opt_D)}

    G2, D2, opt_G2, opt_D2 = build_models(cfg, target, torch.device("cpu"))
    flags_before = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in opt_G2.param_groups]
    G2.load_state_dict(saved["G"]), D2.load_state_dict(saved["D"])
    load_opt_state(opt_G2, saved["opt_G"])
    load_opt_state(opt_D2, saved["opt_D"])
    assert [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in opt_G2.param_groups] == flags_before
    assert isinstance(opt_G2.param_groups[0]["lr"], torch.Tensor) == (target == "fast")
    for opt in (opt_G2, opt_D2):
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state[p]
                assert float(state["step"]) == 2.0
                assert state["exp_avg"].stride() == p.stride() and state["exp_avg_sq"].stride() == p.stride()
    losses = _steps(cfg, target, G2, D2, opt_G2, opt_D2, 2, seed=2)  # the first steps after loading run
    assert torch.isfinite(losses).all()
    assert all(float(opt_G2.state[p]["step"]) == 4.0 for p in G2.parameters())
