"""Benchmark the fused instance-norm + activation and reflect-pad ops (GPU only).

Times every norm+act layer shape of U-Net-256 and the 70x70 PatchGAN (and the
reflect pads of a ResNet generator) at the chosen batch sizes, forward and
forward+backward, with ``triton.testing.do_bench`` (median, p20, p80 after
warm-up), against eager PyTorch (F.instance_norm + F.leaky_relu; F.pad
reflect) and ``torch.compile`` of the same function.  Reports achieved GB/s
from the bytes the op must move (forward: read x + write y; backward: read x,
read dy, write dx) next to the device-to-device copy bandwidth measured in the
same run, and the speedups over eager and compile.  Compile time is reported
separately from steady-state speed.

    python benchmarks/bench_ops.py --json benchmarks/results/bench_ops.json
    python benchmarks/bench_ops.py --batch 64 --dtype bf16 fp32 --formats cl --no-compile
    python benchmarks/bench_ops.py --sweep --batch 64   # time every candidate plan per shape

``--dry-run`` runs the same code on the CPU at toy shapes (batch 1, fp32,
one torch.compile baseline), timed with a wall clock: it checks the script,
not the speed.

Writes JSON (``--json``) with the GPU name, torch/triton versions and the
config of every row, rewritten after every shape so that a run cut short
(e.g. by ``timeout``, SIGTERM) keeps what it measured; prints a compact table
last (also when interrupted).  Order: largest batch first, channels_last
first, so the headline numbers come first.  With the defaults (bf16, batch
64 and 1, both formats, compile baseline) expect ~3-5 minutes, most of it
torch.compile of the baselines; ``--no-compile`` takes well under a minute.
"""

import argparse
import importlib
import os
import sys
import time
from dataclasses import asdict


import torch
import torch.nn.functional as F

from pix2pix_fast.bench import harness

