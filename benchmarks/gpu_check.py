#!/usr/bin/env python3
"""The GPU check: build, test and benchmark on one CUDA machine in one call of at most 7 minutes.

    python benchmarks/gpu_check.py OUT            # on the GPU machine (run_gpu.sh calls this)
    python benchmarks/gpu_check.py OUT --dry-run  # every stage on the CPU at toy sizes (CI)

Stages run in order of what matters most, each with its own time budget
(BUDGETS; a stage that overruns is stopped, SIGTERM then SIGKILL, and the
next one runs; time a stage leaves unused goes to the stages after it):

  install     pip install --no-build-isolation --no-deps --no-index . (the C++ loader,
              its files compiled in parallel)
  a_fast      the GPU tests that prove the fast step right: the first capture of the
              compiled bf16 step, and that it trains like the eager step
  b_targets   the training-step rows the speed targets are judged on: eager,
              graph_ref_compiled (the best stock technique) and the fast step, batch 1
              and 64, plus the switches that reuse the fast step's compiled models
              (cuda_graph=0, cudnn_benchmark=0)
  a_rest      every other GPU test (-m "gpu and not slow"), in parallel shards of equal
              test counts
  b_switches  the remaining switches on the uncompiled fast step (pad_channels,
              conv_impl=triton, reflect padding without and with fused_pad), the
              uncompiled stock rows and batch 16, appended to the same bench JSON
  c_ops       op benchmarks at the real layer shapes against eager and (a few)
              torch.compile baselines, and the fused-vs-original CycleGAN generator
  d_loader    the native loader at 1, 2, 4, 8, 16 threads

benchmarks/NOTES.md gives each budget's cost model (inductor compiles and
Triton kernels per stage) and what the replica measured. Each stage writes
its JSON into OUT as it goes (the bench after every row, the tests after
every test), so a stage stopped at its deadline keeps what it finished. OUT
holds at most 7 files: log.txt (install and every stage's output),
a_tests.json, b_bench.json, c_ops.json, d_loader.json, summary.json and
summary.txt (the one-screen summary, also printed). The driver itself
imports no torch, so it starts in milliseconds and its deadline holds
whatever a stage does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"

# (stage, budget in seconds, what it costs: see benchmarks/NOTES.md for the counts).
# The sum, with the summary's reserve, is TOTAL_S; run_gpu.sh adds a hard outer
# limit a few seconds above.
BUDGETS: list[tuple[str, int, str]] = [
    ("install", 30, "C++ loader: 3 files compiled in parallel (24 s serial, 15 s on 2 cores here), no index"),
    ("a_fast", 65, "1 test: 1 inductor compile (U-Net-64 + PatchGAN, G and D fwd+bwd), 36 Triton kernels "
                   "of ours, 200 eager + 200 captured steps"),
    ("b_targets", 150, "9 rows: 4 inductor compiles of U-Net-256 + PatchGAN (graph_ref_compiled and fast, batch "
                       "1 and 64; the cuda_graph=0 / cudnn_benchmark=0 rows reuse them), 48 new Triton kernels"),
    ("a_rest", 75, "388 tests in parallel shards: Triton JIT per kernel specialisation, 4 small inductor compiles"),
    ("b_switches", 40, "12 rows, no inductor compile: 51 new Triton kernels of ours (conv_impl, fused_pad)"),
    ("c_ops", 20, "per-shape do_bench of ours/eager, 3 torch.compile baselines, the ResNet-9 fuse rows"),
    ("d_loader", 10, "JPEG generation + timed trials, CPU only"),
    ("summary", 10, "reserve: merging JSON and writing the summary"),
]
TOTAL_S = sum(b for _, b, _ in BUDGETS)
LIMIT_S = 420  # the whole call, install included
assert TOTAL_S <= LIMIT_S - 15, TOTAL_S

PRIORITY_TEST_FILES = ("tests/test_fast_step.py",)  # correctness first: the first capture, bf16 follows eager
TEST_MARKERS = "gpu and not slow"  # -m replaces pyproject's addopts "-m 'not slow'": say both
# Bench rows in priority order, as (variant, batch) at the real sizes (small, large, middle batch);
# the dry run substitutes toy batches. Rows that share models are adjacent (see bench.steps.ModelReuse).
TARGET_ROWS = ["eager@S", "graph_ref_compiled@S", "fast@S", "fast:cuda_graph=0@S",
               "eager@L", "graph_ref_compiled@L", "fast@L", "fast:cuda_graph=0@L", "fast:cudnn_benchmark=0@L"]
SWITCH_ROWS = ["fast:compile=0@L", "fast:compile=0,pad_channels=1@L", "fast:compile=0,conv_impl=triton@L",
               "fast:compile=0,padding=reflect@L", "fast:compile=0,padding=reflect,fused_pad=1@L",
               "graph_ref@S", "graph_ref@L", "graph_ref_bf16@L", "fast:compile=0@S",
               "eager@M", "graph_ref@M", "fast:compile=0@M"]
BATCHES = {"real": {"S": 1, "L": 64, "M": 16}, "dry": {"S": 1, "L": 2, "M": 3}}
STAGES = [("install", "install"), ("a_fast", "fast_tests"), ("b_targets", "targets"), ("a_rest", "rest_tests"),
          ("b_switches", "switches"), ("c_ops", "ops"), ("d_loader", "loader")]
assert [n for n, _ in STAGES] == [n for n, _, _ in BUDGETS[:-1]]
PIP_FLAGS = ("--no-build-isolation", "--no-deps", "--no-index", "--disable-pip-version-check")
GRACE_S = 3  # between SIGTERM and SIGKILL, inside a stage's time


class Check:
    def __init__(self, out: Path, dry_run: bool, shards: int | None):
        self.out, self.dry_run = out, dry_run
        self.t0 = time.monotonic()
        self.deadline = self.t0 + TOTAL_S
        self.cores = os.cpu_count() or 1
        self.shards = shards or (2 if dry_run else max(2, min(6, self.cores // 2)))
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.stages: dict[str, dict] = {}
        self.active: list[subprocess.Popen] = []  # started and not yet waited for
        self.env_info: dict = {}
        self.test_jsonl: list[Path] = []  # every test shard's results, merged into a_tests.json
        self.test_records: list[dict] = []  # every test process's record
        self.python = [sys.executable, "-P"]  # -P: import the installed package, not the checkout's folder
        self.env = os.environ.copy()
        self.env.update(
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), self.env.get("PYTHONPATH", "")])),
            TORCHINDUCTOR_COMPILE_THREADS=str(self.cores),  # parallel inductor compile workers
        )
        if dry_run:  # toy sizes on a small shared CPU: one thread per process avoids OpenMP spin contention
            self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.log = open(out / "log.txt", "a")

    # ----------------------------------------------------------- plumbing
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def stage_deadline(self, name: str) -> float:
        """Until the global deadline minus the budgets of every later stage (unused time rolls forward)."""
        names = [n for n, _, _ in BUDGETS]
        later = sum(b for n, b, _ in BUDGETS[names.index(name) + 1:])
        return self.deadline - later

    def note(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def start(self, cmd: list[str], label: str, env: dict | None = None) -> dict:
        """Start a command in its own process group (so a stop reaches its children), output to a file."""
        out = open(self.tmp / f"{label}.out", "w+")
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                                start_new_session=True)
        self.active.append(proc)
        return {"label": label, "cmd": cmd, "proc": proc, "file": out, "t0": time.monotonic()}

    def wait(self, jobs: list[dict], deadline: float) -> list[dict]:
        """Wait for every job; GRACE_S before the deadline stop the rest (SIGTERM: they save what they
        measured), at the deadline kill what is left. Returns one record per job."""
        while any(j["proc"].poll() is None for j in jobs) and time.monotonic() < deadline - GRACE_S:
            time.sleep(0.2)
        for j in jobs:
            j["timed_out"] = j["proc"].poll() is None
            if j["timed_out"]:
                _signal_group(j["proc"], signal.SIGTERM)
        while any(j["proc"].poll() is None for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
        records = []
        for j in jobs:
            if j["proc"].poll() is None:
                _signal_group(j["proc"], signal.SIGKILL)
                j["proc"].wait()
            if j["proc"] in self.active:
                self.active.remove(j["proc"])
            j["file"].seek(0)
            text = j["file"].read()
            j["file"].close()
            self.log.write(f"\n===== {j['label']}: {' '.join(j['cmd'])}\n{text[-1_000_000:]}\n")
            self.log.flush()
            records.append({"label": j["label"], "rc": j["proc"].returncode, "timed_out": j["timed_out"],
                            "seconds": round(time.monotonic() - j["t0"], 1), "tail": text[-1500:]})
        return records

    def close(self) -> None:
        """Close the log and remove the scratch folder (its outputs are in log.txt and the stage JSON)."""
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop_all(self) -> None:
        """Kill every process still running (the driver itself is being stopped)."""
        for proc in self.active:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
        self.active.clear()

    def run(self, cmd: list[str], label: str, deadline: float, env: dict | None = None) -> dict:
        return self.wait([self.start(cmd, label, env)], deadline)[0]

    def stage(self, name: str, fn) -> None:
        t = time.monotonic()
        deadline = self.stage_deadline(name)
        budget = dict((n, b) for n, b, _ in BUDGETS)[name]
        self.note(f"stage {name}: budget {budget} s, may run {max(0.0, deadline - t):.0f} s")
        record = {"budget_s": budget, "allowed_s": round(max(0.0, deadline - t), 1)}
        try:
            record.update(fn(deadline))
        except Exception as e:  # a broken stage is reported; the next stage still runs
            record.update(status="error", detail=f"{type(e).__name__}: {e}")
        record["used_s"] = round(time.monotonic() - t, 1)
        self.stages[name] = record
        self.note(f"stage {name}: {record.get('status')} in {record['used_s']} s  {record.get('detail', '')}")
        self.write_summary(final=False)

    # ------------------------------------------------------------- stages
    def install(self, deadline: float) -> dict:
        if self.dry_run:
            r = self.run(self.python + ["-c", "import pix2pix_fast._C"], "install_check", deadline)
            return {"status": "skipped" if r["rc"] == 0 else "failed",
                    "detail": "dry run: not reinstalled; pix2pix_fast._C imports" if r["rc"] == 0
                    else "dry run: pix2pix_fast._C does not import: " + r["tail"][-300:]}
        env = {**self.env, "MAX_JOBS": str(self.cores)}
        cmd = [sys.executable, "-m", "pip", "install", *PIP_FLAGS, "."]
        target = None
        if externally_managed():  # PEP 668: a system Python outside a venv refuses plain installs
            target = self.tmp / "site"
            cmd += ["--target", str(target)]
        r = self.run(cmd, "install", deadline, env=env)
        if r["rc"] != 0 and target is None and "externally-managed-environment" in r["tail"]:
            target = self.tmp / "site"
            r = self.run(cmd + ["--target", str(target)], "install_target", deadline, env=env)
        detail = ""
        if r["rc"] == 0 and target is not None:
            self.env["PYTHONPATH"] = os.pathsep.join([str(target), self.env["PYTHONPATH"]])
            detail = f"externally managed Python: installed into {target}"
        elif r["rc"] != 0:
            # Never put the checkout in front of an installed package (it has no _C): only
            # where none imports do the later stages run from the checkout, and say so.
            probe = self.run(self.python + ["-c", "import pix2pix_fast"], "install_probe", deadline + 5)
            if probe["rc"] != 0:
                self.env["PYTHONPATH"] = os.pathsep.join([self.env["PYTHONPATH"], str(REPO)])
                detail = "install failed; later stages import the checkout (no _C): " + r["tail"][-300:]
            else:
                detail = "install failed; later stages use the package installed before: " + r["tail"][-300:]
        return {"status": _status(r), "detail": detail, "runs": [r]}

    def fast_tests(self, deadline: float) -> dict:
        """The tests that prove the fast step right, alone, with every core for their compiles."""
        files = [f for f in gpu_test_files() if f in PRIORITY_TEST_FILES]
        return self.tests("a_fast", files, 1, deadline, probe=True)

    def rest_tests(self, deadline: float) -> dict:
        files = [f for f in gpu_test_files() if f not in PRIORITY_TEST_FILES]
        return self.tests("a_rest", files, self.shards, deadline)

    def tests(self, stage: str, files: list[str], shards: int, deadline: float, probe: bool = False) -> dict:
        """pytest -m TEST_MARKERS over `files` in `shards` processes of equal test counts."""
        if not files:
            return {"status": "failed", "detail": "no test file uses the gpu marker"}
        jobs = []
        threads = max(2, self.cores // shards)
        for i in range(shards):
            jsonl = self.tmp / f"{stage}{i}.jsonl"
            self.test_jsonl.append(jsonl)
            env = {**self.env, "PIX2PIX_FAST_TEST_JSONL": str(jsonl), "TORCHINDUCTOR_COMPILE_THREADS": str(threads)}
            cmd = self.python + ["-m", "pytest", "-p", "pytest_jsonl", "-m", TEST_MARKERS, "-q", "-rfE",
                                 "--shard", f"{i}/{shards}", *files]
            jobs.append(self.start(cmd, f"{stage}{i}", env))
        if probe:
            jobs.append(self.start(self.python + ["-c", PROBE], "probe"))
        records = self.wait(jobs, deadline)
        if probe:
            probe_record = records.pop()
            for line in _read(self.tmp / "probe.out").splitlines():
                if line.startswith("ENV "):
                    self.env_info = json.loads(line[4:])
            if not self.env_info:
                self.env_info = {"probe_error": probe_record["tail"][-400:]}
        self.test_records += [dict(r, stage=stage) for r in records]
        counts, not_reached = self.write_tests()
        own = [json.loads(x) for f in self.test_jsonl if f.name.startswith(stage) for x in _read(f).splitlines()
               if x.strip()]
        own_counts: dict[str, int] = {}
        for t in own:
            if "outcome" in t:
                own_counts[t["outcome"]] = own_counts.get(t["outcome"], 0) + 1
        # pytest exit 5 = nothing selected in that shard: not a failure.
        shard_failed = any(r["rc"] not in (0, 1, 5) and not r["timed_out"] for r in records)
        status = "ok" if not own_counts.get("failed") and not own_counts.get("error") and not shard_failed else "failed"
        if any(r["timed_out"] for r in records):
            status = "timeout"
        detail = ", ".join(f"{v} {k}" for k, v in sorted(own_counts.items())) or "no results"
        missing = [n for n in not_reached if n.split("::")[0] in files]
        if missing:
            detail += f", {len(missing)} not reached"
        return {"status": status, "detail": detail, "counts": own_counts}

    def write_tests(self) -> tuple[dict, list]:
        """Merge every shard's results so far into a_tests.json; (counts, not reached)."""
        tests, collected = [], []
        for path in self.test_jsonl:
            for line in _read(path).splitlines():
                record = json.loads(line) if line.strip() else None
                if record is None:
                    continue
                if "collected" in record:
                    collected += record["collected"]
                else:
                    tests.append(record)
        order = {f: k for k, f in enumerate(PRIORITY_TEST_FILES)}
        tests.sort(key=lambda t: order.get(t["nodeid"].split("::")[0], len(order)))
        counts: dict[str, int] = {}
        for t in tests:
            counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
        reached = {t["nodeid"] for t in tests}
        not_reached = [n for n in collected if n not in reached]
        _write_json(self.out / "a_tests.json", {
            "env": self.env_info, "markers": TEST_MARKERS, "collected": len(collected), "counts": counts,
            "not_reached": not_reached, "processes": self.test_records, "tests": tests})
        return counts, not_reached

    def targets(self, deadline: float) -> dict:
        return self.bench("b_targets", TARGET_ROWS, deadline, append=False)

    def switches(self, deadline: float) -> dict:
        return self.bench("b_switches", SWITCH_ROWS, deadline, append=True)

    def bench(self, stage: str, rows: list[str], deadline: float, append: bool) -> dict:
        """One bench process over `rows` (in that order) into OUT/b_bench.json, rewritten after every row."""
        path = self.out / "b_bench.json"
        sizes = BATCHES["dry" if self.dry_run else "real"]
        if self.dry_run:
            args = ["--device", "cpu", "--suite", "gpu", "--size", "32", "--ngf", "8", "--ndf", "8",
                    "--steps", "3", "--seconds", "0.02", "--repeats", "1", "--warmup", "1"]
        else:
            args = ["--steps", "50", "--seconds", "0.4", "--repeats", "3", "--warmup", "5"]
        cmd = self.python + ["-m", "pix2pix_fast.cli", "bench", *args, "--order", "variant", "--json", str(path)]
        if append:
            cmd.append("--append")
        for spec in rows:
            variant, _, batch = spec.rpartition("@")
            cmd += ["--variant", f"{variant}@{sizes[batch]}"]
        before = len((_load(path) or {}).get("rows", [])) if append else 0
        r = self.run(cmd, stage, deadline)
        new = ((_load(path) or {}).get("rows") or [])[before:]
        n = {s: sum(1 for x in new if x.get("status") == s) for s in ("ok", "error", "skipped")}
        status = "timeout" if r["timed_out"] else ("ok" if r["rc"] == 0 and not n["error"] else "failed")
        return {"status": status, "detail": f"{len(new)} of {len(rows)} rows: {n['ok']} ok, {n['error']} error, "
                                            f"{n['skipped']} skipped", "runs": [r]}

    def ops(self, deadline: float) -> dict:
        result: dict = {"env": self.env_info, "parts": {}}
        runs = []
        parts = [  # (name, script, args, seconds kept for the parts after it)
            ("norm_pad", "bench_ops.py",
             ["--dry-run"] if self.dry_run else ["--batch", "64", "--dtype", "bf16", "--formats", "cl",
                                                 "--compile-max", "2", "--warmup", "5", "--rep", "25"], 12),
            ("loss_conv", "bench_ops_loss_conv.py",
             ["--dry-run"] if self.dry_run else ["--batches", "64,1", "--compile-layers", "unet_e2", "--rep", "25"], 6),
            ("fuse_resnet", "bench_fuse.py", ["--dry-run"] if self.dry_run else ["--batches", "1,4", "--rep", "25"], 0),
        ]
        copy_gbps = None
        for name, script, args, keep in parts:
            part_json = self.tmp / f"c_{name}.json"
            cmd = self.python + [str(HERE / script), "--json", str(part_json), *args]
            if copy_gbps and name != "norm_pad":
                cmd += ["--copy-gbps", str(copy_gbps)]
            r = self.run(cmd, f"c_{name}", min(deadline, deadline - keep) if keep else deadline)
            runs.append(r)
            data = _load(part_json)
            if data is not None:
                result["parts"][name] = data
                copy_gbps = copy_gbps or (data.get("copy_GBps") if isinstance(data, dict) else None)
            else:
                result["parts"][name] = {"error": r["tail"][-800:]}
            result["copy_GBps"] = copy_gbps
            _write_json(self.out / "c_ops.json", result)
        bad = [r["label"] for r in runs if r["rc"] != 0]
        status = "timeout" if any(r["timed_out"] for r in runs) else ("failed" if bad else "ok")
        return {"status": status, "detail": ("failed: " + ", ".join(bad)) if bad else "", "runs": runs}

    def loader(self, deadline: float) -> dict:
        args = (["--threads", "1,2", "--pairs", "6", "--seconds", "0.05", "--trials", "1", "--batch-size", "2"]
                if self.dry_run else
                ["--threads", "1,2,4,8,16", "--pairs", "48", "--seconds", "0.3", "--trials", "2"])
        r = self.run(self.python + [str(HERE / "bench_loader.py"), "--json", str(self.out / "d_loader.json"), *args],
                     "d_loader", deadline)
        return {"status": _status(r), "detail": "" if r["rc"] == 0 else r["tail"][-300:], "runs": [r]}

    # ------------------------------------------------------------ summary
    def write_summary(self, final: bool) -> str:
        text = summary_text(self)
        data = {"dry_run": self.dry_run, "env": self.env_info, "total_s": round(self.elapsed(), 1),
                "limit_s": LIMIT_S, "budgets": {n: b for n, b, _ in BUDGETS}, "final": final,
                "stages": {k: {x: y for x, y in v.items() if x != "runs"} | {
                    "runs": [{a: b for a, b in r.items() if a != "tail"} for r in v.get("runs", [])]}
                    for k, v in self.stages.items()}}
        _write_json(self.out / "summary.json", data)
        (self.out / "summary.txt").write_text(text + "\n")
        return text


