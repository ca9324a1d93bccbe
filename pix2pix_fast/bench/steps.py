"""`pix2pix-fast bench`: training-step variants timed in one process, on one device.

Variants (one row per variant and batch size; all train U-Net-256 + 70x70
PatchGAN with instance norm on random data unless overridden):

- ``eager``: the reference step as the reference implementation runs it
  (`train/eager.py`): fp32, NCHW, PyTorch norms, three D calls, foreach Adam,
  ``cudnn.benchmark`` on (the reference sets it; ``cudnn_benchmark=0`` turns
  it off).
- ``graph_ref``: the same step captured whole in one CUDA graph by hand
  (eager kernels, capturable foreach Adam with the LR in a device tensor,
  static inputs, warm-up on a side stream, then ``torch.cuda.graph``): the best
  stock technique. ``graph_ref_bf16`` adds bf16 autocast and channels_last;
  ``graph_ref_compiled`` also ``torch.compile``s G and D (default mode).
- ``fast``: the fast trainer's step (`train/fast.py`), with the TrainConfig
  levers ``pad_channels``, ``fused_pad`` (with ``padding=reflect``),
  ``conv_impl``, ``cudnn_benchmark``, ``cuda_graph`` and ``compile``.

A variant is written ``base[:field=value,...][@batch/batch]``: any TrainConfig
field can be overridden (``fast:compile=0,pad_channels=1``), and ``@16`` runs
it at batch 16 only. A variant that fails is recorded as a row with its error
and the bench goes on; the fast step is built directly (no fallback to
another backend), so a failure shows as an error, never as eager numbers.
The JSON file is rewritten (atomically) after every row, so a run cut short
keeps what it measured.

Timing: CUDA events around ``steps`` steps after warm-up (median of
``repeats`` runs; the losses are summed on the device and checked once).
TFLOP/s counts the reference step's FLOPs (``torch.utils.flop_counter`` at
batch 1, times the batch) for every variant. Peak memory is
``torch.cuda.max_memory_allocated`` from model build to the end of timing.
"""
from __future__ import annotations

import gc
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Sequence

import torch

from pix2pix_fast.config import ConfigError, TrainConfig
from pix2pix_fast.bench import harness
from pix2pix_fast.train import build
from pix2pix_fast.cuda_graph import CudaGraph

STOCK = ("eager", "graph_ref", "graph_ref_bf16", "graph_ref_compiled")
BASES = STOCK + ("fast",)
GRAPH_BASES = ("graph_ref", "graph_ref_bf16", "graph_ref_compiled")
LEVERS = ("pad_channels", "fused_pad", "conv_impl", "cudnn_benchmark", "cuda_graph", "compile")
DEFAULT_VARIANTS = ("eager", "graph_ref", "fast")
GRAPH_WARMUP_STEPS = 3  # side-stream steps before the hand capture (as FastStep)


# ------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Variant:
    spec: str  # as written
    base: str
    overrides: tuple[tuple[str, object], ...] = ()
    batch_sizes: tuple[int, ...] | None = None  # None: the run's batch sizes


def parse_variant(spec: str) -> Variant:
    """``base[:field=value,...][@b/b]`` -> Variant; a ConfigError names what is wrong."""
    text, _, at = spec.strip().partition("@")
    base, _, rest = text.partition(":")
    if base not in BASES:
        raise ConfigError(f"bench variant {spec!r}: unknown base {base!r} (one of {', '.join(BASES)})")
    types = {f.name: type(f.default) for f in fields(TrainConfig)}
    overrides = []
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in types:
            raise ConfigError(f"bench variant {spec!r}: {item!r} is not field=value with a TrainConfig field")
        if key in ("batch_size", "crop_size", "load_size"):
            raise ConfigError(f"bench variant {spec!r}: set the batch with @batch and the size with --size, not {key}")
        overrides.append((key, _parse_value(spec, key, value.strip(), types[key])))
    batches = None
    if at:
        try:
            batches = tuple(int(b) for b in at.split("/") if b)
        except ValueError:
            raise ConfigError(f"bench variant {spec!r}: expected @batch[/batch...] after the variant") from None
    return Variant(spec.strip(), base, tuple(overrides), batches)


