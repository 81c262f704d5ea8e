#!/usr/bin/env bash
# Makes sure the services the tests and the benchmark talk to are up on this machine:
#   - PostgreSQL at 127.0.0.1:5432 (started with pg_ctlcluster when installed but stopped);
#   - a Kafka-protocol broker at KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092): when nothing
#     answers there, the tansu broker (Apache-2.0, built from crates.io when missing) is started
#     with in-memory storage. Its pid is written to target/tansu.pid; `scripts/services.sh stop`
#     stops it.
# Idempotent: run it as often as you like.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
BROKER="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
HOST="${BROKER%%:*}"
PORT="${BROKER##*:}"
PIDFILE=target/tansu.pid
export PATH="$HOME/.cargo/bin:$PATH"

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

if [ "${1:-}" = "stop" ]; then
  if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
  exit 0
fi

# Build dependencies of rdkafka's bundled librdkafka (with TLS): a C compiler, make, OpenSSL headers.
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "services: installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# PostgreSQL.
if ! listening 127.0.0.1 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  for _ in $(seq 1 30); do listening 127.0.0.1 5432 && break; sleep 1; done
  listening 127.0.0.1 5432 || { echo "services: PostgreSQL is not reachable at 127.0.0.1:5432" >&2; exit 1; }
fi

# The broker.
if listening "$HOST" "$PORT"; then
  echo "services: a broker answers at $BROKER"
else
  if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "services: building the tansu broker $TANSU_VERSION (about 17 minutes on 2 cores, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
  fi
  mkdir -p target
  echo "services: starting tansu at $BROKER (in-memory storage)"
  nohup tansu broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
    --storage-engine memory://tansu/ > target/tansu.log 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 30); do listening "$HOST" "$PORT" && break; sleep 0.5; done
  listening "$HOST" "$PORT" || { echo "services: tansu did not start; see target/tansu.log" >&2; exit 1; }
fi