# ------------------------------------------------------------------ helpers
PROBE = """
import json, os, platform, torch
d = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
     'cuda_available': torch.cuda.is_available(), 'cpu_count': os.cpu_count()}
if torch.cuda.is_available():
    d.update(gpu=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version(),
             capability='.'.join(map(str, torch.cuda.get_device_capability(0))))
try:
    import triton
    d['triton'] = triton.__version__
except ImportError:
    d['triton'] = None
import pix2pix_fast
d['package'] = os.path.dirname(pix2pix_fast.__file__)
print('ENV ' + json.dumps(d))
"""


def gpu_test_files() -> list[str]:
    """Test files that use the gpu marker (broad on purpose: a file with none just selects nothing)."""
    return [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").glob("test_*.py"))
            if "pytest.mark.gpu" in p.read_text()]


def externally_managed() -> bool:
    """PEP 668: this interpreter is a system Python, outside a virtual environment, that pip must not touch."""
    import sysconfig

    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    return not in_venv and (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _status(r: dict) -> str:
    return "timeout" if r["timed_out"] else ("ok" if r["rc"] == 0 else "failed")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def budget_table() -> str:
    lines = [f"GPU check budget (seconds; {TOTAL_S} planned of a {LIMIT_S} s call):"]
    for name, budget, cost in BUDGETS:
        lines.append(f"  {name:9} {budget:4d}  {cost}")
    return "\n".join(lines)


def summary_text(check: Check) -> str:
    env = check.env_info
    head = ("DRY RUN on CPU (toy sizes; no GPU numbers) | " if check.dry_run else "") + " | ".join(
        f"{k} {env[k]}" for k in ("gpu", "torch", "triton", "cuda", "python") if env.get(k))
    lines = [head, f"{'stage':9} {'budget':>6} {'used':>6}  status"]
    for name, budget, _ in BUDGETS[:-1]:
        s = check.stages.get(name)
        if s is None:
            lines.append(f"{name:9} {budget:6d} {'-':>6}  not run")
        else:
            lines.append(f"{name:9} {budget:6d} {s['used_s']:6.1f}  {s.get('status')}: {s.get('detail', '')}"[:150])
    lines.append(f"total {check.elapsed():.1f} s of {LIMIT_S} s")
    lines += _tests_lines(check.out / "a_tests.json")
    lines += _bench_lines(check.out / "b_bench.json")
    lines += _ops_lines(check.out / "c_ops.json")
    lines += _loader_lines(check.out / "d_loader.json")
    return "\n".join(lines)


def _tests_lines(path: Path) -> list[str]:
    data = _load(path)
    if not data:
        return []
    out = []
    first = [t for t in data["tests"] if t["nodeid"].startswith(PRIORITY_TEST_FILES)]
    for t in first:
        out.append(f"a: {t['outcome']:7} {t['nodeid']} ({t['duration_s']:.1f} s)")
    bad = [t for t in data["tests"] if t["outcome"] in ("failed", "error")]
    for t in bad[:5]:
        msg = (t.get("report") or "").strip().splitlines()
        out.append(f"a: {t['outcome']:7} {t['nodeid']}: {msg[-1][:90] if msg else ''}")
    if len(bad) > 5:
        out.append(f"a: ... {len(bad) - 5} more failures in a_tests.json")
    return out


def _bench_lines(path: Path) -> list[str]:
    data = _load(path)
    if not data or not data.get("rows"):
        return []
    out = [f"b: {'variant':42} {'bs':>3} {'ms/step':>8} {'img/s':>8} {'TFLOP/s':>7} {'x eager':>7} {'x graph':>7} "
           f"{'GiB':>5}"]
    for r in data["rows"][:24]:
        if r.get("status") != "ok":
            out.append(f"b: {r['variant'][:42]:42} {r['batch']:>3} {r.get('status')}: "
                       f"{(r.get('reason') or r.get('error') or '')[:60]}")
            continue

        def f(key, fmt):
            v = r.get(key)
            return format(v, fmt) if v is not None else "-"

        out.append(f"b: {r['variant'][:42]:42} {r['batch']:>3} {r['ms_per_step']:8.2f} {r['img_per_s']:8.1f} "
                   f"{f('tflops', '7.1f'):>7} {f('speedup_vs_eager', '7.2f'):>7} "
                   f"{f('speedup_vs_graph_ref', '7.2f'):>7} "
                   f"{f('peak_mem_gib', '5.1f'):>5}")
    if len(data["rows"]) > 24:
        out.append(f"b: ... {len(data['rows']) - 24} more rows in b_bench.json")
    return out


def _ops_lines(path: Path) -> list[str]:
    data = _load(path)
    if not data:
        return []
    out = []
    if data.get("copy_GBps"):
        out.append(f"c: device copy bandwidth {data['copy_GBps']:.0f} GB/s")
    for name, part in data.get("parts", {}).items():
        if not isinstance(part, dict):
            continue
        for line in part.get("summary_lines", [])[:4]:
            out.append(f"c: {name}: {line}")
        if "error" in part and not part.get("summary_lines"):
            err = str(part["error"]).strip().splitlines()
            out.append(f"c: {name}: error {err[-1][:100] if err else ''}")
    return out


def _loader_lines(path: Path) -> list[str]:
    data = _load(path)
    if not data:
        return []
    cells = [f"{r['threads']}t {r['pairs_per_s']:.0f}" for r in data.get("native", [])
             if r["batch_size"] == data["config"]["batch_size"]]
    ref = data.get("reference", {}).get("pairs_per_s_incl_decode")
    return [f"d: loader pairs/s: {', '.join(cells)} (PIL reference, 1 core: {ref})"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--dry-run", action="store_true", help="every stage on the CPU at toy sizes (no install)")
    ap.add_argument("--shards", type=int, default=None, help="parallel pytest processes in stage a_rest")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run, args.shards)
    print(budget_table(), flush=True)
    check.log.write(budget_table() + "\n")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        for name, run in STAGES:
            check.stage(name, getattr(check, run))
    except KeyboardInterrupt as e:
        check.stop_all()
        check.note(f"interrupted ({e}); writing what was measured")
    text = check.write_summary(final=True)
    print("\n" + text, flush=True)
    check.close()
    return 0 if all(s.get("status") in ("ok", "skipped") for s in check.stages.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
