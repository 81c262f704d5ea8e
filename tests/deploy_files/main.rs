//! The deploy files (`deploy/`) against the binary they deploy: every environment variable they
//! set is one `event-updater --help` lists (and its value one the binary accepts), the HTTP
//! port and the probe paths are the binary's, the Dockerfile exposes that port and runs that
//! binary, Prometheus scrapes it there, and the Grafana dashboard only queries metrics the
//! README documents and the binary exports; Kafka (deploy/kafka) has one committed
//! configuration, which its image and compose run through its one launcher; and the source
//! tree keeps its layout (README's Layout names every file; the domain does no I/O; no module
//! cycle). No broker or database is needed.
//!
//! These are the checks only this repository can make. Syntax is left to the real tools, run by
//! `tests/it/containers/` where Docker is: docker-compose reads the compose files and starts
//! the stack, Prometheus loads `prometheus.yml` and evaluates every expression of the dashboard.
//!
//! One module per thing checked; each holds the readers of its files beside its tests.

/// Reading files: the repository's root, YAML, JSON, properties, README sections.
mod support;
#[path = "../it/support/yaml.rs"]
mod yaml;

/// What the binary says about itself (`--help`, the configuration it builds).
mod binary;
/// deploy/compose.yaml and the local override.
mod compose;
/// The source tree: no module cycle among the crate's parts.
mod cycles;
/// The Grafana dashboard against the README's and the binary's metrics.
mod dashboard;
/// deploy/Dockerfile.
mod dockerfile;
/// The HTTP port and probe paths, in every deploy file and in the binary's server.
mod http;
/// The deploy tree: every file parses, none is of a kind left unchecked.
mod inventory;
/// deploy/k8s.
mod k8s;
/// deploy/kafka: one committed configuration, its launcher and its image.
mod kafka;
/// The source tree: README's Layout, the layers' imports.
mod layout;
/// The settings of every deploy file are the binary's (names, values, grace periods).
mod settings;
