#!/usr/bin/env bash
# Build, check and benchmark on a CUDA machine in one go.
#   bash benchmarks/run_gpu.sh OUT_DIR [kernels|train|all]
# kernels: GPU test suite (real Triton kernels) + op benchmarks
# train:   training-step benchmark (eager vs fast), loader benchmark, schedule run
# Results land in OUT_DIR as JSON/logs; copy the ones worth keeping to benchmarks/results/.
set -uo pipefail
OUT=${1:?usage: run_gpu.sh OUT_DIR [kernels|train|all]}
WHAT=${2:-all}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
REPO=$(pwd)

python3 -m pip install --no-build-isolation --no-deps . >"$OUT/install.log" 2>&1 \
  || { tail -20 "$OUT/install.log"; exit 1; }
python3 - <<'EOF' | tee "$OUT/env.txt"
import torch, triton
print("gpu", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| triton", triton.__version__,
      "| cuda", torch.version.cuda)
EOF

if [[ $WHAT == kernels || $WHAT == all ]]; then
  # The kernel and model suites on the GPU: the @gpu tests run the real kernels.
  (cd "$REPO" && timeout 300 pytest -q -p no:cacheprovider -m "not slow" \
      tests/test_ops_*.py tests/test_nn_compile.py tests/test_fast_step.py tests/test_models.py \
      2>&1 | tail -40 | tee "$OUT/pytest_gpu.txt")
  timeout 240 python3 benchmarks/bench_ops.py --json "$OUT/ops.json" 2>&1 | tail -60
  timeout 240 python3 benchmarks/bench_ops_loss_conv.py --json "$OUT/ops_loss_conv.json" 2>&1 | tail -40
fi

if [[ $WHAT == train || $WHAT == all ]]; then
  timeout 420 pix2pix-fast bench --batch-sizes 1,16,64 --steps 50 --json "$OUT/train_step.json" 2>&1 | tail -20
  timeout 120 python3 benchmarks/bench_loader.py --json "$OUT/loader.json" 2>&1 | tail -20
fi
