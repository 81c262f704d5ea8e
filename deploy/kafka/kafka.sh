#!/usr/bin/env bash
# Runs one single-node Apache Kafka (KRaft: broker and controller in one process) on the
# committed configuration beside this script (server.properties, log4j2.properties), with this
# instance's addresses and data directory added to a copy of it. The data directory is formatted
# with Kafka's own storage tool the first time and reused after that, so a broker killed with
# kill -9 restarts on the same data. The script ends by exec'ing java: its pid is the broker's.
#
# Used by scripts/services.sh (this machine's broker), tests/harness (the tests' private brokers)
# and deploy/kafka/Dockerfile (the Kafka image of compose and the container tests).
#
#   KAFKA_CLASSPATH   the broker's jars, as a java classpath (required)
#   KAFKA_DATA        data directory (required); holds the instance's server.properties too
#   KAFKA_LISTEN      host:port of the client listener (default 0.0.0.0:9092)
#   KAFKA_ADVERTISED  host:port clients are told to use (default: KAFKA_LISTEN; where that is
#                     0.0.0.0, this host's own address on its network, e.g. a container's)
#   KAFKA_CONTROLLER  host:port of the controller listener (default 127.0.0.1:9093)
#   KAFKA_EXTERNAL    optional second client listener, host:port (e.g. one published to a host)
#   KAFKA_EXTERNAL_ADVERTISED  what KAFKA_EXTERNAL's clients are told (default: KAFKA_EXTERNAL)
#   KAFKA_OVERRIDES   broker properties on top of server.properties, `key=value;key=value`
#   KAFKA_HEAP        the JVM's heap, minimum and maximum (default 512m)
#   KAFKA_CLUSTER_ID  the cluster id given to the storage tool (default a fixed one)
#   JAVA              the java binary (default: $JAVA_HOME/bin/java, else java)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
: "${KAFKA_CLASSPATH:?KAFKA_CLASSPATH must name the broker jars}"
: "${KAFKA_DATA:?KAFKA_DATA must name the data directory}"
LISTEN="${KAFKA_LISTEN:-0.0.0.0:9092}"
if [ -n "${KAFKA_ADVERTISED:-}" ]; then
  ADVERTISED="$KAFKA_ADVERTISED"
elif [ "${LISTEN%:*}" = "0.0.0.0" ]; then
  ADVERTISED="$(getent hosts "$(hostname)" | awk '{print $1; exit}'):${LISTEN##*:}"
else
  ADVERTISED="$LISTEN"
fi
CONTROLLER="${KAFKA_CONTROLLER:-127.0.0.1:9093}"
HEAP="${KAFKA_HEAP:-512m}"
CLUSTER_ID="${KAFKA_CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}"
if [ -z "${JAVA:-}" ]; then
  if [ -n "${JAVA_HOME:-}" ]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi
fi

mkdir -p "$KAFKA_DATA"
conf="$KAFKA_DATA/server.properties"
listeners="PLAINTEXT://$LISTEN,CONTROLLER://$CONTROLLER"
advertised="PLAINTEXT://$ADVERTISED"
if [ -n "${KAFKA_EXTERNAL:-}" ]; then
  listeners="$listeners,EXTERNAL://$KAFKA_EXTERNAL"
  advertised="$advertised,EXTERNAL://${KAFKA_EXTERNAL_ADVERTISED:-$KAFKA_EXTERNAL}"
fi
{
  cat "$HERE/server.properties"
  echo
  echo "# This instance (deploy/kafka/kafka.sh):"
  echo "listeners=$listeners"
  echo "advertised.listeners=$advertised"
  echo "controller.quorum.voters=1@$CONTROLLER"
  echo "log.dirs=$KAFKA_DATA/logs"
  if [ -n "${KAFKA_OVERRIDES:-}" ]; then tr ';' '\n' <<< "$KAFKA_OVERRIDES"; fi
} > "$conf"

jvm=(-Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
  -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/log4j2.properties"
  -cp "$KAFKA_CLASSPATH")
if [ ! -f "$KAFKA_DATA/logs/meta.properties" ]; then
  "$JAVA" "${jvm[@]}" kafka.tools.StorageTool format --config "$conf" \
    --cluster-id "$CLUSTER_ID" --ignore-formatted >&2
fi
exec "$JAVA" "${jvm[@]}" kafka.Kafka "$conf"
