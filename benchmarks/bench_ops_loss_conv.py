"""GPU benchmark of the fused PatchGAN loss and of conv_norm_act against cuDNN.

    python benchmarks/bench_ops_loss_conv.py [--json OUT] [--batches 1,64]
        [--compile-layers unet_e2,patchgan_l4] [--rep 60] [--only loss|conv]
        [--no-compile] [--copy-gbps GBPS] [--dry-run]

Conv-norm-act block at the U-Net-256 encoder and 70x70 PatchGAN layer shapes
(bf16, channels_last, 4x4 kernels, LeakyReLU 0.2), forward and forward+backward:
  * ``cudnn+in_act``  F.conv2d (cuDNN) + the fused ``instance_norm_act`` op:
                      the baseline the issue asks conv_norm_act to beat;
  * ``conv_norm_act`` the fused op, output materialised (conv + statistics +
                      one light normalise/activate pass);
  * ``chained``       the fused op as it runs inside a chain: input is the
                      previous layer's PendingNormAct (norm + act applied in the
                      prologue), output deferred (no light pass): the per-block
                      steady-state cost;
  * ``eager``         F.conv2d + F.instance_norm + F.leaky_relu;
  * ``compile``       torch.compile of ``eager`` (only --compile-layers; compile
                      time reported separately).
PatchGAN loss (vanilla, smoothing + flipping) on 64x1x30x30 / 1x1x30x30 maps,
fused op against eager (BCE-with-logits with the same targets drawn in
PyTorch) and torch.compile of it.

Timings: triton.testing.do_bench medians with p20/p80 (ms); TFLOP/s counts the
convolution's 2*N*Ho*Wo*Cout*Cin*KH*KW FLOPs (x3 for forward+backward); GB/s
counts the minimum bytes (input read + output written, forward only), also as
a fraction of the device copy bandwidth (measured here once, or given with
--copy-gbps).  The JSON (``{"env", "copy_GBps", "rows", "summary_lines"}``,
one row per (case, config, impl)) is rewritten after every case, so a run cut
short (timeout, SIGTERM) keeps what it measured.  ``--dry-run`` runs the same
code on the CPU at toy shapes in fp32 with a wall clock (it checks the script,
not the speed).  Benchmarks are not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import sys
import time


import torch
import torch.nn.functional as F

from pix2pix_fast.bench import harness

# name, C_in, C_out, input H (= W), stride; the 4x4 convolutions followed by
# an instance norm in U-Net-256's encoder and in the 70x70 PatchGAN.
LAYERS = [
    ("unet_e2", 64, 128, 128, 2),
    ("unet_e3", 128, 256, 64, 2),
    ("unet_e4", 256, 512, 32, 2),
    ("unet_e5", 512, 512, 16, 2),
    ("unet_e6", 512, 512, 8, 2),
    ("unet_e7", 512, 512, 4, 2),
    ("patchgan_l2", 64, 128, 128, 2),
    ("patchgan_l3", 128, 256, 64, 2),
    ("patchgan_l4", 256, 512, 32, 1),
]
TOY_LAYERS = [("toy_e2", 8, 16, 16, 2), ("toy_l4", 16, 16, 8, 1)]
DEVICE = "cuda"
DTYPE = torch.bfloat16  # of the conv benchmark; fp32 in --dry-run


def _bench(fn, rep):
    return harness.time_fn(fn, DEVICE, rep, warmup_ms=25)


def bench_conv(args, env, rows, save):
    from pix2pix_fast.ops.conv_norm_act import PendingNormAct, conv_norm_act
    from pix2pix_fast.ops.instance_norm_act import instance_norm_act

    dev, dt = DEVICE, DTYPE
    compile_layers = set() if args.no_compile else set(filter(None, args.compile_layers.split(",")))
    for name, c_in, c_out, hw, s in (TOY_LAYERS if args.dry_run else LAYERS):
        for n in args.batches:
            torch.manual_seed(0)
            x = torch.randn(n, c_in, hw, hw, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
            w = (torch.randn(c_out, c_in, 4, 4, device=dev, dtype=dt) * 0.05).contiguous(
                memory_format=torch.channels_last)
            b = torch.zeros(c_out, device=dev, dtype=dt)
            # A pending norm for the chained input: statistics of x per (n, c).
            var, mean = torch.var_mean(x.float(), dim=(2, 3), correction=0)
            pending = PendingNormAct(x, mean, torch.rsqrt(var + 1e-5), "leaky_relu", 0.2)
            leaves = [x, w, b, mean]
            for t in leaves:
                t.requires_grad_()
            ho = (hw + 2 - 4) // s + 1
            flops = 2.0 * n * ho * ho * c_out * c_in * 16
            nbytes = (x.numel() + n * c_out * ho * ho) * x.element_size()

            def eager():
                return F.leaky_relu(F.instance_norm(F.conv2d(x, w, b, s, 1)), 0.2)

            impls = {
                "cudnn+in_act": lambda: instance_norm_act(F.conv2d(x, w, b, s, 1), act="leaky_relu",
                                                          negative_slope=0.2),
                "conv_norm_act": lambda: conv_norm_act(x, w, b, s, 1, "leaky_relu", 0.2),
                "chained": lambda: conv_norm_act(pending, w, b, s, 1, "leaky_relu", 0.2, defer=True).raw,
                "eager": eager,
            }
            compile_s = None
            if name in compile_layers:
                compiled = torch.compile(eager)
                t0 = time.perf_counter()
                harness.fwd_bwd(compiled, leaves)()
                harness.sync(DEVICE)
                compile_s = time.perf_counter() - t0
                impls["compile"] = compiled
            for impl, f in impls.items():
                for mode in ("fwd", "fwd+bwd"):
                    if mode == "fwd":
                        with torch.no_grad():
                            med, p20, p80 = _bench(f, args.rep)
                    else:
                        med, p20, p80 = _bench(harness.fwd_bwd(f, leaves), args.rep)
                    mult = 1 if mode == "fwd" else 3
                    rows.append(dict(
                        env, case="conv_norm_act", layer=name, batch=n, c_in=c_in, c_out=c_out, hw=hw, stride=s,
                        dtype=str(dt).split(".")[-1], layout="channels_last", impl=impl, mode=mode,
                        ms=med, p20=p20, p80=p80, tflops=mult * flops / med / 1e9,
                        gbps=nbytes / med / 1e6 if mode == "fwd" else None,
                        frac_copy_bw=nbytes / med / 1e6 / args.copy_gbps if mode == "fwd" else None,
                        compile_s=compile_s if impl == "compile" else None,
                    ))
            save()


def bench_loss(args, env, rows, save):
    from pix2pix_fast.ops.patchgan_loss import patchgan_loss, patchgan_targets_ref

    dev = DEVICE
    smoothing, flip = (0.7, 1.0), 0.1
    for n in args.batches:
        for dt in ((torch.float32,) if args.dry_run else (torch.bfloat16, torch.float32)):
            logits = torch.randn(n, 1, 30, 30, device=dev, dtype=dt, requires_grad=True)
            seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=dev)

            def eager():
                # The same math written plainly: targets drawn on the device, BCE with logits.
                target, _ = patchgan_targets_ref(logits.shape, True, smoothing=smoothing, flip_prob=flip,
                                                 seed=seed, device=dev)
                return F.binary_cross_entropy_with_logits(logits.float(), target)

            def fused():
                return patchgan_loss(logits, True, "vanilla", smoothing=smoothing, flip_prob=flip)

            impls = [("patchgan_loss", fused), ("eager", eager)]
            compile_s = None
            if not args.no_compile:
                compiled = torch.compile(eager)
                t0 = time.perf_counter()
                harness.fwd_bwd(compiled, [logits])()
                harness.sync(DEVICE)
                compile_s = time.perf_counter() - t0
                impls.append(("compile", compiled))
            nbytes = 2 * logits.numel() * logits.element_size()  # read logits, write the gradient
            for impl, f in impls:
                for mode in ("fwd", "fwd+bwd"):
                    if mode == "fwd":
                        with torch.no_grad():
                            med, p20, p80 = _bench(f, args.rep)
                    else:
                        med, p20, p80 = _bench(harness.fwd_bwd(f, [logits]), args.rep)
                    rows.append(dict(
                        env, case="patchgan_loss", layer=f"{n}x1x30x30", batch=n, dtype=str(dt).split(".")[-1],
                        mode_loss="vanilla+smooth+flip", impl=impl, mode=mode, ms=med, p20=p20, p80=p80,
                        gbps=nbytes / med / 1e6, compile_s=compile_s if impl == "compile" else None,
                    ))
            save()


def summary_lines(rows):
    """Compact totals: per batch, the conv layers' fwd+bwd time summed per impl; the loss per batch and dtype."""
    lines = []
    conv = {}
    for r in rows:
        if r["case"] == "conv_norm_act" and r["mode"] == "fwd+bwd":
            conv.setdefault(r["batch"], {}).setdefault(r["impl"], []).append(r["ms"])
    for n, impls in conv.items():
        full = {k: v for k, v in impls.items() if len(v) == len(impls.get("cudnn+in_act", []))}
        lines.append(f"conv+norm+act fwd+bwd N={n}, sum over {len(impls.get('cudnn+in_act', []))} layers: "
                     + ", ".join(f"{k} {sum(v):.3f} ms" for k, v in full.items()))
    for r in rows:
        if r["case"] == "patchgan_loss" and r["mode"] == "fwd+bwd" and r["impl"] == "patchgan_loss":
            others = {x["impl"]: x["ms"] for x in rows if x["case"] == "patchgan_loss" and x["mode"] == "fwd+bwd"
                      and x["batch"] == r["batch"] and x["dtype"] == r["dtype"] and x["impl"] != "patchgan_loss"}
            lines.append(f"patchgan_loss fwd+bwd {r['layer']} {r['dtype']}: {r['ms']:.4f} ms; "
                         + ", ".join(f"{k} {v:.4f} ms ({v / r['ms']:.2f}x)" for k, v in others.items()))
    return lines


