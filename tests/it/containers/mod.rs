//! Integration tests through containers: the image `scripts/images.sh` builds from
//! deploy/Dockerfile, started with the testcontainers module (testcontainers-event-updater)
//! beside a PostgreSQL container and a Kafka container (the module's `Kafka`: the image of
//! deploy/kafka/Dockerfile) on one Docker network of the test's own; the test publishes
//! commands and reads replies from the host, at the containers' addresses on that network.
//!
//! - The image's own parts, run: the health check (starting, healthy, unhealthy when the
//!   database is gone, healthy again), the non-root user, and the stop signal (`docker stop`
//!   ends it with exit code 0); and its change feed, read from the host as a downstream test
//!   would through the module (`changes_topic()`, `view_topic()`): the command's change record
//!   and its event's view record, which fold to and equal the `events` row.
//! - Faults only containers can make, under load: PostgreSQL cut off from the processor with
//!   `docker network disconnect` for 30 s, then reconnected; the Kafka container cut off the
//!   same way;
//!   `docker stop` in the middle of a batch and a new container started on the same database.
//!   After each: nothing lost, nothing applied twice, every command answered, versions 1..n,
//!   the view a fold of the log (tests/it/support/exactly_once.rs, shared with tests/it/faults.rs);
//!   and the change feed whole: per event versions 1..n, repeats byte-identical, folding to the
//!   row, the view topic's last record equal to it (tests/it/support/feed.rs).
//! - The local stack: `docker-compose` brings up deploy/compose.yaml with
//!   deploy/local/compose.override.yaml (the local images, nothing pulled) on free host ports;
//!   commands go through it and its replies and `/metrics` are read, Kafka's host listener
//!   answers at its published port, and Prometheus scrapes the processor.
//!
//! Without Docker these tests say so on stderr (`SKIPPED <test>: <why>`) and pass without
//! running; with `CI=true` a missing Docker fails them instead. With Docker, the images must
//! exist (`scripts/images.sh`; the Test command runs it).
//!
//! `FAULT_COMMANDS` (default 3000; each fault test sends half) and `FAULT_EVENTS` (200) size
//! the load; `CONTAINER_OUTAGE_SECS` (30) the network cuts. Container logs go to
//! `target/test-logs/`.

/// Docker from the test: images, `docker` itself, health, logs, networks.
mod docker;
/// PostgreSQL, Kafka and processors in containers, for the tests below.
mod stack;

mod compose;
mod faults;
mod image;
