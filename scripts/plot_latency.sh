#!/usr/bin/env bash
# Plots the latency-load curve of a benchmark's JSON figures (scripts/bench.sh writes them):
#   scripts/plot_latency.sh target/bench/bench.json docs/bench/latency.png
# matplotlib comes from PyPI into target/plot-venv the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/plot-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'matplotlib==3.9.4'
fi
"$VENV/bin/python" scripts/plot_latency.py "$@"
