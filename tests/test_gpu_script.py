"""The GPU check script (benchmarks/run_gpu.sh -> benchmarks/gpu_check.py): its
budgets fit the 7-minute call, the stages run what matters most first, an
overrunning stage is stopped, the install neither needs an index nor hides
the installed package, and the dry run runs every stage on the CPU and writes
every output file."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"
# -P as the GPU check runs its tests: the installed package (with its built _C), not the
# checkout's folder, which a clean checkout has without _C (test_loader.py would skip whole).
PYTEST = [sys.executable, "-P", "-m", "pytest"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGES = ["install", "a_fast", "b_targets", "a_rest", "b_switches", "c_ops", "d_loader"]


def test_budgets_fit_the_call(gpu_check):
    names = [n for n, _, _ in gpu_check.BUDGETS]
    assert names == STAGES + ["summary"]
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
    assert check.stage_deadline("a_rest") == pytest.approx(
        check.deadline - sum(budgets[n] for n in ("b_switches", "c_ops", "d_loader", "summary")))
    check.close()


def test_shards_split_the_selected_tests_by_count_in_contiguous_slices():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from pytest_jsonl import shard_slice
    finally:
        sys.path.pop(0)
    for n_items in (0, 1, 7, 196):
        for n in (1, 3, 6):
            slices = [shard_slice(n_items, f"{k}/{n}") for k in range(n)]
            assert slices[0][0] == 0 and slices[-1][1] == n_items
            assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, each test once
            lengths = [stop - start for start, stop in slices]
            assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError):
        shard_slice(5, "3/3")


def test_install_needs_no_index_and_never_hides_the_installed_package(gpu_check, tmp_path, monkeypatch):
    def fake_run(outcomes):
        calls = []

        def run(cmd, label, deadline, env=None):
            calls.append((label, cmd, env))
            return {"rc": outcomes.get(label, 0), "timed_out": False, "tail": "", "label": label, "seconds": 0.0}

        return calls, run

    # A system Python (PEP 668): install into a folder of its own, put first on the path.
    check = gpu_check.Check(tmp_path, dry_run=False, shards=None)
    monkeypatch.setattr(gpu_check, "externally_managed", lambda: True)
    calls, check.run = fake_run({})
    result = check.install(time.monotonic() + 60)
    (label, cmd, env), = calls
    assert {"--no-build-isolation", "--no-deps", "--no-index", "--disable-pip-version-check"} <= set(cmd)
    assert env["MAX_JOBS"] == str(check.cores)
    target = cmd[cmd.index("--target") + 1]
    assert check.env["PYTHONPATH"].split(os.pathsep)[0] == target and result["status"] == "ok"
    check.close()

    # A failed install where an earlier one imports: the checkout stays off the path.
    monkeypatch.setattr(gpu_check, "externally_managed", lambda: False)
    check = gpu_check.Check(tmp_path, dry_run=False, shards=None)
    before = check.env["PYTHONPATH"]
    calls, check.run = fake_run({"install": 1})
    assert check.install(time.monotonic() + 60)["status"] == "failed"
    assert [c[0] for c in calls] == ["install", "install_probe"] and check.env["PYTHONPATH"] == before
    check.close()

    # Nothing installed at all: the checkout goes last on the path, behind everything installed.
    check = gpu_check.Check(tmp_path, dry_run=False, shards=None)
    calls, check.run = fake_run({"install": 1, "install_probe": 1})
    check.install(time.monotonic() + 60)
    assert check.env["PYTHONPATH"].split(os.pathsep)[-1] == str(REPO)
    assert str(REPO) not in before.split(os.pathsep)
    check.close()


def test_gpu_test_files_cover_every_gpu_test(gpu_check):
    files = gpu_check.gpu_test_files()
    assert "tests/test_fast_step.py" in files
    proc = subprocess.run([*PYTEST, "-m", "gpu", "--collect-only", "-q", "tests"],
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
    assert list(summary["stages"]) == STAGES
    assert all(s["status"] in ("ok", "skipped") for s in summary["stages"].values()), summary["stages"]
    assert summary["total_s"] <= seconds + 1
    text = (out / "summary.txt").read_text()
    assert text in proc.stdout
    assert len(text.splitlines()) <= 60  # one screen

    tests = json.loads((out / "a_tests.json").read_text())
    assert tests["markers"] == "gpu and not slow"
    selected = subprocess.run([*PYTEST, "-m", "gpu and not slow", "--collect-only", "-q",
                               "tests"], cwd=REPO, capture_output=True, text=True, timeout=300).stdout
    assert tests["collected"] == sum("::" in line for line in selected.splitlines()) == len(tests["tests"])
    assert tests["tests"][0]["nodeid"].startswith("tests/test_fast_step.py::")  # correctness first
    assert {t["outcome"] for t in tests["tests"]} == {"skipped"}  # no GPU here: every gpu test skips itself
    shards = [p for p in tests["processes"] if p["stage"] == "a_rest"]
    assert len(shards) == 2 and all(p["rc"] == 0 for p in shards)

    # The targets first, in priority order; the switches that train the same models reuse them.
    rows = json.loads((out / "b_bench.json").read_text())["rows"]
    assert [r["variant"] for r in rows[:9]] == [
        "eager@1", "graph_ref_compiled@1", "fast@1", "fast:cuda_graph=0@1", "eager@2", "graph_ref_compiled@2",
        "fast@2", "fast:cuda_graph=0@2", "fast:cudnn_benchmark=0@2"]
    by_variant = {r["variant"]: r for r in rows}
    assert [by_variant[v]["models"] for v in ("fast@2", "fast:cuda_graph=0@2", "fast:cudnn_benchmark=0@2")] == [
        "built", "reused", "reused"]
    for variant, r in by_variant.items():
        if r["base"].startswith("graph_ref"):
            assert (r["status"], r["reason"]) == ("skipped", "no CUDA")
        else:
            assert r["status"] == "ok", r
    assert {"fast:compile=0,pad_channels=1@2", "fast:compile=0,conv_impl=triton@2", "fast:compile=0@2",
            "fast:compile=0,padding=reflect,fused_pad=1@2", "eager@3"} <= set(by_variant)
    # A row of the second bench process is compared with the first process's eager row.
    assert by_variant["fast:compile=0@2"]["speedup_vs_eager"] == pytest.approx(
        by_variant["eager@2"]["ms_per_step"] / by_variant["fast:compile=0@2"]["ms_per_step"])

    ops = json.loads((out / "c_ops.json").read_text())
    assert set(ops["parts"]) == {"norm_pad", "loss_conv", "fuse_resnet"}
    assert ops["copy_GBps"] > 0
    impls = {r["impl"] for r in ops["parts"]["norm_pad"]["rows"]}
    assert {"ours", "eager", "compile"} <= impls
    assert ops["parts"]["loss_conv"]["rows"] and ops["parts"]["fuse_resnet"]["rows"]

    loader = json.loads((out / "d_loader.json").read_text())
    assert sorted({r["threads"] for r in loader["native"]}) == [1, 2]
