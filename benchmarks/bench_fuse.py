"""Fused against original: a CycleGAN ResNet generator, forward + backward.

    python benchmarks/bench_fuse.py [--json OUT] [--batches 1,4] [--size 256] [--rep 25] [--dry-run]

The original is the CycleGAN/pix2pix reference's ResnetGenerator as written
there (an ``nn.Sequential`` of ReflectionPad2d, Conv2d, InstanceNorm2d, ReLU,
9 residual blocks, transposed convs, Tanh), built here from torch.nn only;
the fused model is ``pix2pix_fast.nn.fuse.fuse(original)`` (same parameters,
fused InstanceNorm+ReLU(+reflect pad) layers). Per batch size and precision
(fp32 NCHW; bf16 autocast channels_last): forward+backward time of both
(``triton.testing.do_bench`` median, p20, p80), the speed-up, and the largest
output difference. When ``pix2pix_fast.nn.fuse`` does not exist yet the JSON
says so and nothing is timed. ``--dry-run``: CPU, a narrow 2-block model at
32x32, fp32, wall clock (checks the script, not the speed).
"""
from __future__ import annotations

import argparse
import sys

import torch

from pix2pix_fast.bench import harness
from pix2pix_fast.interop.reference_nets import ResnetGenerator, get_norm_layer
from pix2pix_fast.nn import fuse

DEVICE = "cuda"


def fwd_bwd(model, x, dtype):
    def run():
        with torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = model(x)
        y.float().mean().backward()
        for p in model.parameters():
            p.grad = None

    return run


def main(argv=None) -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rep", type=int, default=25, help="do_bench measuring time per point, ms")
    ap.add_argument("--copy-gbps", type=float, default=None, help="accepted for a uniform command line; unused")
    ap.add_argument("--dry-run", action="store_true", help="CPU, narrow 2-block model at 32x32, fp32")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    ngf, n_blocks, precisions = 64, 9, [("fp32", None, torch.contiguous_format),
                                         ("bf16", torch.bfloat16, torch.channels_last)]
    if args.dry_run:
        DEVICE, batches, args.size, args.rep, ngf, n_blocks = "cpu", [1], 32, 5, 8, 2
        precisions = precisions[:1]
    elif not torch.cuda.is_available():
        print("bench_fuse: needs a CUDA GPU (the fused layers' Triton kernels); nothing was measured.", file=sys.stderr)
        return 0
    result = {"model": f"CycleGAN ResnetGenerator ngf={ngf} blocks={n_blocks} instance norm, reflect pad",
              "env": harness.environment(DEVICE), "rows": [], "summary_lines": []}
    torch.manual_seed(0)
    # The reference ResnetGenerator (instance norm, no dropout, reflect padding).
    original = ResnetGenerator(3, 3, ngf, get_norm_layer("instance"), n_blocks=n_blocks).to(DEVICE)
    fused = fuse(original)
    for name, dtype, fmt in precisions:
        for n in batches:
            x = torch.randn(n, 3, args.size, args.size, device=DEVICE).contiguous(memory_format=fmt)
            row = {"batch": n, "precision": name, "memory_format": "channels_last" if fmt is torch.channels_last
                   else "nchw", "size": args.size}
            try:
                models = {"original": original.to(memory_format=fmt), "fused": fused.to(memory_format=fmt)}
                autocast = torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None)
                with torch.no_grad(), autocast:
                    diff = models["fused"](x).float() - models["original"](x).float()
                    row["max_abs_diff"] = diff.abs().max().item()
                for key, model in models.items():
                    med, p20, p80 = harness.time_fn(fwd_bwd(model, x, dtype), DEVICE, args.rep)
                    row[f"{key}_ms"], row[f"{key}_p20"], row[f"{key}_p80"] = med, p20, p80
                row["speedup"] = row["original_ms"] / row["fused_ms"]
                result["summary_lines"].append(
                    f"ResNet-{n_blocks} G fwd+bwd N={n} {name}: original {row['original_ms']:.3f} ms, fused "
                    f"{row['fused_ms']:.3f} ms ({row['speedup']:.2f}x), max diff {row['max_abs_diff']:.2e}")
            except Exception as e:  # one failing configuration is recorded; the others still run
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                result["summary_lines"].append(f"N={n} {name}: error {row['error'][:100]}")
            result["rows"].append(row)
    harness.write_json(args.json, result)
    for line in result["summary_lines"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