# (network, layer, C, H=W) of every norm+act layer; the innermost U-Net layer
# (512@1) and the outermost layers carry no norm.
UNET_256 = [
    ("unet", "enc2", 128, 64), ("unet", "enc3", 256, 32), ("unet", "enc4", 512, 16),
    ("unet", "enc5", 512, 8), ("unet", "enc6", 512, 4), ("unet", "enc7", 512, 2),
    ("unet", "dec1", 512, 2), ("unet", "dec2", 512, 4), ("unet", "dec3", 512, 8),
    ("unet", "dec4", 512, 16), ("unet", "dec5", 256, 32), ("unet", "dec6", 128, 64),
    ("unet", "dec7", 64, 128),
]
PATCHGAN_70 = [("patchgan", "d2", 128, 64), ("patchgan", "d3", 256, 32), ("patchgan", "d4", 512, 31)]
# ResNet-generator reflect pads: the 7x7 stem and the 3x3 convs of the blocks.
PADS = [("resnet", "stem", 3, 256, 3), ("resnet", "block", 256, 64, 1), ("resnet", "up_out", 64, 256, 3)]
# --dry-run: the same code at toy shapes on the CPU.
TOY_NORM = [("toy", "a", 8, 16), ("toy", "b", 16, 8)]
TOY_PADS = [("toy", "stem", 3, 16, 3), ("toy", "block", 64, 8, 1)]
DEVICE = "cuda"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 1])
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=sorted(DTYPES))
    p.add_argument("--formats", nargs="+", default=["cl", "nchw"], choices=sorted(FORMATS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-pad", action="store_true", help="skip the reflect-pad benchmarks")
    p.add_argument("--autotune", action="store_true", help="PIX2PIX_FAST_AUTOTUNE=1: pick the fastest plan per shape")
    p.add_argument("--sweep", action="store_true", help="time every candidate plan of the norm op and report the best")
    p.add_argument("--compile-max", type=int, default=None,
                   help="torch.compile baselines for at most this many shapes in all, in order (default: all)")
    p.add_argument("--copy-gbps", type=float, default=None, help="device copy bandwidth, if already measured")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy shapes, one compile baseline (checks the script)")
    p.add_argument("--warmup", type=int, default=10, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=int, default=50, help="do_bench measurement time, ms")
    return p.parse_args()


def bench(fn, args):
    med, p20, p80 = harness.time_fn(fn, DEVICE, args.rep, args.warmup)
    return {"ms": med, "ms_p20": p20, "ms_p80": p80}


def _eager_norm(x):
    return F.leaky_relu(F.instance_norm(x, eps=1e-5), 0.2)


def _eager_norm_pad(x, pad):
    return F.pad(F.relu(F.instance_norm(x, eps=1e-5)), (pad,) * 4, mode="reflect")


def _eager_pad(x, pad):
    return F.pad(x, (pad,) * 4, mode="reflect")


def _fwd_bwd(fn, x, dy):
    def run():
        y = fn(x)
        torch.autograd.grad(y, x, dy)

    return run


def measure(impls, x, dy, nbytes_fwd, nbytes_bwd, args, row_base, copy_bw, rows, compile_times):
    """Times fwd and fwd+bwd of every impl; appends one row per (impl, pass)."""
    for name, fn in impls.items():
        if name == "compile":
            t0 = time.perf_counter()
            y = fn(x)
            torch.autograd.grad(y, x, dy)
            harness.sync(DEVICE)
            compile_times.append({**row_base, "impl": name, "compile_s": time.perf_counter() - t0})
        for pass_, run, nbytes in (
            ("fwd", lambda fn=fn: fn(x), nbytes_fwd),
            ("fwd+bwd", _fwd_bwd(fn, x, dy), nbytes_fwd + nbytes_bwd),
        ):
            row = {**row_base, "impl": name, "pass": pass_, "bytes": nbytes}
            try:
                row.update(bench(run, args))
                row["GBps"] = nbytes / (row["ms"] * 1e-3) / 1e9
                row["frac_copy_bw"] = row["GBps"] / copy_bw
            except Exception as e:  # one failing baseline must not hide the other rows
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)


def sweep_plans(shapes, args, dtype, fmt, N):
    """Times every candidate plan of the norm kernels; returns rows with the best and the heuristic."""
    INA = importlib.import_module("pix2pix_fast.ops.instance_norm_act")
    from pix2pix_fast.ops._common import num_sms

    out = []
    for C, S in shapes:
        x = torch.randn(N, C, S, S, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
        y = torch.empty_like(x)
        dx = torch.empty_like(x)
        mean = torch.empty(N, C, device=DEVICE)
        rstd = torch.empty_like(mean)
        sg = torch.empty_like(mean)
        sgx = torch.empty_like(mean)
        cl = fmt == torch.channels_last
        for kind, tensors in (("fwd", 1), ("bwd", 2)):
            cands = INA._candidate_plans(N, C, S * S, cl, x.element_size(), num_sms(x.device), tensors)
            timings = []
            for plan in cands:
                if kind == "fwd":
                    run = lambda p=plan: INA._launch_fwd(x, y, None, None, mean, rstd, 1e-5, "leaky_relu", 0.2, (0, 0, 0, 0), p)
                else:
                    run = lambda p=plan: INA._launch_bwd(x, x, None, None, mean, rstd, dx, sg, sgx, "leaky_relu", 0.2, (0, 0, 0, 0), p)
                try:
                    timings.append((bench(run, args)["ms"], plan))
                except Exception as e:  # a candidate that fails to compile is reported, not fatal
                    print(f"  plan {plan} failed: {type(e).__name__}: {e}", file=sys.stderr)
            best_ms, best = min(timings, key=lambda t: t[0])
            heur_ms = timings[0][0]
            nbytes = (2 if kind == "fwd" else 3) * x.numel() * x.element_size()
            out.append({
                "kind": kind, "N": N, "C": C, "H": S, "W": S, "dtype": str(dtype).split(".")[-1],
                "format": "cl" if cl else "nchw", "heuristic": asdict(cands[0]), "heuristic_ms": heur_ms,
                "best": asdict(best), "best_ms": best_ms, "best_GBps": nbytes / (best_ms * 1e-3) / 1e9,
                "all": [{"plan": asdict(p), "ms": ms} for ms, p in timings],
            })
            print(f"sweep {kind} N={N} {C}@{S} {out[-1]['dtype']} {out[-1]['format']}: heuristic {heur_ms:.4f} ms, "
                  f"best {best_ms:.4f} ms {asdict(best)}", flush=True)
    return out


def summarize(rows, copy_bw):
    """Compact table: ours next to eager and compile, per shape and pass."""
    by_key = {}
    for r in rows:
        key = (r["op"], r["N"], r["C"], r["H"], r.get("pad", 0), r["dtype"], r["format"], r["pass"])
        by_key.setdefault(key, {})[r["impl"]] = r
    lines = [
        f"copy bandwidth {copy_bw:.0f} GB/s",
        f"{'op':<10}{'N':>3} {'shape':>9} {'dt':>5} {'fmt':>4} {'pass':>8} | {'ours ms':>9} {'GB/s':>6} {'%copy':>6} |"
        f" {'eager':>8} {'x':>5} | {'compile':>8} {'x':>5}  layers",
    ]
    for key, impls in by_key.items():
        op, N, C, H, pad, dt, fmt, pass_ = key
        ours = impls.get("ours", {})
        if "ms" not in ours:
            lines.append(f"{op:<10}{N:>3} {C:>4}@{H:<4} {dt:>5} {fmt:>4} {pass_:>8} | ours failed: {ours.get('error')}")
            continue
        cells = []
        for base in ("eager", "compile"):
            b = impls.get(base, {})
            cells.append(f"{b['ms']:8.4f} {b['ms'] / ours['ms']:5.2f}" if "ms" in b else f"{'-':>8} {'-':>5}")
        lines.append(
            f"{op:<10}{N:>3} {C:>4}@{H:<4} {dt:>5} {fmt:>4} {pass_:>8} | {ours['ms']:9.4f} {ours['GBps']:6.0f}"
            f" {100 * ours['frac_copy_bw']:5.1f}% | {cells[0]} | {cells[1]}  {ours.get('layers', '')}"
        )
    lines.append("network totals (all norm+act layers):")
    lines += network_totals(rows, copy_bw)
    return "\n".join(lines)


def network_totals(rows, copy_bw):
    """One line per (network, batch, dtype, format, pass): each impl's summed time over the network's layers."""
    totals = {}
    for r in rows:
        if r["op"] != "norm_act" or "ms" not in r:
            continue
        for net, count in r["layer_counts"].items():
            key = (net, r["N"], r["dtype"], r["format"], r["pass"], r["impl"])
            t = totals.setdefault(key, [0.0, 0])
            t[0] += count * r["ms"]
            t[1] += count * r["bytes"]
    lines = []
    for key in sorted({k[:5] for k in totals}):
        net, N, dt, fmt, pass_ = key
        parts = []
        for impl in ("ours", "eager", "compile"):
            if key + (impl,) in totals:
                ms, nbytes = totals[key + (impl,)]
                parts.append(f"{impl} {ms:.3f} ms ({nbytes / (ms * 1e-3) / 1e9 / copy_bw * 100:.0f}% copy bw)")
        lines.append(f"  {net:<9} N={N:<3} {dt:>5} {fmt:>4} {pass_:>8}: " + ", ".join(parts))
    return lines


def main():
    global DEVICE
    args = parse_args()
    if args.dry_run:
        DEVICE = "cpu"
        args.batch, args.dtype, args.formats, args.rep, args.sweep = [1], ["fp32"], ["cl"], 5, False
        args.compile_max = 1 if args.compile_max is None else args.compile_max
    elif not torch.cuda.is_available():
        sys.exit("bench_ops.py needs a CUDA GPU (the ops run the PyTorch reference on CPU); nothing to time here.")
    if args.autotune:
        os.environ["PIX2PIX_FAST_AUTOTUNE"] = "1"
    from pix2pix_fast.ops import instance_norm_act, reflect_pad

    torch.backends.cudnn.benchmark = False
    copy_bw = args.copy_gbps or harness.copy_bandwidth(DEVICE, args.rep)
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"{device_name}: device copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    result = {
        "gpu": device_name,
        "env": harness.environment(DEVICE),
        "copy_GBps": copy_bw,
        "args": vars(args),
        "rows": [],
        "compile_times": [],
        "sweep": [],
    }
    rows, compile_times = result["rows"], result["compile_times"]

    def save():
        result["summary_lines"] = network_totals(rows, copy_bw)
        if args.autotune:
            INA = importlib.import_module("pix2pix_fast.ops.instance_norm_act")
            result["autotuned_plans"] = [{"key": repr(k), "plan": asdict(p)} for k, p in INA._TUNED.items()]
        harness.write_json(args.json, result)

    harness.stop_on_sigterm()
    try:
        run_all(args, result, instance_norm_act, reflect_pad, copy_bw, save)
    except KeyboardInterrupt as e:
        result["interrupted"] = str(e) or "KeyboardInterrupt"
        print(f"interrupted ({result['interrupted']}): reporting what was measured", file=sys.stderr)
    save()
    if compile_times:
        print("compile time (first fwd+bwd call), s: " + ", ".join(
            f"{c['op']} {c['N']}x{c['C']}@{c['H']} {c['dtype']} {c['format']} {c['compile_s']:.1f}"
            for c in compile_times))
    if rows:
        print(summarize(rows, copy_bw))


def run_all(args, result, instance_norm_act, reflect_pad, copy_bw, save):
    rows, compile_times = result["rows"], result["compile_times"]
    shapes = {}
    norm_layers, pad_layers = (TOY_NORM, TOY_PADS) if args.dry_run else (UNET_256 + PATCHGAN_70, PADS)
    compiled = []

    def want_compile(op):
        if args.no_compile or (args.compile_max is not None and len(compiled) >= args.compile_max):
            return False
        compiled.append(op)
        return True

    for net, layer, C, S in norm_layers:
        entry = shapes.setdefault((C, S), {"layers": [], "counts": {}})
        entry["layers"].append(f"{net}.{layer}")
        entry["counts"][net] = entry["counts"].get(net, 0) + 1

    t_start = time.perf_counter()
    for N in args.batch:
        for fmt_name in args.formats:
            fmt = FORMATS[fmt_name]
            for dt_name in args.dtype:
                dtype = DTYPES[dt_name]
                if args.sweep:
                    result["sweep"] += sweep_plans(list(shapes), args, dtype, fmt, N)
                    save()
                    continue
                for (C, S), info in shapes.items():
                    torch._dynamo.reset()
                    x = torch.randn(N, C, S, S, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
                    x.requires_grad_()
                    dy = torch.randn_like(x)
                    impls = {"ours": instance_norm_act, "eager": _eager_norm}
                    if want_compile("norm_act"):
                        impls["compile"] = torch.compile(_eager_norm, dynamic=False)
                    numel_bytes = x.numel() * x.element_size()
                    base = {"op": "norm_act", "N": N, "C": C, "H": S, "W": S, "dtype": dt_name, "format": fmt_name,
                            "act": "leaky_relu", "layers": ",".join(info["layers"]), "layer_counts": info["counts"]}
                    measure(impls, x, dy, 2 * numel_bytes, 3 * numel_bytes, args, base, copy_bw, rows, compile_times)
                    save()
                    print(f"[{time.perf_counter() - t_start:6.0f} s] norm_act N={N} {C}@{S} {dt_name} {fmt_name} done",
                          flush=True)
                if args.no_pad:
                    continue
                for net, layer, C, S, pad in pad_layers:
                    torch._dynamo.reset()
                    x = torch.randn(N, C, S, S, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
                    x.requires_grad_()
                    So = S + 2 * pad
                    dy = torch.randn(N, C, So, So, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
                    in_bytes = x.numel() * x.element_size()
                    out_bytes = dy.numel() * dy.element_size()
                    base = {"op": "pad", "N": N, "C": C, "H": S, "W": S, "pad": pad, "dtype": dt_name,
                            "format": fmt_name, "layers": f"{net}.{layer}"}
                    impls = {"ours": lambda t, p=pad: reflect_pad(t, p), "eager": lambda t, p=pad: _eager_pad(t, p)}
                    if want_compile("pad"):
                        impls["compile"] = torch.compile(lambda t, p=pad: _eager_pad(t, p), dynamic=False)
                    measure(impls, x, dy, in_bytes + out_bytes, out_bytes + in_bytes, args, base, copy_bw, rows,
                            compile_times)
                    if C >= 64:  # norm + relu + reflect pad fused (the ResNet block's padded activation)
                        base = dict(base, op="norm_pad", act="relu")
                        impls = {"ours": lambda t, p=pad: instance_norm_act(t, act="relu", pad=p),
                                 "eager": lambda t, p=pad: _eager_norm_pad(t, p)}
                        if want_compile("norm_pad"):
                            impls["compile"] = torch.compile(lambda t, p=pad: _eager_norm_pad(t, p), dynamic=False)
                        measure(impls, x, dy, in_bytes + out_bytes, out_bytes + 2 * in_bytes, args, base, copy_bw,
                                rows, compile_times)
                    save()
                    print(f"[{time.perf_counter() - t_start:6.0f} s] pad N={N} {C}@{S} pad {pad} {dt_name} {fmt_name}"
                          " done", flush=True)


if __name__ == "__main__":
    main()
