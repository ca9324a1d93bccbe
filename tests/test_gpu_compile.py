"""Every kernel launch the fast trainer can make compiles for sm_90a and sm_80, on a CPU.

The launches are derived, not listed: the real fused models (U-Net-256,
U-Net-128 and ResNet-9 with the 70x70 PatchGAN) run one step of the
trainer's fast step (``train.fast.FastStep``, without graph and compile) on
fake tensors (no memory, no arithmetic) at batch 1, and every custom-op call
is recorded.  Each call is turned into its
launches by the planning functions the ops themselves use at run time
(``norm_problem`` + ``heuristic_plan`` / ``candidate_plans`` +
``plan_launches``, ``plan_reflect_pad``, ``plan_patchgan_loss``,
``plan_conv_norm_act``), at batch 1, 16 and 64, bf16 autocast and fp32,
channels_last and NCHW, for the multiprocessor counts of the GPUs of each
architecture.  Where the models use a stock layer that a fast-path switch
replaces by one of the ops (``nn.ReflectionPad2d`` -> ``reflect_pad`` or
the norm's fused padding; a conv feeding an instance norm ->
``conv_norm_act``), the replacement's launches are derived from the same
call.  A change to a heuristic or a model is therefore compiled the day it
is made.

Default run: every launch the trainer makes (the heuristic plans), both
architectures; ``-m slow``: also every autotune candidate
(``PIX2PIX_FAST_AUTOTUNE=1``).  Compile results are cached on disk (see
``pix2pix_fast.ops.gpu_compile``), so a second run only re-plans.
"""
import dataclasses
import functools
import importlib
import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

triton = pytest.importorskip("triton")

from pix2pix_fast.config import TrainConfig  # noqa: E402
from pix2pix_fast.models import build_discriminator, build_generator  # noqa: E402
from pix2pix_fast.ops import gpu_compile  # noqa: E402
from pix2pix_fast.train.fast import FastStep  # noqa: E402
from pix2pix_fast.ops._common import dense_strides, grid_within_limits, normalize_pad, suggest_memory_format  # noqa: E402

# The package exports functions under the module names: import the modules.
CNA = importlib.import_module("pix2pix_fast.ops.conv_norm_act")
INA = importlib.import_module("pix2pix_fast.ops.instance_norm_act")
PGL = importlib.import_module("pix2pix_fast.ops.patchgan_loss")
RP = importlib.import_module("pix2pix_fast.ops.reflect_pad")

MODELS = {"unet_256": 256, "unet_128": 128, "resnet_9blocks": 256}
BATCHES = (1, 16, 64)
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
# Multiprocessor counts: H100 SXM / H200, H100 PCIe (sm_90); A100 (sm_80).
# The norm's fused-or-split choice depends on it; compiling the union of
# the plans for both architectures covers each GPU.
SM_COUNTS = (132, 114, 108)
MAX_SPILL_BYTES = 8


def _ptxas_missing() -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    for arch in gpu_compile.ARCHS:
        path = get_ptxas(arch).path
        if not path or not os.path.exists(path):
            return f"triton ships no ptxas for sm_{arch}"
    return ""


pytestmark = pytest.mark.skipif(bool(_ptxas_missing()), reason=_ptxas_missing() or "ptxas available")


# ---------------------------------------------------------------------------
# Recording the ops a fast step calls
# ---------------------------------------------------------------------------
class _Recorder(TorchDispatchMode):
    """Records pix2pix_fast custom-op calls and the stock layers the fast switches replace."""

    def __init__(self):
        super().__init__()
        self.calls = []  # (op name, args)
        self.producer = _Producers()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = f"{func.namespace}::{func._opname}"
        if func.namespace == "pix2pix_fast" or name in ("aten::reflection_pad2d", "aten::convolution"):
            self.calls.append((name, args))
            first = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(first, torch.Tensor):
                self.producer.set(first, (name, args))
        return out


class _Producers:
    """tensor -> the recorded call that produced it (by identity; the tensors are kept alive)."""

    def __init__(self):
        self._by_id = {}

    def set(self, t: torch.Tensor, call) -> None:
        self._by_id[id(t)] = (t, call)

    def get(self, t: torch.Tensor):
        entry = self._by_id.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None


def _fast_step(cfg, G, D, dtype):
    """The trainer's fast step (``train.fast.FastStep``) around G and D, without graph and
    compile; Adam's updates are left out (they launch no kernel of ours)."""
    opt_G, opt_D = (torch.optim.Adam(m.parameters(), lr=cfg.lr) for m in (G, D))
    opt_G.step = opt_D.step = lambda *args, **kwargs: None
    return FastStep(cfg, G, D, opt_G, opt_D, dtype, use_graph=False, compile=False)


