//! A [testcontainers] module for event-updater, in the style of `testcontainers-modules`: start
//! event-updater's image (`docker build -f deploy/Dockerfile -t event-updater .`) in your own
//! integration tests, pointed at your broker and PostgreSQL, and get back a started container
//! with its HTTP port (`/healthz`, `/readyz`, `/metrics`) mapped; and, if you want the broker
//! event-updater is tested with, the project's Kafka image ([`Kafka`]).
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
//! [`Kafka`] is the project's Apache Kafka image (`docker build -f deploy/kafka/Dockerfile -t
//! event-updater-kafka .`): one KRaft node on the committed `deploy/kafka/server.properties`,
//! the broker of the local stack and of event-updater's own container tests. Start it on the
//! same network and give the processor its container name; it advertises its own address on
//! that network, which [`kafka_bootstrap_servers`] gives the test:
//!
//! ```no_run
//! use testcontainers_event_updater::{kafka_bootstrap_servers, EventUpdater, Kafka};
//! use testcontainers_event_updater::testcontainers::runners::AsyncRunner;
//! use testcontainers_event_updater::testcontainers::ImageExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let kafka = Kafka::default()
//!     .with_network("my-test-network")
//!     .with_container_name("kafka")
//!     .start()
//!     .await?;
//! let processor = EventUpdater::default()
//!     .with_broker("kafka:9092")
//!     .with_database_url("postgres://postgres:secret@postgres:5432/events")
//!     .with_network("my-test-network")
//!     .start()
//!     .await?;
//! // The test's own producer and reply reader (on Linux, the host reaches the network).
//! let bootstrap_servers = kafka_bootstrap_servers(&kafka).await?;
//! # Ok(()) }
//! ```
//!
//! # Reading the change feed
//!
//! The processor publishes every change it appends to its changes topic
//! ([`EventUpdater::changes_topic`], `event-changes` unless set with
//! [`EventUpdater::with_feed_topics`]) and each event's current view to its compacted view topic
//! ([`EventUpdater::view_topic`], `event-views`), creating both at start. A downstream test reads
//! them from the broker like any topic: here, after a command for `event` was answered, the
//! test waits for that event's first change record (the record's fields are in event-updater's
//! `docs/contract.md`; readers drop a record whose `version` they have already seen for its
//! event):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rdkafka::consumer::{Consumer, StreamConsumer};
//! use rdkafka::message::{Headers, Message};
//! use rdkafka::ClientConfig;
//! use testcontainers_event_updater::testcontainers::ContainerAsync;
//! use testcontainers_event_updater::{
//!     kafka_bootstrap_servers, EventUpdater, Kafka, SCHEMA_VERSION_HEADER,
//! };
//!
//! # async fn example(
//! #     kafka: ContainerAsync<Kafka>,
//! #     processor: ContainerAsync<EventUpdater>,
//! #     event: &str,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let reader: StreamConsumer = ClientConfig::new()
//!     .set("bootstrap.servers", kafka_bootstrap_servers(&kafka).await?)
//!     .set("group.id", "my-test-reader")
//!     .set("auto.offset.reset", "earliest")
//!     .create()?;
//! reader.subscribe(&[processor.image().changes_topic()])?;
//! let change = loop {
//!     let record = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await??;
//!     if record.key() == Some(event.as_bytes()) {
//!         break record.detach();
//!     }
//! };
//! let schema = change
//!     .headers()
//!     .and_then(|h| h.iter().find(|h| h.key == SCHEMA_VERSION_HEADER))
//!     .and_then(|h| h.value);
//! assert_eq!(schema, Some(b"1".as_slice()));
//! let value: serde_json::Value = serde_json::from_slice(change.payload().unwrap_or_default())?;
//! assert_eq!(value["event_uuid"], event);
//! assert_eq!(value["version"], 1);
//! println!("created with {}", value["changes"]);
//! # Ok(()) }
//! ```
//!
//! It is a crate of its own, not a feature of the `event-updater` library, so that a
//! downstream test depends on testcontainers only, not on the service's Kafka and PostgreSQL
//! client stack, and the service binary carries none of it.

use std::borrow::Cow;
use std::collections::BTreeMap;

pub use testcontainers;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::{ContainerAsync, Image, TestcontainersError};

/// The image's HTTP port: `/healthz`, `/readyz` and `/metrics` (its `HTTP_ADDR` is
/// `0.0.0.0:9464`).
pub const METRICS_PORT: ContainerPort = ContainerPort::Tcp(9464);

/// What the processor logs once it is subscribed and serving HTTP.
pub const STARTED_MESSAGE: &str = "event-updater started";

