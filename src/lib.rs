//! event-updater: authentik's `PUT /events/events/{event_uuid}/` as a Kafka-driven,
//! event-sourced update processor.
//!
//! A command arrives on Kafka ([`consumer`]), is decoded and validated as the REST endpoint
//! would ([`command`], [`validate`], [`pyjson`], [`ipaddr`], [`isodate`]), applied to an
//! append-only log and its projection in PostgreSQL ([`store`], [`projection`]), and answered
//! on the reply topic ([`reply`], [`kafka`]). Stored replies are kept for a retention window
//! ([`retention`]). [`startup::Application`] wires it together.

pub mod auth;
pub mod command;
pub mod config;
pub mod consumer;
pub mod http;
pub mod ipaddr;
pub mod isodate;
pub mod kafka;
pub mod metrics;
pub mod projection;
pub mod pyjson;
pub mod rebuild;
pub mod reply;
pub mod retention;
pub mod startup;
pub mod store;
pub mod trace;
pub mod validate;

pub use config::Config;
pub use startup::{Application, ShutdownHandle, StartupError};