def _configs(netG: str):
    # Label smoothing and flipping on: the loss kernel's variant that draws random numbers.
    base = dataclasses.replace(TrainConfig(), netG=netG, crop_size=MODELS[netG], n_layers_D=3,
                               real_label_min=0.8, label_flip_prob=0.05)
    variants = [base, dataclasses.replace(base, padding="reflect")]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if "fused_pad" in fields:
        variants.append(dataclasses.replace(base, padding="reflect", fused_pad=True))
    if "conv_impl" in fields:
        variants.append(dataclasses.replace(base, conv_impl="triton"))
    return variants


@functools.lru_cache(maxsize=None)
def _trace(netG: str, batch: int = 1):
    """Recorded calls of one fast step per (config variant, precision, layout)."""
    records = []
    for cfg in _configs(netG):
        G = build_generator(cfg, fused=True)
        D = build_discriminator(cfg, fused=True)
        size = cfg.crop_size
        for precision, dtype in PRECISIONS.items():
            for layout, fmt in LAYOUTS.items():
                G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
                step = _fast_step(cfg, G, D, dtype)
                rec = _Recorder()
                with FakeTensorMode(allow_non_fake_inputs=True):
                    A = torch.randn(batch, cfg.input_nc, size, size).to(memory_format=fmt)
                    B = torch.randn(batch, cfg.output_nc, size, size).to(memory_format=fmt)
                    with rec:
                        step._step(A, B)  # G, D on fake and real pairs, both losses, both backwards
                for p in (*G.parameters(), *D.parameters()):
                    p.grad = None  # fake tensors; the next pass starts clean
                records.append(((netG, precision, layout), rec))
    return records


# ---------------------------------------------------------------------------
# Recorded calls -> planned launches
# ---------------------------------------------------------------------------
def _scaled(shape, batch):
    return (shape[0] * batch,) + tuple(shape[1:])


# The trainer launches the heuristic plan; PIX2PIX_FAST_AUTOTUNE=1 (opt-in)
# may launch any candidate plan. The default run compiles the former, the
# slow run both.
@functools.lru_cache(maxsize=None)
def _norm_launches(problem: INA.NormProblem, autotune: bool = False):
    """Unique launches of the heuristic plans (and the autotune candidates), over SM_COUNTS."""
    out = []
    for sms in SM_COUNTS:
        plans = INA.candidate_plans(problem, sms)
        assert plans[0] == INA.heuristic_plan(problem, sms)
        for plan in plans if autotune else plans[:1]:
            out += INA.plan_launches(problem, plan)
    return tuple(gpu_compile.unique_launches(out))


