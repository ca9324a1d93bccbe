"""Count (and time the compile of) the Triton kernels each GPU-check stage launches, on a CPU.

    python benchmarks/count_kernels.py [--compile] [--json OUT]

The GPU check's budgets (benchmarks/gpu_check.py, benchmarks/NOTES.md) rest
on what each stage must compile. This traces the fast step of each bench
row's configuration on fake tensors, exactly as tests/test_gpu_compile.py
does (its helpers are imported from there), turns every op call into the
launches the ops plan at the row's batch size (bf16, channels_last, the
H200's 132 multiprocessors), and counts the distinct kernels (one per
compile key): the kernels of ours that a cold run compiles, each with a C
launcher. ``--compile`` also compiles each new one for sm_90a with Triton's
compiler and ptxas, with empty caches, and reports the wall time (this
machine's cores in parallel) and the summed compile time of the kernels
(what one process pays compiling them one after another, as the JIT does). inductor's own
kernels (torch.compile of the models) cannot be counted without a GPU;
the stages' inductor compiles are counted by configuration instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import test_gpu_compile as T  # noqa: E402
from pix2pix_fast.config import TrainConfig  # noqa: E402
from pix2pix_fast.models import build_discriminator, build_generator  # noqa: E402
from pix2pix_fast.ops import gpu_compile  # noqa: E402

H200_SMS = 132
# (stage, row, config fields, batch): the rows whose fast step launches kernels of ours.
ROWS = [
    ("a_fast", "test_fast_step_cuda_graph_follows_eager_step",
     dict(netG="unet_64", ngf=32, ndf=32, crop_size=64, load_size=64), 4),
    ("b_targets", "fast@1", {}, 1),
    ("b_targets", "fast@64", {}, 64),
    ("b_switches", "fast:compile=0,conv_impl=triton@64", dict(conv_impl="triton"), 64),
    ("b_switches", "fast:compile=0,padding=reflect@64", dict(padding="reflect"), 64),
    ("b_switches", "fast:compile=0,padding=reflect,fused_pad=1@64", dict(padding="reflect", fused_pad=True), 64),
    ("b_switches", "fast:compile=0@16", {}, 16),
]


def row_launches(fields: dict, batch: int) -> list:
    """Every launch the fast step of this configuration makes at `batch` (bf16, channels_last)."""
    T.SM_COUNTS = (H200_SMS,)
    T._norm_launches.cache_clear()
    cfg = TrainConfig(**{"crop_size": 256, "load_size": 256, **fields})
    G, D = build_generator(cfg, fused=True), build_discriminator(cfg, fused=True)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    step = T._fast_step(cfg, G, D, torch.bfloat16)
    rec = T._Recorder()
    size = cfg.crop_size
    with FakeTensorMode(allow_non_fake_inputs=True):
        A = torch.randn(1, cfg.input_nc, size, size).to(memory_format=torch.channels_last)
        B = torch.randn(1, cfg.output_nc, size, size).to(memory_format=torch.channels_last)
        with rec:
            step._step(A, B)
    launches = []
    for name, args in rec.calls:
        if name == "aten::convolution" or (name == "aten::reflection_pad2d" and not cfg.fused_pad):
            continue  # cuDNN's and PyTorch's own, unless a switch replaces them by ours
        launches += T._launches_of_call(name, args, rec.producer, batch)
    if cfg.conv_impl == "triton":
        launches += T._conv_replacements(rec, batch)
    return gpu_compile.unique_launches(launches)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="also compile each new kernel for sm_90a and time it")
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args(argv)
    seen: set = set()
    rows = []
    for stage, row, fields, batch in ROWS:
        launches = row_launches(fields, batch)
        new = [l for l in launches if gpu_compile.compile_key(l) not in seen]
        seen.update(gpu_compile.compile_key(l) for l in launches)
        record = {"stage": stage, "row": row, "kernels": len(launches), "new_kernels": len(new)}
        if args.compile and new:
            with tempfile.TemporaryDirectory() as cache:
                # Cold, as on a fresh GPU machine: no result cache, and Triton's own cache
                # (inherited by the compile workers) empty.
                os.environ["TRITON_CACHE_DIR"] = str(Path(cache) / "triton")
                t0 = time.perf_counter()
                results = gpu_compile.compile_launches(new, archs=(90,), cache_dir=Path(""))
                record["compile_wall_s"] = round(time.perf_counter() - t0, 1)
                record["compile_cpu_s"] = round(sum(r.seconds for r in results), 1)
                record["errors"] = sum(1 for r in results if r.error)
        rows.append(record)
        print(json.dumps(record), flush=True)
    import triton

    out = {"triton": triton.__version__, "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "sms": H200_SMS, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
