#!/usr/bin/env bash
# Builds the container images the container tests (tests/it/containers/) and the local stack
# (deploy/local/compose.override.yaml) run, with no registry: nothing is pulled.
#
#   event-updater-base:bookworm   Debian bookworm from `debootstrap --variant=minbase` and
#                                 `docker import` (built only when missing)
#   event-updater:local           deploy/Dockerfile, target `prebuilt`, on that base: the
#                                 binary of `cargo build --release --locked` on this host
#                                 (also bookworm), because no Rust image can be pulled here
#   event-updater-postgres:local  Debian's postgresql on that base (deploy/local/postgres)
#   event-updater-kafka:local     deploy/kafka/Dockerfile, target `prebuilt`, on that base:
#                                 Apache Kafka (Debian's Java 17 runtime, kafka.sh and the
#                                 committed server.properties) with the jars of
#                                 deploy/kafka/pom.xml, which Maven copies on this host
#                                 (scripts/kafka-jars.sh) because no Maven image can be pulled
#   event-updater-prometheus:local  Debian's prometheus on that base (deploy/local/prometheus)
#
# Each image is also tagged with a hash of what it is built from (its Dockerfile, the files it
# copies: the binary; Kafka's jars, pom, launcher and configuration; the base image's id); an
# image whose hash tag exists is not built again, so a second run takes seconds, and the images
# of older inputs are removed. Needs a running Docker daemon.
# `scripts/images.sh --check` exits 0 when Docker answers, 1 otherwise (building nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

BASE=event-updater-base:bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK=target/images

docker info >/dev/null 2>&1 || { echo "images: Docker does not answer" >&2; exit 1; }
[ "${1:-}" = "--check" ] && exit 0

# A `docker build` that uses BuildKit: the stages a target does not need are skipped (the
# Rust builder stage of deploy/Dockerfile cannot be pulled here). Docker >= 23's CLI needs the
# buildx plugin for that; Debian's docker.io (20.10) has BuildKit built in.
if docker buildx version >/dev/null 2>&1; then
  build() { docker buildx build --load "$@"; }
elif [ -x /usr/bin/docker ] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
  build() { DOCKER_BUILDKIT=1 /usr/bin/docker build "$@"; }
else
  build() { DOCKER_BUILDKIT=1 docker build "$@"; }
fi

exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
mkdir -p "$WORK"

# --- the Debian base ----------------------------------------------------------------------------
if ! exists "$BASE"; then
  start=$(date +%s)
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  }
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  echo "images: debootstrap --variant=minbase bookworm (about a minute)"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  # The suites of debian:bookworm-slim: the release, its updates and security.
  cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  echo "images: $BASE built in $(( $(date +%s) - start )) s"
fi
base_id=$(image_id "$BASE")

# build NAME DOCKERFILE CONTEXT [HASHED FILE...] -- [docker build arguments...]
# Builds NAME:<hash> unless it exists, then tags it NAME:local.
image() {
  local name=$1 dockerfile=$2 context=$3; shift 3
  local hashed=("$dockerfile")
  while [ "$1" != "--" ]; do hashed+=("$1"); shift; done
  shift
  local tag
  tag=$( { echo "$base_id"; hash_of "${hashed[@]}"; } | sha256sum | cut -c1-16)
  if ! exists "$name:$tag"; then
    local start
    start=$(date +%s)
    echo "images: building $name:$tag"
    build -q -f "$dockerfile" -t "$name:$tag" "$@" "$context" >/dev/null
    echo "images: $name:$tag built in $(( $(date +%s) - start )) s"
  fi
  docker tag "$name:$tag" "$name:local"
  # Images of older inputs go (their layers stay while another image uses them).
  docker images --format '{{.Repository}}:{{.Tag}}' "$name" \
    | grep -v -e ":$tag\$" -e ':local$' -e ':latest$' | xargs -r docker rmi >/dev/null 2>&1 || true
}

# --- PostgreSQL ---------------------------------------------------------------------------------
image event-updater-postgres deploy/local/postgres/Dockerfile deploy/local/postgres -- \
  --build-arg "BASE_IMAGE=$BASE"

# --- Prometheus ---------------------------------------------------------------------------------
image event-updater-prometheus deploy/local/prometheus/Dockerfile deploy/local/prometheus -- \
  --build-arg "BASE_IMAGE=$BASE"

# --- event-updater ------------------------------------------------------------------------------
echo "images: cargo build --release --locked --bin event-updater"
cargo build --release --locked --bin event-updater
image event-updater deploy/Dockerfile . target/release/event-updater -- \
  --target prebuilt --build-arg "RUNTIME_IMAGE=$BASE"

# --- Kafka --------------------------------------------------------------------------------------
# The jars of deploy/kafka/pom.xml in target/kafka/jars (the one part of the build context
# outside the sources that the `prebuilt` target copies; .dockerignore lets it through), copied
# from Maven's cache (~/.m2, fetched the first time) again only when the pom has changed.
command -v mvn >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven
}
jars=target/kafka/jars
pom_hash=$(hash_of deploy/kafka/pom.xml)
if [ "$(cat "$jars.pom" 2>/dev/null)" != "$pom_hash" ] || ! compgen -G "$jars/*.jar" >/dev/null; then
  rm -rf "$jars" "$jars.pom"
  scripts/kafka-jars.sh copy "$jars"
  echo "$pom_hash" > "$jars.pom"
fi
# What the image holds of them: every jar's name and content.
(cd "$jars" && sha256sum -- *.jar) > "$WORK/kafka-jars.sha256"
image event-updater-kafka deploy/kafka/Dockerfile . "$WORK/kafka-jars.sha256" deploy/kafka/pom.xml \
  deploy/kafka/kafka.sh deploy/kafka/server.properties deploy/kafka/log4j2.properties -- \
  --target prebuilt --build-arg "RUNTIME_IMAGE=$BASE"

echo "images: ready: $BASE, event-updater:local, event-updater-postgres:local, event-updater-kafka:local, event-updater-prometheus:local"
