"""Data-parallel scaling: training img/s on N ranks and the efficiency against 1 rank.

One launch per world size, each the torchrun form (what multi-node runs use):

    torchrun --nproc-per-node N benchmarks/bench_distributed.py [--batch-size 1] [--size 256] [--steps 20]

times the training step (the trainer's, with its gradient average over the
ranks) on synthetic batches of --batch-size per rank and prints one JSON row
from rank 0: img/s = global batch x steps / the slowest rank's time.

Without torchrun, the script launches those runs itself for each N of
--nproc (through `python -m torch.distributed.run`, on this machine) and
adds the scaling efficiency = img/s(N) / (N x img/s(1)):

    python benchmarks/bench_distributed.py --nproc 1,2 --device cpu --size 32 --netG unet_32 --ngf 8 --ndf 8 \\
        --batch-size 2 --steps 20 --threads-per-rank 1 --json dist_cpu.json

On CPU the ranks use gloo and split the cores (threads per rank = cores /
ranks, or --threads-per-rank), so the efficiency there measures the
all-reduce and the split, not more hardware; on a busy machine
--threads-per-rank 1 keeps OpenMP from spinning against other work. On GPUs (NCCL, one GPU per rank) the numbers are owed until
measured. Each row records torch version, device and config; the compile
and warm-up steps are excluded from the timing. Benchmarks are not tests:
nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pix2pix_fast.bench import harness


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", default="1,2", help="world sizes to launch when not under torchrun (default: 1,2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="eager", choices=("eager", "fast"),
                   help="training step (fast: fused kernels + CUDA graph, CUDA only)")
    p.add_argument("--batch-size", type=int, default=1, help="per rank (default: 1)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--netG", default=None, help="default: unet_<size>")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    p.add_argument("--threads-per-rank", type=int, default=0,
                   help="CPU: torch threads per rank (default 0: the cores split over the ranks of the node)")
    p.add_argument("--json", metavar="FILE", help="write the rows (and efficiencies) as JSON")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict | None:
    """One rank of a torchrun launch: time the step; rank 0's row (None on other ranks)."""
    from pix2pix_fast.config import TrainConfig
    from pix2pix_fast.data.loader import default_threads
    from pix2pix_fast.train.distributed import World
    from pix2pix_fast.device import resolve_device
    from pix2pix_fast.train.build import build_models, initial_mode, make_step, resolve_precision

    cfg = TrainConfig(netG=args.netG or f"unet_{args.size}", ngf=args.ngf, ndf=args.ndf, crop_size=args.size,
                      load_size=args.size, batch_size=args.batch_size, device=args.device, backend=args.backend,
                      dropout=False)
    world = World.from_env()
    device = world.device(resolve_device(cfg.device))
    world.init(device)
    if device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size))
        torch.set_num_threads(args.threads_per_rank or max(1, default_threads() // local))
    # What `train` runs on this backend (train.build), without the fallback: a failure here is the result.
    step = make_step(cfg, initial_mode(cfg, args.backend, device), build_models(cfg, args.backend, device, world),
                     autocast_dtype=resolve_precision(cfg, device, args.backend), world=world)
    gen = torch.Generator().manual_seed(world.rank)
    A = (torch.rand(args.batch_size, 3, args.size, args.size, generator=gen) * 2 - 1).to(device)
    B = (torch.rand(args.batch_size, 3, args.size, args.size, generator=gen) * 2 - 1).to(device)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(A, B)
    harness.sync(device)
    world.barrier()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(A, B)
    harness.sync(device)
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    if world.enabled:
        import torch.distributed as dist

        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=world.control)  # the slowest rank
    seconds = float(elapsed)
    row = None
    if world.is_writer:
        global_batch = args.batch_size * world.world_size
        row = {
            "world_size": world.world_size, "batch_per_rank": args.batch_size, "global_batch": global_batch,
            "img_per_s": global_batch * args.steps / seconds, "ms_per_step": 1000 * seconds / args.steps,
            "warmup_s": warmup_s, "steps": args.steps, "device": _device_name(device), "backend": args.backend,
            "netG": cfg.netG, "ngf": cfg.ngf, "ndf": cfg.ndf, "size": args.size,
            "threads_per_rank": torch.get_num_threads() if device.type == "cpu" else None,
            **{k: v for k, v in harness.environment(device).items() if k in ("torch", "python", "cpu", "gpu")},
        }
    world.close()
    return row


def _device_name(device: torch.device) -> str:
    from pix2pix_fast.data.loader import default_threads

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({default_threads()} cores)"


def launch_all(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Not under torchrun: one `torch.distributed.run` launch per world size; rows + efficiency."""
    rows = []
    passthrough = _drop_option(_drop_option(argv, "--nproc"), "--json")
    for n in [int(x) for x in args.nproc.split(",") if x]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), str(Path(__file__).resolve()), *passthrough]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"world size {n} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(lines[-1]))
    base = next((r for r in rows if r["world_size"] == 1), None)
    for r in rows:
        if base is not None:
            r["scaling_efficiency"] = r["img_per_s"] / (r["world_size"] * base["img_per_s"])
    return rows


def _drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if "WORLD_SIZE" in os.environ:
        row = measure(args)
        if row is not None:
            print(json.dumps(row), flush=True)
            harness.write_json(args.json, [row])
        return
    rows = launch_all(args, argv)
    for r in rows:
        eff = f"  efficiency {r['scaling_efficiency']:.2f}" if "scaling_efficiency" in r else ""
        print(f"{r['world_size']} rank(s) x batch {r['batch_per_rank']}: {r['img_per_s']:.1f} img/s "
              f"({r['ms_per_step']:.1f} ms/step){eff}")
    harness.write_json(args.json, rows)


if __name__ == "__main__":
    main()
