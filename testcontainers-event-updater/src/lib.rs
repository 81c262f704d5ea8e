//! A [testcontainers] module for event-updater, in the style of `testcontainers-modules`: start
//! event-updater's image (`docker build -f deploy/Dockerfile -t event-updater .`) in your own
//! integration tests, pointed at your broker and PostgreSQL, and get back a started container
//! with its HTTP port (`/healthz`, `/readyz`, `/metrics`) mapped.
//!
//! ```no_run
//! use testcontainers_event_updater::{EventUpdater, METRICS_PORT};
//! use testcontainers_event_updater::testcontainers::runners::AsyncRunner;
//! use testcontainers_event_updater::testcontainers::ImageExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let processor = EventUpdater::default()
//!     .with_broker("kafka:9092")
//!     .with_database_url("postgres://postgres:secret@postgres:5432/events")
//!     .with_auth_disabled()
//!     .with_network("my-test-network") // the network your broker and PostgreSQL are on
//!     .start()
//!     .await?;
//! let metrics = format!(
//!     "http://127.0.0.1:{}/metrics",
//!     processor.get_host_port_ipv4(METRICS_PORT).await?
//! );
//! # Ok(()) }
//! ```
//!
//! The processor reaches the broker and PostgreSQL from inside its container, so give it
//! addresses that resolve there: container names or network aliases on a network shared with
//! them (as above), or, on Linux, `.with_network("host")` and the host's addresses. The broker
//! must advertise an address the processor can reach too.
//!
//! It is a crate of its own, not a feature of the `event-updater` library, so that a
//! downstream test depends on testcontainers only, not on the service's Kafka and PostgreSQL
//! client stack, and the service binary carries none of it.

use std::borrow::Cow;
use std::collections::BTreeMap;

pub use testcontainers;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::Image;

/// The image's HTTP port: `/healthz`, `/readyz` and `/metrics` (its `HTTP_ADDR` is
/// `0.0.0.0:9464`).
pub const METRICS_PORT: ContainerPort = ContainerPort::Tcp(9464);

/// What the processor logs once it is subscribed and serving HTTP.
pub const STARTED_MESSAGE: &str = "event-updater started";

/// The image name and tag [`EventUpdater::default`] runs: `docker build -f deploy/Dockerfile -t
/// event-updater .` makes it. [`testcontainers::ImageExt::with_tag`] picks another.
pub const DEFAULT_IMAGE: (&str, &str) = ("event-updater", "latest");

/// event-updater's image, configured through its environment (the variables of
/// `event-updater --help`), running `event-updater serve`.
///
/// Ready once it logs [`STARTED_MESSAGE`]: migrations ran, the consumer subscribed and the HTTP
/// port listens.
#[derive(Debug, Clone)]
pub struct EventUpdater {
    name: String,
    tag: String,
    env: BTreeMap<String, String>,
    cmd: Vec<String>,
}

impl Default for EventUpdater {
    /// The image's own defaults: the broker at `127.0.0.1:9092`, PostgreSQL at
    /// `postgres://postgres@127.0.0.1:5432/event_updater`, tokens required. Set at least
    /// [`EventUpdater::with_broker`] and [`EventUpdater::with_database_url`].
    fn default() -> Self {
        EventUpdater {
            name: DEFAULT_IMAGE.0.to_string(),
            tag: DEFAULT_IMAGE.1.to_string(),
            env: BTreeMap::new(),
            cmd: vec!["serve".to_string()],
        }
    }
}

impl EventUpdater {
    /// Another image repository (e.g. `registry.example.com/event-updater`); the tag is set with
    /// [`testcontainers::ImageExt::with_tag`] or [`EventUpdater::with_image`].
    pub fn with_image(mut self, name: impl Into<String>, tag: impl Into<String>) -> Self {
        self.name = name.into();
        self.tag = tag.into();
        self
    }

    /// `KAFKA_BOOTSTRAP_SERVERS`, as the processor's container reaches the brokers.
    pub fn with_broker(self, bootstrap_servers: impl Into<String>) -> Self {
        self.with_env("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers)
    }

    /// `DATABASE_URL`, as the processor's container reaches PostgreSQL (the database is created
    /// if missing; migrations run at start).
    pub fn with_database_url(self, url: impl Into<String>) -> Self {
        self.with_env("DATABASE_URL", url)
    }

    /// `AUTH_MODE=disabled`: commands need no bearer token (never in production).
    pub fn with_auth_disabled(self) -> Self {
        self.with_env("AUTH_MODE", "disabled")
    }

    /// `COMMAND_TOPIC`, `REPLY_TOPIC` and `DLQ_TOPIC` (created at start when missing).
    pub fn with_topics(
        self,
        commands: impl Into<String>,
        replies: impl Into<String>,
        dead_letters: impl Into<String>,
    ) -> Self {
        self.with_env("COMMAND_TOPIC", commands)
            .with_env("REPLY_TOPIC", replies)
            .with_env("DLQ_TOPIC", dead_letters)
    }

    /// `KAFKA_GROUP_ID`: processors of one group share the command topic's partitions.
    pub fn with_group_id(self, group: impl Into<String>) -> Self {
        self.with_env("KAFKA_GROUP_ID", group)
    }

    /// Any other setting of `event-updater --help` (`MAX_BATCH`, `TOPIC_PARTITIONS`,
    /// `KAFKA_PROPERTIES`, `RUST_LOG`, `LOG_FORMAT`, ...).
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// The environment the container gets (on top of the image's `HTTP_ADDR` and `RUST_LOG`).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }
}

impl Image for EventUpdater {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stderr(STARTED_MESSAGE)]
    }

    fn env_vars(
        &self,
    ) -> impl IntoIterator<Item = (impl Into<Cow<'_, str>>, impl Into<Cow<'_, str>>)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn cmd(&self) -> impl IntoIterator<Item = impl Into<Cow<'_, str>>> {
        self.cmd.iter().map(String::as_str)
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        std::slice::from_ref(&METRICS_PORT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_become_the_containers_environment() {
        let image = EventUpdater::default()
            .with_broker("kafka:9092")
            .with_database_url("postgres://postgres@db:5432/events")
            .with_auth_disabled()
            .with_topics("c", "r", "d")
            .with_group_id("g")
            .with_env("MAX_BATCH", "50");
        let env: Vec<(String, String)> = image
            .env_vars()
            .into_iter()
            .map(|(k, v)| (k.into().into_owned(), v.into().into_owned()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("AUTH_MODE", "disabled"),
            ("COMMAND_TOPIC", "c"),
            ("DATABASE_URL", "postgres://postgres@db:5432/events"),
            ("DLQ_TOPIC", "d"),
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
            ("KAFKA_GROUP_ID", "g"),
            ("MAX_BATCH", "50"),
            ("REPLY_TOPIC", "r"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
        let cmd: Vec<String> = image
            .cmd()
            .into_iter()
            .map(|c| c.into().into_owned())
            .collect();
        assert_eq!(cmd, ["serve"]);
        assert_eq!((image.name(), image.tag()), DEFAULT_IMAGE);
        assert_eq!(image.expose_ports(), [ContainerPort::Tcp(9464)]);
        let other = image.with_image("registry.example/event-updater", "1.2");
        assert_eq!(
            (other.name(), other.tag()),
            ("registry.example/event-updater", "1.2")
        );
    }
}