def _parse_value(spec: str, key: str, value: str, kind: type):
    if kind is bool:
        table = {"1": True, "true": True, "on": True, "yes": True,
                 "0": False, "false": False, "off": False, "no": False}
        if value.lower() not in table:
            raise ConfigError(f"bench variant {spec!r}: {key} takes 0/1, got {value!r}")
        return table[value.lower()]
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"bench variant {spec!r}: {key} takes a {kind.__name__}, got {value!r}") from None


def lever_sweep(base: str = "fast:compile=0") -> list[str]:
    """The fast-step base variant, then one variant per lever flipped against it.

    fused_pad only matters with reflect padding, so it comes last, on a
    reflect base: padding=reflect without and with fused_pad.
    """
    v = parse_variant(base)
    if v.base != "fast" or v.batch_sizes:
        raise ConfigError(f"bench lever sweep: the base must be a fast variant without @batch, got {base!r}")
    cfg = TrainConfig().replace(**dict(v.overrides))

    def spec(**changes) -> str:
        items = {**dict(v.overrides), **changes}
        return "fast" + (":" + ",".join(f"{k}={_spell(x)}" for k, x in items.items()) if items else "")

    out = [spec()]
    for lever in LEVERS:
        if lever == "fused_pad":
            continue
        value = getattr(cfg, lever)
        flipped = {"cudnn": "triton", "triton": "cudnn"}[value] if lever == "conv_impl" else not value
        out.append(spec(**{lever: flipped}))
    out += [spec(padding="reflect", fused_pad=False), spec(padding="reflect", fused_pad=True)]
    return out