def _launches_of_call(name, args, producer, batch, autotune=False):
    """The launches the op call (or its fast-path replacement) makes at ``batch`` x the traced batch."""
    if name == "pix2pix_fast::instance_norm_act":
        x, weight, bias, eps, act, slope, pad = args
        p = INA.norm_problem("fwd", x, weight, bias, act, normalize_pad(pad), eps, slope)
        p = dataclasses.replace(p, N=p.N * batch)
        return _norm_launches(p, autotune) + _norm_launches(dataclasses.replace(p, kind="bwd"), autotune)
    if name == "pix2pix_fast::instance_norm_act_backward":
        _, x, weight, bias, _, _, act, slope, pad = args
        p = INA.norm_problem("bwd", x, weight, bias, act, normalize_pad(pad), negative_slope=slope)
        return _norm_launches(dataclasses.replace(p, N=p.N * batch), autotune)
    if name in ("pix2pix_fast::reflect_pad", "aten::reflection_pad2d"):
        x, pad = args[0], normalize_pad(list(args[1]))
        cl = suggest_memory_format(x) == torch.channels_last
        shape = _scaled(tuple(x.shape), batch)
        out = [RP.plan_reflect_pad(kind, shape, x.dtype, cl, pad) for kind in ("fwd", "bwd")]
        src = producer.get(x)
        if src is not None and src[0] == "pix2pix_fast::instance_norm_act" and not any(src[1][6]):
            # The norm's fused padding replaces this pad.
            xn, weight, bias, eps, act, slope, _ = src[1]
            p = INA.norm_problem("fwd", xn, weight, bias, act, pad, eps, slope)
            p = dataclasses.replace(p, N=p.N * batch)
            out += _norm_launches(p, autotune) + _norm_launches(dataclasses.replace(p, kind="bwd"), autotune)
        return out
    if name == "pix2pix_fast::reflect_pad_backward":
        dy, pad = args
        pads = normalize_pad(list(pad))
        n, c, ho, wo = _scaled(tuple(dy.shape), batch)
        cl = suggest_memory_format(dy) == torch.channels_last
        return [RP.plan_reflect_pad("bwd", (n, c, ho - pads[2] - pads[3], wo - pads[0] - pads[1]), dy.dtype, cl, pads)]
    if name == "pix2pix_fast::patchgan_loss":
        logits, seed, mode, is_real, for_d, lo, hi, flip, need_grad = args
        shape = _scaled(tuple(logits.shape), batch)
        out = PGL.plan_patchgan_loss(shape, logits.dtype, mode, is_real, for_d, lo, hi, flip, need_grad, seed is not None)
        numel = 1
        for d in shape:
            numel *= d
        return out + [PGL.plan_patchgan_loss_backward(numel, logits.dtype)]
    if name == "pix2pix_fast::patchgan_loss_backward":
        return [PGL.plan_patchgan_loss_backward(args[0].numel() * batch, args[0].dtype)]
    if name == "pix2pix_fast::conv_norm_act":
        x, weight, bias, in_mean = args[:4]
        p = CNA.conv_problem(x, weight, bias, in_mean, *args[5:])
        return _conv_launches(dataclasses.replace(p, interpreted=False), batch)
    if name == "pix2pix_fast::norm_act_apply":
        y, _, _, act, slope = args
        shape = _scaled(tuple(y.shape), batch)
        return [CNA.plan_norm_act_apply(shape, _cl_strides(shape), _cl_strides(shape), y.dtype, act, slope)]
    if name == "aten::convolution":
        return []  # replaced by conv_norm_act only when an instance norm follows (see _conv_replacements)
    raise AssertionError(f"no launch planning for the recorded op {name}")


def _cl_strides(shape):
    return dense_strides(shape, True)


def _conv_launches(p: CNA.ConvProblem, batch: int):
    n = p.x_shape[0] * batch
    x_shape = (n,) + p.x_shape[1:]
    # Sample stride scales with the batch only through its own value: keep the layout.
    x_strides = p.x_strides
    return CNA.plan_conv_norm_act(dataclasses.replace(p, x_shape=x_shape, x_strides=x_strides))


def _conv_replacements(rec: _Recorder, batch: int):
    """conv_norm_act launches for every stock conv whose output feeds a fused instance norm."""
    out = []
    for name, args in rec.calls:
        if name != "pix2pix_fast::instance_norm_act":
            continue
        src = rec.producer.get(args[0])
        if src is None or src[0] != "aten::convolution":
            continue
        x, weight, bias, stride, padding, dilation, transposed, _, groups = src[1]
        if transposed or groups != 1 or set(dilation) != {1} or len(set(stride)) != 1 or len(set(padding)) != 1:
            continue
        prev = rec.producer.get(x)
        in_norm = prev is not None and prev[0] == "pix2pix_fast::instance_norm_act" and not any(prev[1][6])
        for has_in_norm in {False, in_norm}:
            p = CNA.ConvProblem(
                tuple(x.shape), tuple(x.stride()), x.dtype, tuple(weight.shape), bias is not None, has_in_norm,
                stride[0], padding[0], in_act=prev[1][4] if has_in_norm else "none",
                norm=True, out_act="none",
            )
            out += _conv_launches(p, batch)
            apply_act = args[4]
            shape = dataclasses.replace(p, x_shape=(p.x_shape[0] * batch,) + p.x_shape[1:]).out_shape
            out.append(CNA.plan_norm_act_apply(shape, _cl_strides(shape), _cl_strides(shape), p.dtype, apply_act, 0.2))
    return out