/// The image name and tag [`EventUpdater::default`] runs: `docker build -f deploy/Dockerfile -t
/// event-updater .` makes it. [`testcontainers::ImageExt::with_tag`] picks another.
pub const DEFAULT_IMAGE: (&str, &str) = ("event-updater", "latest");

/// The changes topic's name unless [`EventUpdater::with_feed_topics`] sets another (the image's
/// `CHANGES_TOPIC` default).
pub const DEFAULT_CHANGES_TOPIC: &str = "event-changes";

/// The view topic's name unless [`EventUpdater::with_feed_topics`] sets another (the image's
/// `VIEW_TOPIC` default).
pub const DEFAULT_VIEW_TOPIC: &str = "event-views";

/// The header of every change and view record naming its JSON Schema's version (`1`); a
/// reader that does not know the version should stop rather than guess.
pub const SCHEMA_VERSION_HEADER: &str = "schema-version";

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

    /// `CHANGES_TOPIC` and `VIEW_TOPIC`: where every appended change, and each event's current
    /// view, are published (created at start when missing: the changes topic with unlimited
    /// retention, the view topic compacted). An empty name turns that topic off.
    pub fn with_feed_topics(self, changes: impl Into<String>, view: impl Into<String>) -> Self {
        self.with_env("CHANGES_TOPIC", changes)
            .with_env("VIEW_TOPIC", view)
    }

    /// The changes topic the processor publishes to: `CHANGES_TOPIC` as set, else
    /// [`DEFAULT_CHANGES_TOPIC`]. Empty when the feed is turned off. On a started container:
    /// `container.image().changes_topic()`.
    pub fn changes_topic(&self) -> &str {
        self.setting("CHANGES_TOPIC", DEFAULT_CHANGES_TOPIC)
    }

    /// The compacted view topic the processor publishes to: `VIEW_TOPIC` as set, else
    /// [`DEFAULT_VIEW_TOPIC`]. Empty when it is turned off.
    pub fn view_topic(&self) -> &str {
        self.setting("VIEW_TOPIC", DEFAULT_VIEW_TOPIC)
    }

    /// The value of `name` as set, else the image's `default`.
    fn setting<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.env.get(name).map_or(default, String::as_str)
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

/// Kafka's client port in [`Kafka`]'s image (`KAFKA_LISTEN`, `0.0.0.0:9092`).
pub const KAFKA_PORT: ContainerPort = ContainerPort::Tcp(9092);

/// What Kafka logs once it processes requests: it has caught up with its metadata and the
/// controller has unfenced it.
pub const KAFKA_STARTED_MESSAGE: &str = "Kafka Server started";

/// The image name and tag [`Kafka::default`] runs: `docker build -f deploy/kafka/Dockerfile -t
/// event-updater-kafka .` makes it. [`testcontainers::ImageExt::with_tag`] picks another.
pub const DEFAULT_KAFKA_IMAGE: (&str, &str) = ("event-updater-kafka", "latest");

/// The project's Apache Kafka image: one KRaft node (broker and controller) on the committed
/// `deploy/kafka/server.properties` (one replica of everything, topics created by their users,
/// not by fetches), configured through the environment of its launcher, `deploy/kafka/kafka.sh`.
///
/// By default it listens on [`KAFKA_PORT`] and advertises its own address on its network at
/// that port: the other containers of the network reach it by its container name (or alias) or
/// address, and, on Linux, so does the host (Docker's bridge networks are routed there), at
/// [`kafka_bootstrap_servers`]. Ready once it logs [`KAFKA_STARTED_MESSAGE`].
#[derive(Debug, Clone)]
pub struct Kafka {
    name: String,
    tag: String,
    env: BTreeMap<String, String>,
    overrides: Vec<(String, String)>,
}

impl Default for Kafka {
    /// The image's own defaults: a 512 MiB heap, the listener on `0.0.0.0:9092` advertised at
    /// the container's address.
    fn default() -> Self {
        Kafka {
            name: DEFAULT_KAFKA_IMAGE.0.to_string(),
            tag: DEFAULT_KAFKA_IMAGE.1.to_string(),
            env: BTreeMap::new(),
            overrides: Vec::new(),
        }
    }
}

impl Kafka {
    /// Another image repository; the tag is set with [`testcontainers::ImageExt::with_tag`] or
    /// here.
    pub fn with_image(mut self, name: impl Into<String>, tag: impl Into<String>) -> Self {
        self.name = name.into();
        self.tag = tag.into();
        self
    }

    /// `KAFKA_ADVERTISED`: the `host:port` clients are told to use after bootstrapping (the
    /// default, the container's own address, suits clients on its network and a Linux host).
    pub fn with_advertised(self, host_port: impl Into<String>) -> Self {
        self.with_env("KAFKA_ADVERTISED", host_port)
    }

