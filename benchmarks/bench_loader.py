"""Input-pipeline benchmark: the native PairedLoader against the reference PIL pipeline.

    python benchmarks/bench_loader.py [--json OUT] [--pairs 64] [--seconds 1.0] [--trials 5] [--threads 1,2,4,8,16]

Reference (per pair, one core, the way the reference's Python workers do it):
decode a 512x256 AB JPEG, split A | B, bicubic resize both to 286x286,
random 256 crop, random flip, to float tensor in [-1, 1] (ToTensor +
Normalize(0.5, 0.5), written out in torch since torchvision may be absent).
Reported twice: "incl. decode" (the whole per-epoch cost of the reference) and
"excl. decode" (from already-decoded images), because the native loader
decodes each image once, into its cache, and never again.

Native: PairedLoader(batch_size, threads=t) over the same images, iterated for
whole epochs; uint8 batches (the [-1, 1] scaling happens on the device). Per
configuration: pairs/s (wall clock) and CPU time per pair (all threads of
the process, so the Python main thread's share counts too). "Per core" =
threads=1, whose wall time includes the main thread waiting, and
pairs per CPU-second.

Trials alternate between the pipelines so that both see the same background
load; medians (and the best trial) are reported. The machine's load average is
recorded: on a shared machine, absolute numbers move, the ratios much less.
Benchmarks are not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from pix2pix_fast.bench import harness
from pix2pix_fast.data.loader import PairedLoader, default_threads


# --- data --------------------------------------------------------------------
def natural_ab(rng: np.random.Generator, h: int = 256, w: int = 512) -> np.ndarray:
    """A photo-like AB image: smooth gradients, blobs, edges and sensor noise (JPEG-realistic)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = 128 + 60 * np.sin(x / rng.uniform(15, 60) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(15, 60))
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 60)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return img.clip(0, 255).astype(np.uint8)


