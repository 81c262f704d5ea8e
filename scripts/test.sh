#!/usr/bin/env bash
# The Test command: starts what the tests need (scripts/services.sh), then runs every test.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test processor`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --locked "$@"
