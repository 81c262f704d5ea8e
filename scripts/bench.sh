#!/usr/bin/env bash
# The benchmark in one command. Starts what it needs (scripts/services.sh), builds the release
# binaries (the service's and the `bench/` crate's), runs `event-updater-bench` (extra arguments
# go to it) against this machine's broker and PostgreSQL, keeps its table in
# target/bench/bench.md and its figures in target/bench/bench.json, and plots the latency-load
# curve to docs/bench/latency.png (matplotlib, installed from PyPI into a virtualenv under
# target/ the first time; left as it was when the curve is not among the phases run).
#
#   scripts/bench.sh                                   every phase (run it on a quiet machine)
#   scripts/bench.sh --phases drain,ingest,pass-through  a quick A/B of the drain and its limits
#   scripts/bench.sh --phases curve --drain-rate 20000   the curve alone, at shares of that rate
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bins -p event-updater -p event-updater-bench
mkdir -p target/bench docs/bench
./target/release/event-updater-bench --json-out target/bench/bench.json "$@" | tee target/bench/bench.md
scripts/plot_latency.sh target/bench/bench.json docs/bench/latency.png
