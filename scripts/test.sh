#!/usr/bin/env bash
# The Test command: starts what the tests need (scripts/services.sh), then runs every test.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test processor`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The differential test's oracle: pinned Django and DRF in target/drf-venv.
scripts/drf-venv.sh
# The addresses are given, so the tests use these services (not testcontainers).
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
cargo test --locked "$@"
