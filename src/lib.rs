//! event-updater: authentik's `PUT /events/events/{event_uuid}/` as a Kafka-driven,
//! event-sourced update processor.
//!
//! The crate is laid out by concern:
//! - [`drf`]: Django REST framework's side of the REST endpoint: Python's JSON parser, DRF's
//!   field rules, texts and normal forms. Pure.
//! - [`domain`]: the command, the event and its fold, replies, tokens' standing, and the pure
//!   batch decision ([`domain::decide::decide_batch`]). No I/O: it may import [`drf`], never
//!   sqlx or rdkafka (a test fails the build if it does).
//! - [`store`]: PostgreSQL: connections and errors, the batch's load and fenced write, tokens,
//!   retention of stored replies, rebuilding the view.
//! - [`pipeline`]: Kafka and the process around it: consuming, publishing, offsets, health.
//!
//! [`config`], [`metrics`] and [`startup::Application`] tie them together.

pub mod config;
pub mod domain;
pub mod drf;
pub mod metrics;
pub mod pipeline;
pub mod startup;
pub mod store;

pub use config::Config;
pub use startup::{Application, ServeError, ShutdownHandle, StartupError};
