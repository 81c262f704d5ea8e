//! The parts that drive event-updater from outside, shared by the integration tests
//! (`tests/it`) and the benchmark (`bench/`, `event-updater-bench`), so that both start, watch,
//! stop and read the processor the same way:
//! - [`process`]: `event-updater serve` as a child process: started with a log of its own,
//!   signalled, stopped, and its peak resident set size read;
//! - [`replies`]: a reader of every partition of a topic, and a collector that keeps each
//!   reply under its request id with the moment it was read;
//! - [`http`]: a plain HTTP/1.1 GET of the processor's probes and `/metrics`;
//! - [`kafka`]: a private Apache Kafka broker for a test that kills or restarts its broker.
//!
//! It does not import the `event_updater` library (of which it is a dev-dependency): it drives
//! the processor from outside, as a process. Callers pass what it needs as plain values (a
//! `tokio::process::Command`, an `rdkafka::ClientConfig`).

pub mod http;
pub mod kafka;
pub mod process;
pub mod replies;

use std::time::Duration;

/// What can go wrong driving the processor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Starting, signalling or reading a process, a file or a socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The broker client refused.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The processor exited while it was expected to run.
    #[error("the processor exited ({status}); its log {log}")]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// Where its log is (or `stderr`).
        log: String,
    },
    /// Something did not happen within its bound.
    #[error("{what} within {bound:?}; the processor's log: {log}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        bound: Duration,
        /// Where its log is (or `stderr`).
        log: String,
    },
    /// Commands without a reply.
    #[error("{missing} of {of} commands have no reply after {after:?}")]
    Unanswered {
        /// How many have none.
        missing: usize,
        /// Of how many awaited.
        of: usize,
        /// After how long.
        after: Duration,
    },
}

/// The harness's results.
pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
