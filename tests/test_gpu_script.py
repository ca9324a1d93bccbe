"""The GPU check script (benchmarks/run_gpu.sh -> benchmarks/gpu_check.py): its
budgets fit the 7-minute call, an overrunning stage is stopped, and the dry run
runs every stage on the CPU and writes every output file."""
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budgets_fit_the_call(gpu_check):
    names = [n for n, _, _ in gpu_check.BUDGETS]
    assert names == ["install", "a_tests", "b_bench", "c_ops", "d_loader", "summary"]
    assert all(b > 0 for _, b, _ in gpu_check.BUDGETS)
    assert sum(b for _, b, _ in gpu_check.BUDGETS) == gpu_check.TOTAL_S
    # The outer hard limit of run_gpu.sh (timeout + kill grace) stays inside the 7-minute call.
    m = re.search(r"timeout -k (\d+) (\d+) ", SCRIPT.read_text())
    assert m, "run_gpu.sh must bound the driver with timeout"
    kill, limit = int(m.group(1)), int(m.group(2))
    assert gpu_check.TOTAL_S < limit and limit + kill <= gpu_check.LIMIT_S == 420


def test_stage_deadlines_leave_every_later_budget(gpu_check, tmp_path):
    check = gpu_check.Check(tmp_path, dry_run=True, shards=None)
    budgets = {n: b for n, b, _ in gpu_check.BUDGETS}
    assert check.stage_deadline("d_loader") == pytest.approx(check.deadline - budgets["summary"])
    assert check.stage_deadline("a_tests") == pytest.approx(
        check.deadline - sum(budgets[n] for n in ("b_bench", "c_ops", "d_loader", "summary")))
    check.close()


def test_shards_put_priority_files_first_and_every_file_once(gpu_check):
    files = {"tests/test_fast_step.py": 5, "tests/a.py": 50, "tests/b.py": 40, "tests/c.py": 30, "tests/d.py": 5}
    shards = gpu_check._shard(files, 3, ("tests/test_fast_step.py",))
    assert shards[0] == ["tests/test_fast_step.py"]
    assert len(shards) == 3
    assert sorted(f for s in shards for f in s) == sorted(files)
    assert sorted(len(s) for s in shards[1:]) == [2, 2]  # 50+5 against 40+30: balanced by weight


def test_gpu_test_files_cover_every_gpu_test(gpu_check):
    files = gpu_check.gpu_test_files()
    assert "tests/test_fast_step.py" in files
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "tests"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    collected = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert collected and collected <= set(files), collected - set(files)


def test_overrunning_command_is_stopped_and_recorded(gpu_check, tmp_path):
    check = gpu_check.Check(tmp_path, dry_run=True, shards=None)
    t0 = time.monotonic()
    record = check.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], "slow",
                       deadline=time.monotonic() + gpu_check.GRACE_S + 5)
    assert record["timed_out"] and record["rc"] != 0
    assert time.monotonic() - t0 < 30
    assert "started" in record["tail"]
    check.stage("d_loader", lambda deadline: 1 / 0)  # a broken stage is recorded and the driver goes on
    assert check.stages["d_loader"]["status"] == "error"
    assert "ZeroDivisionError" in check.stages["d_loader"]["detail"]
    check.close()


def test_dry_run_writes_every_stage(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, timeout=400)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a_tests.json", "b_bench.json", "c_ops.json", "d_loader.json", "log.txt", "summary.json",
                       "summary.txt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["final"]
    assert list(summary["stages"]) == ["install", "a_tests", "b_bench", "c_ops", "d_loader"]
    assert all(s["status"] in ("ok", "skipped") for s in summary["stages"].values()), summary["stages"]
    assert summary["total_s"] <= seconds + 1
    text = (out / "summary.txt").read_text()
    assert text in proc.stdout
    assert len(text.splitlines()) <= 60  # one screen

    tests = json.loads((out / "a_tests.json").read_text())
    assert tests["collected"] > 0 and tests["collected"] == len(tests["tests"])
    assert tests["tests"][0]["nodeid"].startswith("tests/test_fast_step.py::")  # correctness first
    assert {t["outcome"] for t in tests["tests"]} == {"skipped"}  # no GPU here: every gpu test skips itself

    rows = json.loads((out / "b_bench.json").read_text())["rows"]
    by_variant = {(r["variant"], r["batch"]): r for r in rows}
    assert by_variant[("eager", 1)]["status"] == "ok"
    assert by_variant[("fast:compile=0", 1)]["status"] == "ok"
    for (variant, batch), r in by_variant.items():
        if r["base"].startswith("graph_ref"):
            assert (r["status"], r["reason"]) == ("skipped", "no CUDA")
        else:
            assert r["status"] == "ok", r
    assert {"fast:compile=0,pad_channels=1", "fast:compile=0,conv_impl=triton", "fast:compile=0,cudnn_benchmark=0",
            "fast:compile=0,cuda_graph=0", "fast:compile=1",
            "fast:compile=0,padding=reflect,fused_pad=1"} <= {v for v, _ in by_variant}
    assert any(batch != 1 for _, batch in by_variant)

    ops = json.loads((out / "c_ops.json").read_text())
    assert set(ops["parts"]) == {"norm_pad", "loss_conv", "fuse_resnet"}
    assert ops["copy_GBps"] > 0
    impls = {r["impl"] for r in ops["parts"]["norm_pad"]["rows"]}
    assert {"ours", "eager", "compile"} <= impls
    assert ops["parts"]["loss_conv"]["rows"] and ops["parts"]["fuse_resnet"]["rows"]

    loader = json.loads((out / "d_loader.json").read_text())
    assert sorted({r["threads"] for r in loader["native"]}) == [1, 2]
