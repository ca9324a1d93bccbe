"""Pieces the benchmark scripts share: CPU timing, JSON written atomically, SIGTERM as an interrupt."""
from __future__ import annotations

import json
import signal
import time


def wall_clock(fn, rep_ms: float) -> tuple[float, float, float]:
    """CPU stand-in for triton.testing.do_bench: median, p20, p80 in ms of calls over
    about rep_ms (at least 3 calls), after one warm-up call."""
    fn()
    times, t_end = [], time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return tuple(times[min(len(times) - 1, int(q * len(times)))] for q in (0.5, 0.2, 0.8))


def write_json(path: str | None, obj) -> None:
    """Write obj to path (if given) through a temporary file, so a kill never leaves half a file."""
    if not path:
        return
    from pix2pix_fast.fileio import write_text

    write_text(path, json.dumps(obj, indent=1))


def stop_on_sigterm() -> None:
    """SIGTERM (a stage's time is up) raises KeyboardInterrupt, so the script saves what it measured."""
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
