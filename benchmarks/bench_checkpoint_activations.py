"""Training memory and step time against crop size, with and without --checkpoint-activations.

    python benchmarks/bench_checkpoint_activations.py [--sizes 256,512,1024] [--repeats 3] [--json OUT]

The paper's configuration (unet_256, ngf 64, ndf 64, the 70x70 PatchGAN,
instance norm, batch 1) on the eager step in fp32; `--netG`, `--ngf` and
`--ndf` change it. Per crop size:

* activation memory: bytes autograd keeps for backward during one step's
  forward passes (each storage once, weights excluded; a deterministic
  count, the same on any machine);
* peak RSS: the maximum resident set of a fresh process that builds the
  models and runs one step, minus its resident set just before that step (so the ~300 MB of the Python and torch libraries do not hide the
  difference). One process per (size, setting), because a peak cannot be
  reset within a process;
* step time: one process per size builds both steps and alternates them
  (one warm-up step each, then `--repeats` steps each, interleaved, so both
  see the same background load); medians, and their ratio.

On a GPU the same script reports torch.cuda.max_memory_allocated instead of
RSS. Benchmarks are not tests: nothing here asserts a number.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pix2pix_fast.bench.harness import environment, sync, write_json  # noqa: E402
from pix2pix_fast.config import TrainConfig  # noqa: E402
from pix2pix_fast.train.build import Mode, build_models, make_step  # noqa: E402


def _step(cfg: TrainConfig, device: torch.device):
    parts = build_models(cfg, "eager", device)
    return make_step(cfg, Mode("eager"), parts, autocast_dtype=None)


def _batch(cfg: TrainConfig, device: torch.device):
    g = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)
    return [(torch.rand(shape, generator=g) * 2 - 1).to(device) for _ in range(2)]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _trim() -> None:
    """Hand the memory the first step freed back to the system (glibc keeps it otherwise, and the
    second step would reuse it without raising the resident set)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class _PeakRss:
    """The largest resident set seen while the block runs (sampled every millisecond), in MB."""

    def __enter__(self):
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def measure_memory(cfg: TrainConfig, device: torch.device) -> dict:
    """In this (fresh) process, for the second step (the first allocates gradients and Adam's state):
    the bytes kept for backward, and the peak memory over the memory before the step."""
    step = _step(cfg, device)
    A, B = _batch(cfg, device)
    step(A, B)
    _trim()
    weights = {p.untyped_storage().data_ptr() for m in (step.G, step.D) for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:  # a weight is kept anyway: not an activation
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    before = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    with _PeakRss() as rss, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(A, B)
        sync(device)
    row = {"saved_for_backward_mb": sum(seen.values()) / 2**20}
    if device.type == "cuda":
        row.update(allocated_before_step_mb=before, max_allocated_mb=torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        row.update(rss_before_step_mb=before, peak_rss_mb=rss.peak, peak_rss_over_start_mb=rss.peak - before)
    return row


def measure_time(cfg: TrainConfig, device: torch.device, repeats: int) -> dict:
    steps = {on: _step(cfg.replace(checkpoint_activations=on), device) for on in (False, True)}
    A, B = _batch(cfg, device)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats + 1):
        for on, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step(A, B)
            sync(device)
            if i > 0:  # the first round is the warm-up
                times[on].append(time.perf_counter() - t0)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {"step_s_off": off, "step_s_on": on, "time_ratio_on_over_off": on / off,
            "step_s_all_off": times[False], "step_s_all_on": times[True]}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256,512,1024")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--netG", default="unet_256")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--child", choices=("memory", "time"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    device = torch.device(a.device)

    if a.child:
        cfg = TrainConfig(netG=a.netG, ngf=a.ngf, ndf=a.ndf, crop_size=a.size, load_size=a.size, batch_size=1,
                          checkpoint_activations=a.on)
        row = measure_memory(cfg, device) if a.child == "memory" else measure_time(cfg, device, a.repeats)
        print(json.dumps(row))
        return

    common = ["--netG", a.netG, "--ngf", str(a.ngf), "--ndf", str(a.ndf), "--device", a.device]
    result = {"environment": environment(device), "config": {"netG": a.netG, "ngf": a.ngf, "ndf": a.ndf,
              "batch": 1, "backend": "eager", "precision": "fp32", "n_layers_D": 3, "norm": "instance"},
              "rows": []}
    for size in (int(s) for s in a.sizes.split(",")):
        row = {"size": size}
        for on in (False, True):
            mem = _child(["--child", "memory", "--size", str(size), *common] + (["--on"] if on else []))
            row.update({f"{k}_{'on' if on else 'off'}": v for k, v in mem.items()})
        row.update(_child(["--child", "time", "--size", str(size), "--repeats", str(a.repeats), *common]))
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_json(a.json, result)


if __name__ == "__main__":
    main()
