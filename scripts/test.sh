#!/usr/bin/env bash
# The Test command: starts what the tests need (scripts/services.sh), builds the container
# images when Docker answers (scripts/images.sh), then runs every test of the workspace.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test it processor::`).
#
# Without Docker the container tests (tests/it/containers/) are skipped, each saying so
# (`SKIPPED containers::...`); with CI=true a missing Docker is a failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The differential test's oracle: pinned Django and DRF in target/drf-venv.
scripts/drf-venv.sh
if scripts/images.sh --check 2>/dev/null; then
  scripts/images.sh
elif [ "${CI:-}" = "true" ]; then
  echo "test: CI=true and Docker does not answer: the container tests cannot run" >&2
  exit 1
else
  echo "test: Docker does not answer: the container tests (tests/it/containers/) will be SKIPPED, each by name"
fi
# The addresses are given, so the tests use these services (not testcontainers).
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
cargo test --locked --workspace "$@"
