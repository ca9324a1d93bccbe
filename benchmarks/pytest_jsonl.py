"""pytest plugin: one JSON line per test, appended the moment the test ends; and shards.

    PIX2PIX_FAST_TEST_JSONL=results.jsonl pytest -p pytest_jsonl [--shard K/N] ...

(with this folder on PYTHONPATH). A run that is killed part-way keeps every
result it reached; `gpu_check.py` merges the lines into its stage JSON.
``--shard K/N`` runs the K-th of N contiguous, equally long slices of the
selected tests (after -m and -k), so N processes share the tests by count
while each keeps neighbouring tests (the same kernels) together.
"""
from __future__ import annotations

import json
import os

import pytest

ENV = "PIX2PIX_FAST_TEST_JSONL"
MAX_TEXT = 6000  # characters of a failure report kept per test


def _write(record: dict) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def pytest_runtest_logreport(report):
    # One record per test: its call, or the setup/teardown phase that failed or skipped it.
    if report.when == "call" or (report.when == "setup" and not report.passed) or (
        report.when == "teardown" and report.failed
    ):
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                  "duration_s": round(report.duration, 4)}
        if report.skipped and isinstance(report.longrepr, tuple):
            record["reason"] = str(report.longrepr[2])
        elif report.failed:
            record["outcome"] = "failed" if report.when == "call" else "error"
            record["report"] = str(report.longrepr)[-MAX_TEXT:]
        _write(record)


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="K/N", help="run the K-th of N slices of the selected tests")


def shard_slice(n_items: int, shard: str) -> tuple[int, int]:
    """[start, stop) of slice K of N (0-based) over n_items; the slices differ in length by at most one."""
    k, n = (int(x) for x in shard.split("/"))
    if not 0 <= k < n:
        raise ValueError(f"--shard {shard}: K must be in 0..N-1")
    return k * n_items // n, (k + 1) * n_items // n


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if not shard:
        return
    start, stop = shard_slice(len(items), shard)
    deselected = items[:start] + items[stop:]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = items[start:stop]


def pytest_collection_finish(session):
    _write({"collected": [item.nodeid for item in session.items]})


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "error",
                "report": str(report.longrepr)[-MAX_TEXT:]})
