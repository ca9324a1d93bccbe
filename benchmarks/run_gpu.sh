#!/usr/bin/env bash
# The GPU check in one call of at most 7 minutes (install included):
#   bash benchmarks/run_gpu.sh OUT            # on a CUDA machine, from the repository root
#   bash benchmarks/run_gpu.sh OUT --dry-run  # every stage on the CPU at toy sizes (CI)
# Stages, budgets and outputs: benchmarks/gpu_check.py (the budget table is
# printed first) and benchmarks/NOTES.md. OUT receives at most 7 files:
# log.txt, a_tests.json, b_bench.json, c_ops.json, d_loader.json,
# summary.json, summary.txt. The driver keeps its own deadline (400 s); the
# `timeout` here is the hard outer limit.
set -uo pipefail
OUT=${1:?usage: run_gpu.sh OUT [--dry-run]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=$(command -v python3 || command -v python)
timeout -k 3 412 "$PY" benchmarks/gpu_check.py "$OUT" "$@"
