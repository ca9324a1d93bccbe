"""Tiled inference: agreement with whole-image inference, seams, speed, and peak memory against image size.

    python benchmarks/bench_tiled.py quality CKPT [--side 1024] [--tiles 128:64,256:64] [--repeats 3] [--json OUT]
    python benchmarks/bench_tiled.py memory [--ckpt CKPT] [--sides 1024,4096,10240] [--json OUT]

quality: on a side x side image (a mosaic of the built-in synthetic inputs at the size the quick-start model
trains on), the checkpoint in eval mode, whole image and tiled (image-wide statistics and per-tile statistics)
for each TILE:OVERLAP: the mean absolute difference from whole-image inference on the 0-1 scale (uint8 outputs,
so it includes rounding), the seam score, and megapixels per second (medians of interleaved repeats).

Seam score: the mean squared difference of neighbouring output pixels across the lines where tiles start or
end, over the same across every line of the image; 1 = the tile edges look like anywhere else. Reported for
the tiled output and, as the image's own level at the same lines, for the whole-image output.

memory: each side in a fresh process: peak RSS (VmHWM, reset before the call) of a tiled run with per-tile statistics (one pass;
the statistics passes hold no more: they stop partway through the same tiles), the RSS before the call, and
the input and output arrays' bytes; the working memory is peak - before - output. The model is the
checkpoint's generator with --ngf 8 (random weights: memory and speed do not depend on them), so that 10k px
sides take minutes on 2 cores. Whole-image inference is measured too where --whole-sides lists the side.
Benchmarks are not tests: nothing here asserts a figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from pix2pix_fast.bench import harness
from pix2pix_fast.config import TrainConfig
from pix2pix_fast.data.synthetic import render_pair
from pix2pix_fast.inference import Pix2Pix
from pix2pix_fast.inference.tiled import TileOptions, tile_starts
from pix2pix_fast.inference.model import pad_layout


def mosaic(side: int, cell: int = 72, seed: int = 0) -> np.ndarray:
    """A side x side uint8 input made of built-in synthetic inputs of `cell` px (the training images' size)."""
    rng = np.random.default_rng(seed)
    n = -(-min(side, 1024) // cell)
    block = np.concatenate([np.concatenate([render_pair(rng, cell)[0] for _ in range(n)], 1) for _ in range(n)], 0)
    reps = -(-side // block.shape[0])
    return np.ascontiguousarray(np.tile(block, (reps, reps, 1))[:side, :side])


def seam_lines(length: int, model: Pix2Pix, tile: int, overlap: int) -> list[int]:
    """Image positions where a tile starts or ends (between pixel p-1 and p), inside (0, length)."""
    left, right, _, _ = pad_layout(length, length, model.multiple, 0)
    canvas = length + left + right
    t = min(tile, canvas)
    starts = tile_starts(canvas, t, overlap, model.multiple)
    edges = {s - left for s in starts} | {s + t - left for s in starts}
    return sorted(p for p in edges if 0 < p < length)


def seam_score(img: np.ndarray, lines: list[int]) -> float:
    x = img.astype(np.float64)
    dy = ((x[1:] - x[:-1]) ** 2).mean(axis=(1, 2))  # dy[p - 1]: across the line between rows p-1 and p
    dx = ((x[:, 1:] - x[:, :-1]) ** 2).mean(axis=(0, 2))
    at = np.mean([dy[p - 1] for p in lines] + [dx[p - 1] for p in lines])
    return float(at / np.mean(np.concatenate([dy, dx])))


def quality(args) -> dict:
    img = mosaic(args.side)
    mp = args.side * args.side / 1e6
    whole = Pix2Pix.from_checkpoint(args.checkpoint, device="cpu", eval_mode=True,
                                    tiling=TileOptions(max_memory=2**30))
    runs = {"whole": whole}
    for spec in args.tiles.split(","):
        tile, overlap = (int(v) for v in spec.split(":"))
        for stats in (True, False):
            runs[f"tile {tile}:{overlap} {'image' if stats else 'per-tile'} stats"] = Pix2Pix.from_checkpoint(
                args.checkpoint, device="cpu", eval_mode=True,
                tiling=TileOptions(tile=tile, overlap=overlap, image_stats=stats))
    times = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so that every run sees the same background load
        for name, model in runs.items():
            t0 = time.perf_counter()
            outputs[name] = model(img)
            times[name].append(time.perf_counter() - t0)
    ref = outputs["whole"].astype(np.float64)
    rows = []
    for name, out in outputs.items():
        row = {"run": name, "megapixels_per_s": round(mp / statistics.median(times[name]), 4),
               "seconds": [round(t, 3) for t in times[name]]}
        if name != "whole":
            tile, overlap = (int(v) for v in name.split()[1].split(":"))
            lines = seam_lines(args.side, runs[name], tile, overlap)
            diff = np.abs(out.astype(np.float64) - ref) / 255.0
            row.update(mad=round(float(diff.mean()), 6), mad_x255=round(float(diff.mean() * 255), 3),
                       max_abs=round(float(diff.max()), 4), seam_score=round(seam_score(out, lines), 4),
                       seam_score_whole_same_lines=round(seam_score(outputs["whole"], lines), 4))
        rows.append(row)
        print(json.dumps(row))
    return {"side": args.side, "checkpoint": str(args.checkpoint), "rows": rows}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> None:
    """Linux: make VmHWM (peak RSS) start again from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(args) -> dict:
    """One side, in this (fresh) process."""
    from pix2pix_fast.models import build_generator
    from pix2pix_fast.checkpoint import config_of, load_checkpoint

    cfg = config_of(load_checkpoint(args.checkpoint), args.checkpoint) if args.checkpoint else TrainConfig(
        netG="unet_64")
    cfg = TrainConfig(**{**cfg.to_dict(), "ngf": 8})  # the loaded checkpoint is freed before the peak is reset
    torch.manual_seed(0)
    G = build_generator(cfg)
    whole = args.mode == "whole"
    model = Pix2Pix(G, cfg, device="cpu", eval_mode=True, tiling=TileOptions(
        tile=0 if whole else args.tile, overlap=None if whole else args.overlap,
        max_memory=2**30 if whole else 0, image_stats=False))
    img = mosaic(args.side)
    model(img[:64, :64])  # warm up: allocator, thread pool
    _reset_peak_rss()
    before = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    out = model(img)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") * 1024
    return {"side": args.side, "mode": args.mode, "tile": None if whole else args.tile,
            "overlap": None if whole else args.overlap, "peak_rss_mib": round(peak / 2**20, 1),
            "rss_before_mib": round(before / 2**20, 1), "input_mib": round(img.nbytes / 2**20, 1),
            "output_mib": round(out.nbytes / 2**20, 1),
            "working_mib": round((peak - before - out.nbytes) / 2**20, 1),
            "megapixels_per_s": round(args.side**2 / 1e6 / seconds, 4), "seconds": round(seconds, 2),
            "netG": cfg.netG, "ngf": cfg.ngf}


def memory(args) -> dict:
    rows = []
    jobs = [(s, "tiled") for s in args.sides] + [(s, "whole") for s in args.whole_sides]
    for side, mode in jobs:
        cmd = [sys.executable, __file__, "memory-child", "--side", str(side), "--mode", mode,
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--threads", str(args.threads)]
        if args.checkpoint:
            cmd += ["--ckpt", str(args.checkpoint)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("checkpoint")
    q.add_argument("--side", type=int, default=1024)
    q.add_argument("--tiles", default="128:64,256:64", help="TILE:OVERLAP,...")
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--json")
    for name in ("memory", "memory-child"):
        m = sub.add_parser(name)
        m.add_argument("--ckpt", dest="checkpoint")
        m.add_argument("--tile", type=int, default=256)
        m.add_argument("--overlap", type=int, default=64)
        m.add_argument("--json")
        if name == "memory":
            m.add_argument("--sides", type=lambda s: [int(v) for v in s.split(",")], default=[1024, 4096, 10240])
            m.add_argument("--whole-sides", type=lambda s: [int(v) for v in s.split(",")], default=[1024, 2048])
        else:
            m.add_argument("--side", type=int, required=True)
            m.add_argument("--mode", choices=("tiled", "whole"), required=True)
    for sp in sub.choices.values():
        sp.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, 2 threads wait on each other)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "memory-child":
        print(json.dumps(memory_child(args)))
        return
    result = quality(args) if args.what == "quality" else memory(args)
    result = {"benchmark": f"tiled {args.what}", "environment": harness.environment("cpu"),
              "load_average": os.getloadavg(), **result}
    if args.json:
        harness.write_json(args.json, result)


if __name__ == "__main__":
    main()