    /// A broker property on top of `server.properties` (`KAFKA_OVERRIDES`), e.g.
    /// `num.partitions` or `group.consumer.session.timeout.ms`; later ones win.
    pub fn with_broker_property(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.overrides.push((key.into(), value.into()));
        let joined = self
            .overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        self.with_env("KAFKA_OVERRIDES", joined)
    }

    /// `KAFKA_HEAP`: the JVM's heap, minimum and maximum (`512m` by default).
    pub fn with_heap(self, heap: impl Into<String>) -> Self {
        self.with_env("KAFKA_HEAP", heap)
    }

    /// Any other variable of `deploy/kafka/kafka.sh` (`KAFKA_EXTERNAL`,
    /// `KAFKA_EXTERNAL_ADVERTISED`, `KAFKA_CLUSTER_ID`, ...).
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// The environment the container gets (on top of the image's `KAFKA_CLASSPATH`,
    /// `KAFKA_DATA` and `KAFKA_HEAP`).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }
}

impl Image for Kafka {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        // The broker logs on stderr; on either stream, so that a log configuration that writes
        // to stdout does not hang the start.
        vec![WaitFor::message_on_either_std(KAFKA_STARTED_MESSAGE)]
    }

    fn env_vars(
        &self,
    ) -> impl IntoIterator<Item = (impl Into<Cow<'_, str>>, impl Into<Cow<'_, str>>)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        std::slice::from_ref(&KAFKA_PORT)
    }
}

/// The bootstrap servers of a started [`Kafka`] with the default advertised address: its
/// address on the network it was started on ([`testcontainers::ImageExt::with_network`], or
/// Docker's `bridge`) and [`KAFKA_PORT`], which is what the broker advertises. Reachable from the
/// network's containers and from a Linux host.
pub async fn kafka_bootstrap_servers(
    kafka: &ContainerAsync<Kafka>,
) -> Result<String, TestcontainersError> {
    let ip = kafka.get_bridge_ip_address().await?;
    Ok(format!("{ip}:{}", KAFKA_PORT.as_u16()))
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

    #[test]
    fn the_feed_topics_are_the_images_defaults_until_set() {
        let image = EventUpdater::default();
        assert_eq!(
            (image.changes_topic(), image.view_topic()),
            (DEFAULT_CHANGES_TOPIC, DEFAULT_VIEW_TOPIC)
        );
        assert!(image.env().is_empty(), "the defaults are the image's own");
        let image = image.with_feed_topics("c", "v");
        assert_eq!((image.changes_topic(), image.view_topic()), ("c", "v"));
        assert_eq!(image.env()["CHANGES_TOPIC"], "c");
        assert_eq!(image.env()["VIEW_TOPIC"], "v");
        // Empty turns a topic off, and is reported as set.
        let off = image.with_feed_topics("", "");
        assert_eq!((off.changes_topic(), off.view_topic()), ("", ""));
    }

    #[test]
    fn the_kafka_settings_become_the_launchers_environment() {
        let image = Kafka::default()
            .with_advertised("kafka:9092")
            .with_broker_property("num.partitions", "3")
            .with_heap("256m")
            .with_broker_property("group.consumer.session.timeout.ms", "45000")
            .with_env("KAFKA_EXTERNAL", "0.0.0.0:29092");
        let env: Vec<(String, String)> = image
            .env_vars()
            .into_iter()
            .map(|(k, v)| (k.into().into_owned(), v.into().into_owned()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("KAFKA_ADVERTISED", "kafka:9092"),
            ("KAFKA_EXTERNAL", "0.0.0.0:29092"),
            ("KAFKA_HEAP", "256m"),
            (
                "KAFKA_OVERRIDES",
                "num.partitions=3;group.consumer.session.timeout.ms=45000",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
        assert_eq!(image.env().len(), 4);
        // No command of its own: the image's entrypoint (kafka.sh) runs as it is.
        assert_eq!(image.cmd().into_iter().count(), 0);
        assert_eq!((image.name(), image.tag()), DEFAULT_KAFKA_IMAGE);
        assert_eq!(image.expose_ports(), [ContainerPort::Tcp(9092)]);
        let ready = format!("{:?}", image.ready_conditions());
        assert!(ready.contains(KAFKA_STARTED_MESSAGE), "{ready}");
        let other = image.with_image("registry.example/kafka", "4.4.0");
        assert_eq!(
            (other.name(), other.tag()),
            ("registry.example/kafka", "4.4.0")
        );
        assert!(Kafka::default().env().is_empty(), "the image's defaults");
    }
}
