#!/usr/bin/env bash
# The Run command: starts what the demo needs on this machine (scripts/services.sh: PostgreSQL,
# installed from Debian when missing, and Apache Kafka at KAFKA_BOOTSTRAP_SERVERS, its jars
# fetched by Maven the first time), then builds and runs `event-updater demo`, which sends a
# handful of commands, prints each reply and serves until Ctrl-C. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo run --release --locked --bin event-updater -- demo "$@"