def _spell(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def expand_variants(specs: Iterable[str], sweep_base: str = "fast:compile=0") -> list[str]:
    """Variant specs with the word ``levers`` replaced, in place, by the lever sweep (no duplicates)."""
    out: list[str] = []
    for s in specs:
        for x in (lever_sweep(sweep_base) if s.strip() == "levers" else [s.strip()]):
            if x not in out:
                out.append(x)
    return out


# ------------------------------------------------------------------- configs
def bench_config(size: int, batch_size: int, **overrides) -> TrainConfig:
    overrides.setdefault("netG", f"unet_{size}")
    return TrainConfig(load_size=size, crop_size=size, batch_size=batch_size, **overrides)


def make_step(cfg: TrainConfig, backend: str, device: torch.device):
    """The step object of one backend ("eager" | "fast"), with models and optimizers seeded from cfg.seed.

    eager: the reference step (fp32, NCHW, plain Adam). fast: FastStep with
    cfg's levers; CUDA graph and compile only on CUDA.
    """
    if backend not in ("eager", "fast"):
        raise ValueError(f"backend must be eager or fast, got {backend!r}")
    return _step_of(backend, cfg, device, _build_models(backend, cfg, device))


def _build_models(base: str, cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(G, D) of a variant base, seeded from cfg.seed (train.build.build_models: what `train` builds)."""
    if base == "fast":
        return tuple(build.train_parts(cfg.replace(backend="fast"), "fast", device)[:2])
    # The reference models as the reference runs them: NCHW fp32; channels_last for the bf16 variants.
    low = base in ("graph_ref_bf16", "graph_ref_compiled")
    fmt = torch.channels_last if low else torch.contiguous_format
    return tuple(build.build_models(cfg, "eager", device, memory_format=fmt)[:2])


def _step_of(base: str, cfg: TrainConfig, device: torch.device, models):
    """The step object of a variant base around built models (fresh optimizers)."""
    G, D = models
    if base == "fast":
        cfg = cfg.replace(backend="fast")
        parts = build.Parts(G, D, build.make_adam(G, cfg, "fast", device), build.make_adam(D, cfg, "fast", device))
        return build.make_step(cfg, build.initial_mode(cfg, "fast", device), parts,
                               autocast_dtype=build.resolve_precision(cfg, device, "fast"))
    graph = base in GRAPH_BASES
    if graph and device.type != "cuda":
        raise RuntimeError("no CUDA")
    if base == "graph_ref_compiled":
        # dynamic=False, as the fast step: each batch size gets its own static graphs.
        G, D = torch.compile(G, dynamic=False), torch.compile(D, dynamic=False)
    opts = (build.make_adam(m, cfg, "eager", device, capturable=graph) for m in models)
    low = base in ("graph_ref_bf16", "graph_ref_compiled")
    step = build.make_step(cfg, build.Mode("eager"), build.Parts(G, D, *opts),
                           autocast_dtype=torch.bfloat16 if low else None)
    if not graph:
        return step
    return CudaGraph(step, memory_format=torch.channels_last if low else torch.contiguous_format,
                     warmup=GRAPH_WARMUP_STEPS)


class ModelReuse:
    """The models of the last row, kept for the next row if it trains the same ones.

    Rows that differ only in how the step runs (``cuda_graph``,
    ``cudnn_benchmark``) at the same batch size train the same models: the
    next such row gets them back with their initial weights and fresh
    optimizers, and torch.compile's graphs of them are kept, so a compiled
    configuration compiles once per process. A row with other models drops
    them and resets torch.compile's caches first.
    """

    def __init__(self):
        self.key: tuple | None = None
        self.models: tuple | None = None
        self.initial: list[dict] = []

    @staticmethod
    def key_of(base: str, cfg: TrainConfig, device: torch.device) -> tuple:
        return base, repr(cfg.replace(cuda_graph=True, cudnn_benchmark=True)), str(device)

    def get(self, base: str, cfg: TrainConfig, device: torch.device) -> tuple[tuple, bool]:
        """(models, reused)."""
        key = self.key_of(base, cfg, device)
        if key == self.key:
            with torch.no_grad():
                for module, state in zip(self.models, self.initial):
                    module.load_state_dict(state)
            return self.models, True
        self.clear(device)
        self.models = _build_models(base, cfg, device)
        self.initial = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.models]
        self.key = key
        return self.models, False

    def clear(self, device: torch.device) -> None:
        had = self.models is not None
        self.key, self.models, self.initial = None, None, []
        if had:
            _cleanup(device, reset_compiled=True)


_REUSE = ModelReuse()  # one bench process, one device: the rows of run_bench share it


def make_variant_step(base: str, cfg: TrainConfig, device: torch.device):
    """The step object of a variant base (see the module docstring), on models the previous row
    left if they are the same ones (see ModelReuse); its ``models_reused`` says which."""
    if base in GRAPH_BASES and device.type != "cuda":
        raise RuntimeError("no CUDA")
    models, reused = _REUSE.get(base, cfg, device)
    step = _step_of(base, cfg, device, models)
    step.models_reused = reused
    return step


# ------------------------------------------------------------------- timing
def step_flops(cfg: TrainConfig, device: torch.device) -> float:
    """FLOPs of one reference training step at cfg's batch size (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = make_step(cfg, "eager", device)
    A, B = _batch(cfg, device)
    with FlopCounterMode(display=False) as counter:
        step(A, B)
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------- run
def run_bench(batch_sizes: Sequence[int] = (1, 16, 64), steps: int = 50, json_path: str | None = None,
              size: int = 256, warmup: int = 5,
              variants: Sequence[str] | None = None, order: str = "batch", netG: str | None = None,
              overrides: dict | None = None, seconds: float = 0.5, repeats: int = 3,
              device: str | torch.device | None = None, quiet: bool = False, sweep_base: str = "fast:compile=0",
              on_row: Callable[[dict], None] | None = None, append: bool = False) -> list[dict]:
    """Time every (variant, batch size); returns the rows (also written to json_path after each).

    variants: specs (see parse_variant); the word "levers" expands to
    lever_sweep(sweep_base). order: "batch"
    (all variants at the first batch size, then the next) or "variant" (each
    variant at every batch size, then the next variant). steps: the most timed
    steps per run; fewer when `seconds` is reached sooner (the count comes from
    one timed step after warm-up). overrides: TrainConfig fields for every
    variant (e.g. ngf, ndf for a toy model). append: keep the rows already in
    json_path (an earlier run's, in the same environment) and add these after
    them; speed-ups are computed over all of them.
    """
    specs = expand_variants(variants or DEFAULT_VARIANTS, sweep_base)
    parsed = [parse_variant(s) for s in specs]
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base_overrides = dict(overrides or {})
    if netG:
        base_overrides["netG"] = netG
    for v in parsed:  # every config is valid before anything is timed
        bench_config(size, 1, **{**base_overrides, **dict(v.overrides)}).validate()
    plan = _plan(parsed, list(batch_sizes), order)
    if dev.type == "cuda":
        warmup = max(warmup, GRAPH_WARMUP_STEPS + 1)  # captured variants capture within warm-up
    result = {
        "env": harness.environment(dev),
        "config": {"batch_sizes": list(batch_sizes), "variants": specs, "order": order, "size": size,
                   "steps_max": steps, "seconds_per_run": seconds, "repeats": repeats, "warmup": warmup,
                   "overrides": base_overrides},
        "rows": [],
        "complete": False,
    }
    earlier = harness.load_json(json_path) if append and json_path else None
    if earlier and isinstance(earlier.get("rows"), list):
        result["rows"] = earlier["rows"]
        result["earlier_configs"] = earlier.get("earlier_configs", []) + [earlier.get("config")]
    rows: list[dict] = result["rows"]
    flops_per_img: dict[tuple, float | None] = {}

    def save() -> None:
        annotate(rows)
        if json_path:
            harness.write_json(json_path, result)

    restore_sigterm = harness.stop_on_sigterm() if _main_thread() else None
    try:
        save()
        for v, batch in plan:
            cfg = bench_config(size, batch, **{**base_overrides, **dict(v.overrides)})
            key = (cfg.netG, cfg.ngf, cfg.ndf, cfg.n_layers_D, cfg.norm, size, cfg.padding, cfg.discriminator_padding,
                   cfg.upsample)
            if key not in flops_per_img:
                flops_per_img[key] = _flops_per_image(cfg, dev)
            row = bench_row(v, cfg, dev, steps=steps, warmup=warmup, seconds=seconds, repeats=repeats,
                            flops=None if flops_per_img[key] is None else flops_per_img[key] * batch)
            rows.append(row)
            save()
            if not quiet:
                print(format_row(row), flush=True)
            if on_row is not None:
                on_row(row)
        result["complete"] = True
    except KeyboardInterrupt as e:
        result["interrupted"] = str(e) or "KeyboardInterrupt"
    finally:
        _REUSE.clear(dev)
        save()
        if restore_sigterm is not None:
            restore_sigterm()
    if not quiet:
        print_table(rows, dev)
        if json_path:
            print(f"wrote {json_path}")
    return rows


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _plan(variants: list[Variant], batch_sizes: list[int], order: str) -> list[tuple[Variant, int]]:
    if order not in ("batch", "variant"):
        raise ConfigError(f"bench --order must be batch or variant, got {order!r}")
    if order == "variant":
        return [(v, b) for v in variants for b in (v.batch_sizes or batch_sizes)]
    extra = [b for v in variants for b in (v.batch_sizes or ()) if b not in batch_sizes]
    plan = []
    for b in batch_sizes + sorted(set(extra), key=extra.index):
        plan += [(v, b) for v in variants if b in (v.batch_sizes or batch_sizes)]
    return plan


def _flops_per_image(cfg: TrainConfig, device: torch.device) -> float | None:
    try:
        return step_flops(cfg.replace(batch_size=1), device)
    except Exception as e:  # a count that cannot be made leaves TFLOP/s empty, the timings stand
        print(f"bench: FLOP count failed ({type(e).__name__}: {e}); TFLOP/s left empty", flush=True)
        return None
    finally:
        _cleanup(device)


def variant_levers(v: Variant, cfg: TrainConfig, device: torch.device) -> dict:
    """What actually runs for a row: precision, memory format, and the levers in effect."""
    cuda = device.type == "cuda"
    if v.base == "fast":
        dtype = build.resolve_precision(cfg.replace(backend="fast"), device)
        levers = {name: getattr(cfg, name) for name in LEVERS}
        levers.update(cuda_graph=cfg.cuda_graph and cuda, compile=cfg.compile and cuda)
        return {"precision": {None: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype)),
                "memory_format": "channels_last" if cuda else "nchw", "padding": cfg.padding, **levers}
    low = v.base in ("graph_ref_bf16", "graph_ref_compiled")
    return {"precision": "bf16" if low else "fp32", "memory_format": "channels_last" if low else "nchw",
            "padding": cfg.padding, "cudnn_benchmark": cfg.cudnn_benchmark,
            "cuda_graph": v.base in GRAPH_BASES, "compile": v.base == "graph_ref_compiled"}


def bench_row(v: Variant, cfg: TrainConfig, device: torch.device, *, steps: int, warmup: int, seconds: float,
              repeats: int, flops: float | None) -> dict:
    """One measured (or failed, or skipped) row; never raises for a failing variant."""
    row = {"variant": v.spec, "base": v.base, "batch": cfg.batch_size, "size": cfg.crop_size, "netG": cfg.netG,
           "ngf": cfg.ngf, "ndf": cfg.ndf, "norm": cfg.norm, "overrides": dict(v.overrides)}
    try:
        row.update(variant_levers(v, cfg, device))
    except Exception as e:
        row.update(status="error", error=_one_line(e))
        return row
    if v.base in GRAPH_BASES and device.type != "cuda":
        row.update(status="skipped", reason="no CUDA")
        return row
    cudnn_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
    t_row = time.perf_counter()
    step = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        step = make_variant_step(v.base, cfg, device)
        A, B = _batch(cfg, device)
        if row["memory_format"] == "channels_last":
            A, B = A.contiguous(memory_format=torch.channels_last), B.contiguous(memory_format=torch.channels_last)
        row["build_s"] = time.perf_counter() - t0
        row["models"] = "reused" if step.models_reused else "built"
        row["model_id"] = _model_id(step)
        t0 = time.perf_counter()
        step(A, B)
        harness.sync(device)
        row["first_step_s"] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            step(A, B)
        harness.sync(device)
        row["warmup_s"] = time.perf_counter() - t0
        row["capture_s"] = getattr(step, "capture_seconds", 0.0) or None
        if row["compile"]:
            row["compile_s"] = row["first_step_s"]  # dynamo + inductor run inside the first call
        t0 = time.perf_counter()
        step(A, B)
        harness.sync(device)
        est = time.perf_counter() - t0
        n = max(3, min(steps, math.ceil(seconds / max(est, 1e-6))))
        runs = harness.time_steps(step, (A, B), n, device, repeats)
        sec = statistics.median(runs)
        row.update(status="ok", steps_per_run=n, runs_ms=[r * 1e3 for r in runs], ms_per_step=sec * 1e3,
                   img_per_s=cfg.batch_size / sec, it_per_s=1 / sec,
                   tflops=(flops / sec / 1e12) if flops else None,
                   gflop_per_img=(flops / cfg.batch_size / 1e9) if flops else None)
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # one failing variant must not end the bench: record it and go on
        row.update(status="error", error=_one_line(e), traceback=traceback.format_exc()[-4000:])
    finally:
        row["row_s"] = time.perf_counter() - t_row
        del step
        torch.backends.cudnn.benchmark = cudnn_before
        _cleanup(device)
    return row


def _model_id(step) -> str:
    """A short hash of the modules a step trains: two rows with the same id built the same model."""
    import hashlib

    inner = getattr(step, "fn", step)  # a CudaGraph's step
    text = repr(getattr(inner, "G", "")) + repr(getattr(inner, "D", ""))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


def _cleanup(device: torch.device, reset_compiled: bool = False) -> None:
    """Free what a row left; with `reset_compiled`, also torch.compile's graphs (see ModelReuse)."""
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except RuntimeError as e:  # a sticky device error: later rows will report it themselves
            print(f"bench: device not clean after a row ({_one_line(e)})", flush=True)
    if reset_compiled and "torch._dynamo" in sys.modules:  # importing dynamo costs seconds
        torch._dynamo.reset()


def annotate(rows: list[dict]) -> None:
    """Speed-ups of every measured row against the stock rows of the same batch size and model."""
    def key(r):
        return (r["batch"], r["size"], r["netG"], r["ngf"], r["ndf"], r["norm"])

    stock: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r.get("status") == "ok" and r["base"] in STOCK and not r["overrides"]:
            stock.setdefault(key(r), {}).setdefault(r["base"], r["ms_per_step"])
    for r in rows:
        if r.get("status") != "ok":
            continue
        ref = stock.get(key(r), {})
        r["speedup_vs_eager"] = ref["eager"] / r["ms_per_step"] if "eager" in ref else None
        r["speedup_vs_graph_ref"] = ref["graph_ref"] / r["ms_per_step"] if "graph_ref" in ref else None
        if ref:
            best = min(ref, key=ref.get)
            r["best_stock"] = best
            r["speedup_vs_best_stock"] = ref[best] / r["ms_per_step"]


def _batch(cfg: TrainConfig, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (cfg.batch_size, cfg.input_nc, cfg.crop_size, cfg.crop_size)
    A = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    B = (torch.rand((cfg.batch_size, cfg.output_nc, cfg.crop_size, cfg.crop_size), generator=g) * 2 - 1).to(device)
    return A, B


# ------------------------------------------------------------------ output
_HEADER = (f"{'variant':44} {'batch':>5} {'ms/step':>9} {'img/s':>9} {'it/s':>8} {'TFLOP/s':>8} "
           f"{'x eager':>7} {'x graph':>7} {'peak GiB':>8} {'compile s':>9} {'capture s':>9}")


def format_row(r: dict) -> str:
    name = r["variant"][:44]
    if r.get("status") != "ok":
        what = r.get("reason") if r.get("status") == "skipped" else r.get("error")
        return f"{name:44} {r['batch']:>5} {r.get('status', '?')}: {what}"

    def num(value, fmt):
        return format(value, fmt) if value is not None else "-"

    def ratio(value):
        return f"{value:.2f}x" if value else "-"

    return (f"{name:44} {r['batch']:>5} {r['ms_per_step']:>9.3f} {r['img_per_s']:>9.1f} {r['it_per_s']:>8.1f} "
            f"{num(r.get('tflops'), '8.2f'):>8} {ratio(r.get('speedup_vs_eager')):>7} "
            f"{ratio(r.get('speedup_vs_graph_ref')):>7} {num(r.get('peak_mem_gib'), '8.2f'):>8} "
            f"{num(r.get('compile_s'), '9.1f'):>9} {num(r.get('capture_s'), '9.2f'):>9}")


def print_table(rows: list[dict], device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}")
    print(_HEADER)
    for r in rows:
        print(format_row(r))
