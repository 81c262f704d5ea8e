//! The integration tests, one crate (one build, one link) over shared support modules
//! ([`support`]: a fresh database and topics per test, the processor in process or as a child,
//! readers of the reply topic, the exactly-once checks, the repository's files). They talk to a
//! real PostgreSQL and a real broker (`KAFKA_BOOTSTRAP_SERVERS`, `TEST_DATABASE_URL`; see
//! `scripts/test.sh`). Run one module with `cargo test --test it <module>::`, e.g.
//! `cargo test --test it security::`. `tests/deploy_files/`, which needs no services, is a
//! crate of its own. `tests/README.md` says which helper layer a new test should use.

mod backfill;
mod backpressure;
mod containers;
mod contract_schema;
mod database_failures;
mod differential;
mod faults;
mod feed;
mod groups;
mod hostile;
mod memory;
mod processor;
mod provenance;
mod publishing;
mod retention;
mod schema;
mod security;
mod support;
mod tools;
