"""pytest plugin: one JSON line per test, appended the moment the test ends.

    PIX2PIX_FAST_TEST_JSONL=results.jsonl pytest -p pytest_jsonl ...

(with this folder on PYTHONPATH). A run that is killed part-way keeps every
result it reached; `gpu_check.py` merges the lines into its stage JSON.
"""
from __future__ import annotations

import json
import os

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


def pytest_collection_finish(session):
    _write({"collected": [item.nodeid for item in session.items]})


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "error",
                "report": str(report.longrepr)[-MAX_TEXT:]})
