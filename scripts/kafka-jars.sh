#!/usr/bin/env bash
# The Apache Kafka broker's jars, as deploy/kafka/pom.xml pins them, from Maven Central through
# Maven's cache (~/.m2: fetched the first time, about 50 MB, then reused).
#
#   scripts/kafka-jars.sh version      the pinned Kafka version
#   scripts/kafka-jars.sh classpath    the broker's classpath (jars in ~/.m2), cached in
#                                      target/kafka/classpath until the pom changes or a jar goes
#   scripts/kafka-jars.sh copy DIR     a copy of the jars in DIR (for the Kafka image)
set -euo pipefail
cd "$(dirname "$0")/.."
POM=deploy/kafka/pom.xml
CACHE=target/kafka/classpath

version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM"; }

mvn_quiet() {
  local start log
  start=$(date +%s)
  log=$(mktemp)
  if ! mvn -B -q -f "$POM" "$@" > "$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "kafka-jars: Maven could not fetch Apache Kafka $(version)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "kafka-jars: Maven resolved Apache Kafka $(version) in $(( $(date +%s) - start )) s" >&2
}

case "${1:-}" in
  version)
    version
    ;;
  classpath)
    stamp="$(sha256sum "$POM" | cut -c1-16)"
    fresh=false
    if [ -f "$CACHE" ] && [ "$(head -n1 "$CACHE")" = "$stamp" ]; then
      fresh=true
      IFS=: read -r -a jars <<< "$(tail -n1 "$CACHE")"
      for jar in "${jars[@]}"; do [ -f "$jar" ] || { fresh=false; break; }; done
    fi
    if ! $fresh; then
      mkdir -p "$(dirname "$CACHE")"
      out=$(mktemp)
      mvn_quiet dependency:build-classpath -Dmdep.includeScope=runtime -Dmdep.outputFile="$out"
      { echo "$stamp"; cat "$out"; echo; } > "$CACHE"
      rm -f "$out"
    fi
    tail -n1 "$CACHE"
    ;;
  copy)
    dir="${2:?usage: scripts/kafka-jars.sh copy DIR}"
    mkdir -p "$dir"
    mvn_quiet dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$(realpath "$dir")"
    ;;
  *)
    echo "usage: scripts/kafka-jars.sh version | classpath | copy DIR" >&2
    exit 2
    ;;
esac
