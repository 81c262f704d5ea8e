#!/usr/bin/env bash
# Makes sure the services the demo, the tests and the benchmark talk to are up on this machine:
#
#   - PostgreSQL at 127.0.0.1:5432, reachable as user `postgres` without a password from
#     loopback: Debian's `postgresql` is installed when no server is, its cluster started, and
#     loopback connections trusted (pg_hba.conf).
#   - Apache Kafka at KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092) when nothing answers
#     there: one KRaft process (broker and controller) from the jars of deploy/kafka/pom.xml,
#     fetched by Maven into ~/.m2 the first time (scripts/kafka-jars.sh), run by
#     deploy/kafka/kafka.sh on deploy/kafka/server.properties with its data in target/kafka/data
#     (kept between runs), its log in target/kafka/kafka.log and its pid in target/kafka/kafka.pid.
#
#   scripts/services.sh          start what is missing (harmless when everything is up)
#   scripts/services.sh stop     stop the Kafka this script started, and nothing else
#
# Also installs what building the project needs from Debian when missing (a C compiler, make,
# pkg-config, OpenSSL and zlib headers for rdkafka's bundled librdkafka).
set -euo pipefail
cd "$(dirname "$0")/.."

BROKER="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
BROKER="${BROKER%%,*}"
HOST="${BROKER%:*}"
PORT="${BROKER##*:}"
KAFKA_DIR=target/kafka
PIDFILE="$KAFKA_DIR/kafka.pid"
export PATH="$HOME/.cargo/bin:$PATH"

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
say() { echo "services: $*"; }
die() { echo "services: $*" >&2; exit 1; }

# The pid in the pid file, if it is still our broker (deploy/kafka/kafka.sh, which becomes
# kafka.Kafka by exec), not a pid reused since.
kafka_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'deploy/kafka/' \
    && echo "$pid"
}

if [ "${1:-}" = "stop" ]; then
  if pid=$(kafka_pid); then
    say "stopping Kafka (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then say "Kafka did not stop in 30 s: kill -9"; kill -9 "$pid"; fi
  fi
  rm -f "$PIDFILE"
  exit 0
fi

apt_install() {
  say "installing $* (Debian)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" > /dev/null
}

# --- build dependencies of rdkafka's bundled librdkafka (with TLS) --------------------------------
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# --- PostgreSQL ---------------------------------------------------------------------------------
if ! listening 127.0.0.1 5432; then
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  version=$(ls /usr/lib/postgresql | sort -n | tail -n1)
  if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main "; then
    say "creating the PostgreSQL $version cluster 'main'"
    pg_createcluster "$version" main > /dev/null
  fi
  # Loopback connections are trusted: the tests and the demo connect as postgres@127.0.0.1
  # without a password. Added once, above Debian's own host lines.
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^# event-updater: loopback trusted' "$hba"; then
    say "trusting loopback connections in $hba"
    { echo '# event-updater: loopback trusted (scripts/services.sh)'
      echo 'host all all 127.0.0.1/32 trust'
      echo 'host all all ::1/128 trust'
      cat "$hba"; } > "$hba.new"
    chown --reference="$hba" "$hba.new"; chmod --reference="$hba" "$hba.new"
    mv "$hba.new" "$hba"
  fi
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do listening 127.0.0.1 5432 && break; sleep 1; done
  listening 127.0.0.1 5432 || die "PostgreSQL is not reachable at 127.0.0.1:5432"
fi

# --- Apache Kafka --------------------------------------------------------------------------------
if listening "$HOST" "$PORT"; then
  say "a broker answers at $BROKER"
  exit 0
fi
command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
classpath=$(scripts/kafka-jars.sh classpath)
mkdir -p "$KAFKA_DIR"
# The controller listens on a port of its own: the first one free above the broker's.
controller_port=$((PORT + 1))
while listening 127.0.0.1 "$controller_port"; do controller_port=$((controller_port + 1)); done
say "starting Apache Kafka $(scripts/kafka-jars.sh version) at $BROKER (log: $KAFKA_DIR/kafka.log)"
KAFKA_CLASSPATH="$classpath" KAFKA_DATA="$PWD/$KAFKA_DIR/data" KAFKA_LISTEN="$HOST:$PORT" \
  KAFKA_CONTROLLER="127.0.0.1:$controller_port" KAFKA_HEAP="${KAFKA_HEAP:-512m}" \
  nohup deploy/kafka/kafka.sh > "$KAFKA_DIR/kafka.log" 2>&1 &
echo $! > "$PIDFILE"
for _ in $(seq 1 120); do
  grep -q 'BrokerServer id=1\] Transition from STARTING to STARTED' "$KAFKA_DIR/kafka.log" && break
  # Alive, by its pid (just started here): its command line is briefly unreadable while the
  # script execs java, so kafka_pid's check of it would read a live broker as gone.
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$KAFKA_DIR/kafka.log" >&2; die "Kafka exited; see $KAFKA_DIR/kafka.log"; }
  sleep 0.5
done
listening "$HOST" "$PORT" || die "Kafka did not start in 60 s; see $KAFKA_DIR/kafka.log"
say "Kafka is up at $BROKER (pid $(cat "$PIDFILE"))"
