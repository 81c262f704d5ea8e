//! The producers: the idempotent producer's settings (shared with the tools and the benchmark),
//! the reply producer and the change feed's, and their callbacks, which report to [`Health`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;

use crate::config::Config;
use crate::metrics;
use crate::pipeline::health::Health;

use super::client_config;

/// What a record may carry besides its value: its key and headers. Replies echo at most
/// [`MAX_ECHOED_BYTES`](crate::domain::reply::MAX_ECHOED_BYTES) of the command's key and
/// `correlation-id`, and the rest of their headers are short, so a reply of `MAX_REPLY_BYTES`
/// always fits within this much more.
pub const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// The producer's record size limit (`message.max.bytes`): a reply of `MAX_REPLY_BYTES` and a
/// dead letter of `MAX_MESSAGE_BYTES`, each with its key and headers.
pub fn producer_max_bytes(cfg: &Config) -> usize {
    cfg.max_reply_bytes.max(cfg.max_message_bytes) + RECORD_OVERHEAD_BYTES
}

/// How long the producer lets a topic the cluster says does not exist be (librdkafka's
/// `topic.metadata.propagation.max.ms`, 30 s by default) before it fails its records with
/// "unknown topic", counted from the producer's first use of the topic. The topics are created
/// at start, before the producer uses them, so their metadata has long propagated by then; a
/// topic deleted later is reported within this (and
/// [`UNUSABLE_TOPIC_ATTEMPTS`](super::UNUSABLE_TOPIC_ATTEMPTS)).
pub const TOPIC_PROPAGATION_MAX: Duration = Duration::from_secs(5);

/// The idempotent producer, configured as for replies and dead letters (for the tools).
pub fn producer(cfg: &Config) -> Result<FutureProducer, KafkaError> {
    producer_config(cfg).create()
}

/// The reply producer of the processor: as [`producer`], reporting its health to `health`.
pub fn reply_producer(
    cfg: &Config,
    health: Arc<Health>,
) -> Result<FutureProducer<PublisherContext>, KafkaError> {
    let mut c = producer_config(cfg);
    c.set("statistics.interval.ms", "1000");
    c.create_with_context(PublisherContext {
        health,
        name: "reply",
    })
}

/// The change feed's producer (`None` when `CHANGES_TOPIC` and `VIEW_TOPIC` are both empty): as
/// the reply producer, with two settings forced over any of the operator's, because a feed
/// record must never be written after a later one of its key:
/// - `message.timeout.ms=0`: the producer never gives up on a record. With a finite timeout a
///   record that times out is dropped while the idempotent producer goes on with the next ones
///   (it bumps its epoch), so a later version could be written before an earlier one is sent
///   again: a gap. Without it, a record waits for the broker however long it takes, and the
///   records behind it (of its partition) wait behind it, in order.
/// - `enable.gapless.guarantee=true`: any other error that would leave a gap in a partition's
///   records is fatal instead (the producer stops; the service reports itself not live and is
///   restarted, and the commands whose changes were not acknowledged are read again).
pub fn feed_producer(
    cfg: &Config,
    health: Arc<Health>,
) -> Result<Option<FutureProducer<PublisherContext>>, KafkaError> {
    if cfg.changes_topic.is_empty() && cfg.view_topic.is_empty() {
        return Ok(None);
    }
    let mut c = producer_config(cfg);
    if c.get("message.timeout.ms").is_some_and(|v| v != "0") {
        tracing::warn!(
            "KAFKA_PROPERTIES sets message.timeout.ms: the change feed's producer ignores it (a \
            feed record is never given up on)"
        );
    }
    c.set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true")
        .set("statistics.interval.ms", "1000");
    if !cfg.kafka_properties.iter().any(|(k, _)| is_linger(k)) {
        c.set("linger.ms", FEED_LINGER_MS);
    }
    c.create_with_context(PublisherContext {
        health,
        name: "change feed",
    })
    .map(Some)
}

/// How long the change feed's producer waits for more records of a partition before it sends
/// them (unless `KAFKA_PROPERTIES` sets `linger.ms`). A feed record is not on a command's round
/// trip (its reply is), so it waits longer than a reply: librdkafka sends one request per
/// partition, and at a few thousand commands a second a change and a view per command sent
/// alone would cost the broker a request each. Its acknowledgement still comes before the
/// command's offset is stored; the feed's readers see a change up to this much later.
const FEED_LINGER_MS: &str = "20";

/// Whether a librdkafka property name is the producer's linger (or its older name).
fn is_linger(key: &str) -> bool {
    matches!(key, "linger.ms" | "queue.buffering.max.ms")
}

/// A producer's callbacks (the reply producer's, the feed's): whether it reaches a broker and
/// whether it broke for good go to [`Health`] (and so to `/readyz` and `/healthz`).
#[derive(Debug)]
pub struct PublisherContext {
    health: Arc<Health>,
    /// Which producer it is, for the log: `reply` or `change feed`.
    name: &'static str,
}

impl ClientContext for PublisherContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => {
                self.health.producer_fatal.store(true, Ordering::Relaxed);
                metrics::record_producer_fatal();
                tracing::error!(
                    error = %error,
                    reason,
                    producer = self.name,
                    "a producer failed for good: nothing more can be published on it; the service \
                    reports itself not live and must be restarted"
                );
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.health
                    .producer_connected
                    .store(false, Ordering::Relaxed);
                tracing::warn!(
                    error = %error,
                    reason,
                    producer = self.name,
                    "a producer reaches no broker; not ready"
                );
            }
            _ => tracing::warn!(error = %error, reason, producer = self.name, "producer error"),
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        if up && !self.health.producer_connected.swap(true, Ordering::Relaxed) {
            tracing::info!(producer = self.name, "a producer reaches a broker again");
        }
    }
}

/// The settings of the idempotent producer of replies and dead letters (the tools' producer,
/// the reply producer and the feed's start from it; the benchmark reuses it): the defaults
/// here, then the operator's `KAFKA_PROPERTIES` over them.
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let mut c = client_config(cfg);
    let max_bytes = producer_max_bytes(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "topic.metadata.propagation.max.ms",
            TOPIC_PROPAGATION_MAX.as_millis().to_string(),
        )
        // A reply is on its command's round trip: sent within a millisecond. A batch hands all
        // its replies over at once, so they still go out together, one request per partition.
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set("message.max.bytes", max_bytes.to_string());
    // The operator's properties win over the defaults above.
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    if let Some(set) = c
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v < max_bytes)
    {
        tracing::warn!(
            message_max_bytes = set,
            needed = max_bytes,
            "KAFKA_PROPERTIES lowers message.max.bytes below MAX_REPLY_BYTES and MAX_MESSAGE_BYTES \
            plus headers: larger replies will be refused and go to the dead-letter topic, each \
            answered by a short error reply"
        );
    }
    c
}
