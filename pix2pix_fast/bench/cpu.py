"""`pix2pix-fast bench --device cpu`: the CPU training steps and inference runtimes, interleaved.

On a CPU shared with other work a row-by-row timing drifts with the load, so
here every variant of one (size, batch) is built first and then timed in
turns: repeat r times each variant once (a run of `steps` steps or calls),
in the same order, and report per variant the median ms and the median of
its per-repeat speed-ups over the eager row of the same repeat.

Training variants are `steps.py` specs (`eager`, `fast`, `fast:cpu_channels_last=0`,
`fast:cpu_compile=1`, ...): the eager reference step and the CPU fast step
(train/cpu.py) with each of its switches. Inference: the generator in eval
mode through each runtime of runtime.py (eager, compiled, onnx).
A compiled variant's first step (dynamo + inductor) is reported as
`compile_s`; the ONNX export and session as `build_s`. A variant that fails
is recorded with its error; the JSON (with the CPU model, cores and
versions) is rewritten after every (size, batch).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

from pix2pix_fast.bench import harness
from pix2pix_fast.bench import steps as train_bench

TRAIN_VARIANTS = ("eager", "fast", "fast:cpu_channels_last=0", "fast:cpu_compile=1")
RUNTIMES = ("eager", "compiled", "onnx")


def run_cpu_bench(sizes: Sequence[int] = (128, 256), batch_sizes: Sequence[int] = (1, 4), *,
                  variants: Sequence[str] = TRAIN_VARIANTS, runtimes: Sequence[str] = RUNTIMES,
                  steps: int = 2, repeats: int = 5, overrides: dict | None = None, netG: str | None = None,
                  json_path: str | None = None, quiet: bool = False) -> dict:
    """Time every training variant and inference runtime at each size and batch; returns the result."""
    dev = torch.device("cpu")
    for spec in variants:  # every spec is valid before anything is timed (a ConfigError names it)
        v = train_bench.parse_variant(spec)
        train_bench.bench_config(sizes[0], 1, **{**(overrides or {}), **dict(v.overrides)}).validate()
    result = {"env": {**harness.environment(dev), "onnxruntime": _version("onnxruntime")},
              "config": {"sizes": list(sizes), "batch_sizes": list(batch_sizes), "variants": list(variants),
                         "runtimes": list(runtimes), "steps_per_run": steps, "repeats": repeats,
                         "overrides": dict(overrides or {}), "netG": netG},
              "rows": [], "complete": False}
    restore = harness.stop_on_sigterm()
    try:
        for size in sizes:
            for batch in batch_sizes:
                cfg = train_bench.bench_config(size, batch, **{**(overrides or {}), **({"netG": netG} if netG else {})})
                cases = {v: _train_case(v, cfg, dev) for v in variants}
                result["rows"] += _interleave("train", cases, cfg, steps, repeats)
                harness.write_json(json_path, result)
                cases = {r: _inference_case(r, cfg) for r in runtimes}
                result["rows"] += _interleave("inference", cases, cfg, steps, repeats)
                harness.write_json(json_path, result)
                if not quiet:
                    for row in result["rows"][-len(variants) - len(runtimes):]:
                        print(format_row(row), flush=True)
        result["complete"] = True
    except KeyboardInterrupt as e:
        result["interrupted"] = str(e) or "KeyboardInterrupt"
    finally:
        restore()
        harness.write_json(json_path, result)
    return result


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _train_case(spec: str, cfg, dev) -> dict:
    """{"run": one step, "compile_s"/"first_s"} or {"error"}: the step built and its first step taken."""
    try:
        v = train_bench.parse_variant(spec)
        vcfg = cfg.replace(**dict(v.overrides))
        step = train_bench._step_of(v.base, vcfg, dev, train_bench._build_models(v.base, vcfg, dev))
        A, B = train_bench._batch(vcfg, dev)
        return _first(lambda: step(A, B), compiled=vcfg.cpu_compile and v.base == "fast")
    except Exception as e:  # a failing variant is a row with its error
        return {"error": train_bench._one_line(e)}


def _inference_case(runtime: str, cfg) -> dict:
    from pix2pix_fast.runtime import make_runtime
    from pix2pix_fast.models import build_generator

    try:
        torch.manual_seed(cfg.seed)
        G = build_generator(cfg).eval().requires_grad_(False)
        x = train_bench._batch(cfg, torch.device("cpu"))[0]
        t0 = time.perf_counter()
        run = make_runtime(runtime, G, torch.device("cpu"), input_nc=cfg.input_nc, eval_mode=True)
        build_s = time.perf_counter() - t0

        def call():
            with torch.no_grad():
                return run(x)

        case = _first(call, compiled=runtime == "compiled")
        case["build_s"] = build_s
        return case
    except Exception as e:
        return {"error": train_bench._one_line(e)}


def _first(fn: Callable[[], torch.Tensor], compiled: bool) -> dict:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()  # a second untimed call: allocator and oneDNN primitive caches warm
    return {"run": fn, "first_s": first, "compile_s": first if compiled else None}


def _interleave(kind: str, cases: dict[str, dict], cfg, steps: int, repeats: int) -> list[dict]:
    ok = {name: c for name, c in cases.items() if "error" not in c}
    times: dict[str, list[float]] = {name: [] for name in ok}
    for _ in range(repeats):
        for name, c in ok.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                c["run"]()
            times[name].append((time.perf_counter() - t0) / steps)
    rows = []
    base = times.get("eager")
    for name, c in cases.items():
        row = {"kind": kind, "variant": name, "size": cfg.crop_size, "batch": cfg.batch_size, "netG": cfg.netG,
               "ngf": cfg.ngf, "ndf": cfg.ndf, "norm": cfg.norm}
        if "error" in c:
            rows.append({**row, "status": "error", "error": c["error"]})
            continue
        sec = statistics.median(times[name])
        speedup = statistics.median(b / t for b, t in zip(base, times[name])) if base else None
        rows.append({**row, "status": "ok", "runs_ms": [t * 1e3 for t in times[name]], "ms": sec * 1e3,
                     "img_per_s": cfg.batch_size / sec, "speedup_vs_eager": speedup,
                     "first_s": c["first_s"], "compile_s": c["compile_s"], "build_s": c.get("build_s")})
    for c in cases.values():
        c.pop("run", None)  # free the models before the next case
    return rows


def format_row(r: dict) -> str:
    head = f"{r['kind']:9} {r['variant']:28} {r['size']:>4} {r['batch']:>3}"
    if r["status"] != "ok":
        return f"{head} error: {r['error']}"
    x = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"
    extra = f"  compile {r['compile_s']:.0f} s" if r.get("compile_s") else ""
    extra += f"  build {r['build_s']:.1f} s" if r.get("build_s") else ""
    return f"{head} {r['ms']:10.1f} ms {r['img_per_s']:8.2f} img/s {x:>7}{extra}"