class JpegFolder:
    """Aligned AB JPEGs in a folder, with the duck-typed dataset interface PairedLoader takes."""

    def __init__(self, root: Path):
        self.paths = sorted(root.glob("*.jpg"))
        self.names = [p.name for p in self.paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            ab = np.asarray(im.convert("RGB"))
        w2 = ab.shape[1] // 2
        return ab[:, :w2], ab[:, w2:]

    def fingerprint(self):
        return "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.paths)

    def sources(self, i):
        return [str(self.paths[i])]


# --- the reference pipeline ----------------------------------------------------
def to_tensor_normalized(img: Image.Image) -> torch.Tensor:
    # torchvision ToTensor() + Normalize((0.5,) * 3, (0.5,) * 3)
    t = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    t = t.to(torch.float32).div(255)
    return t.sub_(0.5).div_(0.5)


def reference_pair(ab: Image.Image, rnd: random.Random, load: int = 286, crop: int = 256):
    w, h = ab.size
    w2 = w // 2
    a, b = ab.crop((0, 0, w2, h)), ab.crop((w2, 0, w, h))
    x, y = rnd.randint(0, max(0, load - crop)), rnd.randint(0, max(0, load - crop))
    flip = rnd.random() > 0.5
    out = []
    for im in (a, b):
        im = im.resize((load, load), Image.BICUBIC)
        im = im.crop((x, y, x + crop, y + crop))
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(to_tensor_normalized(im))
    return out


def time_reference(paths, decoded, seconds: float, with_decode: bool) -> tuple[float, float]:
    """(pairs per second, CPU microseconds per pair) of the reference on the calling thread."""
    rnd = random.Random(0)
    n, i, c0, t0 = 0, 0, time.process_time(), time.perf_counter()
    while True:
        if with_decode:
            with Image.open(paths[i % len(paths)]) as im:
                ab = im.convert("RGB")
        else:
            ab = decoded[i % len(decoded)]
        reference_pair(ab, rnd)
        n, i = n + 1, i + 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt, (time.process_time() - c0) / n * 1e6


# --- the native loader --------------------------------------------------------------
def time_native(loader: PairedLoader, seconds: float) -> tuple[float, float]:
    """(pairs per second, CPU microseconds per pair) over whole epochs lasting >= `seconds`."""
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while True:
        for a, b in loader:
            n += a.shape[0]
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt, (time.process_time() - c0) / n * 1e6


def machine_info() -> dict:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    from PIL import features

    return {
        **harness.environment("cpu"),
        "cores_available": default_threads(),
        "cpu_count": os.cpu_count(),
        "avx2": " avx2" in flags,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check("libjpeg_turbo")),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--pairs", type=int, default=64, help="AB images in the dataset")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one timed trial")
    ap.add_argument("--trials", type=int, default=5, help="trials per configuration (median reported)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", default=None,
                    help="comma-separated loader thread counts (default: those of 1,2,4,8,16 up to the core count)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # the reference's workers are single-threaded processes
    cores = default_threads()
    if args.threads:
        thread_counts = sorted({int(t) for t in args.threads.split(",") if t})
    else:
        thread_counts = [t for t in (1, 2, 4, 8, 16) if t <= cores] or [1]
    info = machine_info()
    print(f"{info['cpu']}, {cores} cores, load average {info['load_average_at_start']}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ab"
        root.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.pairs):
            Image.fromarray(natural_ab(rng)).save(root / f"{i:04d}.jpg", quality=90)
        ds = JpegFolder(root)
        decoded = []
        for p in ds.paths:
            with Image.open(p) as im:
                decoded.append(im.convert("RGB"))

        t0 = time.perf_counter()
        loaders = {
            (t, bs): PairedLoader(ds, bs, threads=t, pin_memory=False, cache_dir=Path(tmp) / "cache")
            for t in thread_counts
            for bs in {args.batch_size, 1}
            if bs == args.batch_size or t == thread_counts[-1]
        }
        build_s = (time.perf_counter() - t0) / len(loaders)
        for loader in loaders.values():  # warm-up: page in the cache, first allocations
            time_native(loader, 0.05)
        time_reference(ds.paths, decoded, 0.2, True)

        ref_incl, ref_excl, ref_incl_cpu, ref_excl_cpu = [], [], [], []
        native: dict = {key: ([], []) for key in loaders}
        for trial in range(args.trials):
            for rates, cpus, with_decode in ((ref_incl, ref_incl_cpu, True), (ref_excl, ref_excl_cpu, False)):
                rate, cpu_us = time_reference(ds.paths, decoded, args.seconds, with_decode)
                rates.append(rate)
                cpus.append(cpu_us)
            for key, loader in loaders.items():
                rate, cpu_us = time_native(loader, args.seconds)
                native[key][0].append(rate)
                native[key][1].append(cpu_us)
            print(f"trial {trial + 1}/{args.trials} done", file=sys.stderr)

    med_incl, med_excl = statistics.median(ref_incl), statistics.median(ref_excl)
    cpu_incl, cpu_excl = statistics.median(ref_incl_cpu), statistics.median(ref_excl_cpu)
    rows = []
    for (t, bs), (rates, cpu_us) in sorted(native.items(), key=lambda kv: (kv[0][1] != args.batch_size, kv[0])):
        rate, cpu = statistics.median(rates), statistics.median(cpu_us)
        rows.append(
            {
                "threads": t,
                "batch_size": bs,
                "pairs_per_s": round(rate, 1),
                "pairs_per_s_best": round(max(rates), 1),
                "cpu_us_per_pair": round(cpu, 1),
                "pairs_per_cpu_s": round(1e6 / cpu, 1),
                "x_reference_incl_decode": round(rate / med_incl, 2),
                "x_reference_excl_decode": round(rate / med_excl, 2),
            }
        )
    one = next(r for r in rows if r["threads"] == 1 and r["batch_size"] == args.batch_size)
    result = {
        "benchmark": "input pipeline: 512x256 AB JPEG -> (A, B) 256x256 crops of a 286 resize, flip",
        "machine": info,
        "config": {
            "threads": thread_counts,
            "cores": cores,
            "pairs": args.pairs,
            "load_size": 286,
            "crop_size": 256,
            "batch_size": args.batch_size,
            "seconds_per_trial": args.seconds,
            "trials": args.trials,
            "native_cache_build_s": round(build_s, 3),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "reference": {
            "pairs_per_s_incl_decode": round(med_incl, 1),
            "ms_per_pair_incl_decode": round(1e3 / med_incl, 2),
            "pairs_per_s_excl_decode": round(med_excl, 1),
            "ms_per_pair_excl_decode": round(1e3 / med_excl, 2),
            "cpu_us_per_pair_incl_decode": round(cpu_incl, 1),
            "cpu_us_per_pair_excl_decode": round(cpu_excl, 1),
            "trials_incl_decode": [round(v, 1) for v in ref_incl],
            "trials_excl_decode": [round(v, 1) for v in ref_excl],
        },
        "native": rows,
        "per_core": {
            "native_pairs_per_s_1_thread": one["pairs_per_s"],
            "native_pairs_per_cpu_s": one["pairs_per_cpu_s"],
            "x_reference_incl_decode": round(one["pairs_per_s"] / med_incl, 2),
            "x_reference_excl_decode": round(one["pairs_per_s"] / med_excl, 2),
            "x_reference_incl_decode_by_cpu_time": round(cpu_incl / one["cpu_us_per_pair"], 2),
            "x_reference_excl_decode_by_cpu_time": round(cpu_excl / one["cpu_us_per_pair"], 2),
        },
    }

    print(f"\nreference PIL pipeline, 1 core: {med_incl:.1f} pairs/s incl. decode ({1e3 / med_incl:.2f} ms/pair, "
          f"{cpu_incl / 1e3:.2f} CPU-ms/pair), {med_excl:.1f} pairs/s excl. decode ({1e3 / med_excl:.2f} ms/pair, "
          f"{cpu_excl / 1e3:.2f} CPU-ms/pair)")
    print(f"{'threads':>7} {'batch':>5} {'pairs/s':>9} {'best':>9} {'cpu us/pair':>11} {'x ref incl':>10} {'x ref excl':>10}")
    for r in rows:
        print(f"{r['threads']:>7} {r['batch_size']:>5} {r['pairs_per_s']:>9.1f} {r['pairs_per_s_best']:>9.1f} "
              f"{r['cpu_us_per_pair']:>11.1f} {r['x_reference_incl_decode']:>10.2f} {r['x_reference_excl_decode']:>10.2f}")
    pc = result["per_core"]
    print(f"per core: native {pc['native_pairs_per_s_1_thread']} pairs/s = {pc['x_reference_incl_decode']}x the reference "
          f"incl. decode, {pc['x_reference_excl_decode']}x excl. decode (wall clock); by CPU time "
          f"{pc['native_pairs_per_cpu_s']} pairs/CPU-s = {pc['x_reference_incl_decode_by_cpu_time']}x incl. decode, "
          f"{pc['x_reference_excl_decode_by_cpu_time']}x excl. decode")
    if args.json:
        harness.write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