@functools.lru_cache(maxsize=None)
def all_launches(autotune: bool = False):
    """Every unique planned launch (one per compile key), over all traces and batches;
    with `autotune`, also every candidate plan PIX2PIX_FAST_AUTOTUNE=1 may pick."""
    unique = {}
    for netG in MODELS:
        for _, rec in _trace(netG):
            for batch in BATCHES:
                for name, args in rec.calls:
                    for launch in _launches_of_call(name, args, rec.producer, batch, autotune):
                        unique.setdefault(gpu_compile.compile_key(launch), launch)
                for launch in _conv_replacements(rec, batch):
                    unique.setdefault(gpu_compile.compile_key(launch), launch)
    return list(unique.values())


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------
def test_traced_ops_cover_the_fast_step():
    """Every model records its norms forward and backward and the GAN loss; fp32 and bf16 both reach the ops."""
    for netG in MODELS:
        for (model, precision, layout), rec in _trace(netG):
            names = {name for name, _ in rec.calls}
            assert {"pix2pix_fast::instance_norm_act", "pix2pix_fast::instance_norm_act_backward",
                    "pix2pix_fast::patchgan_loss", "pix2pix_fast::patchgan_loss_backward"} <= names, (model, names)
            dtypes = {args[0].dtype for name, args in rec.calls if name.startswith("pix2pix_fast::instance_norm")}
            assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float32}, (model, precision, dtypes)
            cl = {suggest_memory_format(args[0]) == torch.channels_last
                  for name, args in rec.calls if name == "pix2pix_fast::instance_norm_act"}
            assert cl == {layout == "channels_last"}, (model, layout)


def test_batch_scaling_matches_a_trace_at_that_batch():
    """Launches planned from the batch-1 trace scaled to batch 2 equal those of a batch-2 trace."""
    netG = "unet_128"

    def launches(records, batch):
        out = []
        for _, rec in records:
            for name, args in rec.calls:
                out += _launches_of_call(name, args, rec.producer, batch)
        return out

    assert launches(_trace(netG, 1), 2) == launches(_trace(netG, 2), 1)


def test_every_planned_grid_is_launchable():
    bad = [(gpu_compile.kernel_name(l.kernel), l.grid) for l in all_launches(autotune=True)
           if not grid_within_limits(l.grid)]
    assert not bad, bad[:5]


def _check(results):
    errors = [f"{r.kernel} sm_{r.arch}: {r.launch}\n{r.error}" for r in results if r.error]
    assert not errors, "\n\n".join(errors[:3])
    for r in results:
        assert r.registers > 0, r
        assert r.spill_stores <= MAX_SPILL_BYTES, f"{r.kernel} sm_{r.arch} spills {r.spill_stores} B: {r.launch}"
        limit = gpu_compile.SHARED_MEMORY_LIMIT[r.arch]
        assert 0 <= r.shared <= limit, f"{r.kernel} sm_{r.arch} needs {r.shared} B shared memory: {r.launch}"


def test_every_launch_the_trainer_makes_compiles_for_sm90a_and_sm80():
    """Every heuristic launch of every model, batch, precision, layout and switch, both archs."""
    launches = gpu_compile.unique_launches(all_launches())
    kernels = {gpu_compile.kernel_name(l.kernel) for l in launches}
    assert kernels == {gpu_compile.kernel_name(l.kernel) for l in all_launches(autotune=True)}
    results = gpu_compile.compile_launches(launches)
    assert {r.arch for r in results} == set(gpu_compile.ARCHS)
    assert len(results) == len(launches) * len(gpu_compile.ARCHS)
    _check(results)


@pytest.mark.slow
def test_every_autotune_candidate_compiles_for_sm90a_and_sm80():
    """The plans PIX2PIX_FAST_AUTOTUNE=1 may pick instead (opt-in; about 2,700 launches)."""
    launches = gpu_compile.unique_launches(all_launches(autotune=True))
    results = gpu_compile.compile_launches(launches)
    assert len(results) == len(launches) * len(gpu_compile.ARCHS)
    _check(results)


def test_compile_check_catches_spills_and_errors(tmp_path):
    """The harness reports what it must judge: a kernel that cannot compile yields an error."""
    launch = RP.plan_reflect_pad("fwd", (1, 8, 16, 16), torch.float32, True, (1, 1, 1, 1))
    broken = dataclasses.replace(launch, constexprs=launch.constexprs + (("NOT_A_PARAMETER", 1),))
    good, bad = gpu_compile.compile_launches([launch, broken], archs=(90,), cache_dir=tmp_path)
    assert not good.error and good.registers > 0 and good.spill_stores == 0
    assert bad.error
    # A second run answers from the cache with the same report.
    again = gpu_compile.compile_launches([launch], archs=(90,), cache_dir=tmp_path)[0]
    assert again.cached and again.registers == good.registers


def test_parse_ptxas_log():
    log = (
        "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
        "ptxas info    : Function properties for k\n"
        "    0 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Used 168 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n"
    )
    assert gpu_compile.parse_ptxas_log(log) == (168, 4, 8, 2048)
    with pytest.raises(ValueError):
        gpu_compile.parse_ptxas_log("ptxas fatal   : Unresolved extern function")