def print_table(rows):
    print()
    print(f"{'case':14s} {'layer':12s} {'N':>3s} {'mode':8s} {'impl':14s} {'ms':>8s} {'p20-p80':>15s} "
          f"{'TFLOP/s':>8s} {'GB/s':>7s} {'vs base':>8s}")
    base = {}
    for r in rows:
        if r["impl"] in ("cudnn+in_act",) or (r["case"] == "patchgan_loss" and r["impl"] == "eager"):
            base[(r["case"], r["layer"], r["batch"], r["mode"], r.get("dtype"))] = r["ms"]
    for r in rows:
        b = base.get((r["case"], r["layer"], r["batch"], r["mode"], r.get("dtype")))
        tf = f"{r['tflops']:8.1f}" if r.get("tflops") else f"{'':8s}"
        gb = f"{r['gbps']:7.0f}" if r.get("gbps") else f"{'':7s}"
        layer = r["layer"] if r["case"] != "patchgan_loss" else f"{r['layer']}/{r['dtype']}"
        print(f"{r['case']:14s} {layer[:12]:12s} {r['batch']:3d} {r['mode']:8s} {r['impl']:14s} {r['ms']:8.4f} "
              f"{r['p20']:7.4f}-{r['p80']:7.4f} {tf} {gb} {(b / r['ms'] if b else float('nan')):7.2f}x")
    print("vs base: speed-up over cuDNN conv + instance_norm_act (conv rows) / eager (loss rows); >1 is faster.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write the rows as JSON to this file")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--compile-layers", default="unet_e2,patchgan_l4",
                   help="layers for which torch.compile is also measured (compiling is slow)")
    p.add_argument("--rep", type=int, default=60, help="do_bench measuring time per point, ms")
    p.add_argument("--only", choices=("loss", "conv"), help="run one of the two benchmarks")
    p.add_argument("--no-compile", action="store_true", help="skip every torch.compile baseline")
    p.add_argument("--copy-gbps", type=float, default=None, help="device copy bandwidth, if already measured")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy shapes, fp32, no compile (checks the script)")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    global DEVICE, DTYPE
    if args.dry_run:
        DEVICE, DTYPE = "cpu", torch.float32
        args.batches, args.rep, args.no_compile = [1], 5, True
    elif not torch.cuda.is_available():
        print("bench_ops_loss_conv: needs a CUDA GPU (Triton kernels); nothing was measured.", file=sys.stderr)
        return 0
    env = {"gpu": "cpu", **harness.environment(DEVICE)}  # every row carries it
    print(f"# {env['gpu']} | torch {env['torch']} | triton {env['triton']} | cuda {env.get('cuda')}", flush=True)
    args.copy_gbps = args.copy_gbps or harness.copy_bandwidth(DEVICE)
    rows = []
    result = {"env": env, "copy_GBps": args.copy_gbps, "args": vars(args), "rows": rows}

    def save():
        result["summary_lines"] = summary_lines(rows)
        harness.write_json(args.json, result)

    harness.stop_on_sigterm()
    try:
        # conv first: its keep-or-drop decision matters more than the loss's compile baseline
        if args.only in (None, "conv"):
            bench_conv(args, env, rows, save)
        if args.only in (None, "loss"):
            bench_loss(args, env, rows, save)
    except KeyboardInterrupt as e:
        result["interrupted"] = str(e) or "KeyboardInterrupt"
        print(f"interrupted ({result['interrupted']}): reporting what was measured", file=sys.stderr)
    save()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
