#!/usr/bin/env bash
# Regenerate docs/demo.png, the README's picture of `pix2pix-fast demo`: train the
# quick-start model on the built-in data (as `pix2pix-fast train` does on a CPU), then
# run the browser test on that checkpoint; it saves the page as it leaves it.
# Needs chromium and the test extra (playwright). About 3-4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-$(mktemp -d)}"
[ -f "$runs/demo/latest.pt" ] || pix2pix-fast train --output-dir "$runs" --name demo --quiet
PIX2PIX_FAST_DEMO_CHECKPOINT="$runs/demo/latest.pt" PIX2PIX_FAST_DEMO_SCREENSHOT=docs/demo.png \
  pytest -q tests/test_demo.py -k headless_chromium
echo "wrote docs/demo.png (model: $runs/demo/latest.pt)"
