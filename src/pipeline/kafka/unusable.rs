//! A topic the broker does not know (deleted) or refuses (an ACL): how long it is given, how it
//! is probed while unusable, and how the state is left.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;

use crate::domain::reply::Destination;
use crate::metrics;
use crate::pipeline::health::Health;

use super::PublisherContext;

/// How many attempts in a row a record may fail because its topic is unknown or refused before
/// that topic is reported unusable (the first attempts ride out a topic that is still being
/// created, whose metadata has not reached every broker yet).
pub const UNUSABLE_TOPIC_ATTEMPTS: u32 = 5;

/// While a topic is unusable, how often its metadata is asked for.
pub const UNUSABLE_TOPIC_PROBE: Duration = Duration::from_secs(2);

/// Leaves the unusable state for `d`'s `topic`, if it was in it: the gauge, a log line.
pub(super) fn leave_unusable(health: &Health, d: Destination, topic: &str) {
    // Read first: called for every record delivered, and a write would contend for the flag.
    let unusable = health.topic_unusable(d);
    if unusable.load(Ordering::Relaxed) && unusable.swap(false, Ordering::Relaxed) {
        metrics::record_topic_unusable(d, topic, false);
        tracing::info!(topic, destination = ?d, "the topic is usable again");
    }
}

/// While `d`'s `topic` is unusable: asks for its metadata every [`UNUSABLE_TOPIC_PROBE`], so
/// that the producer sees it again as soon as it is back (its own refresh is every 5 minutes).
/// A dead-letter topic found again leaves the unusable state (nothing is retried on it that
/// would); the reply topic leaves it with the first reply delivered.
pub(super) async fn probe(
    producer: FutureProducer<PublisherContext>,
    health: Arc<Health>,
    d: Destination,
    topic: String,
) {
    loop {
        tokio::time::sleep(UNUSABLE_TOPIC_PROBE).await;
        if !health.topic_unusable(d).load(Ordering::Relaxed) {
            return;
        }
        let (p, t) = (producer.clone(), topic.clone());
        let found = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), Timeout::After(Duration::from_secs(5)))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|m| m.name() == t && m.error().is_none() && !m.partitions().is_empty())
                })
        })
        .await
        .unwrap_or(false);
        if found && d == Destination::DeadLetter {
            leave_unusable(&health, d, &topic);
            return;
        }
    }
}

/// Whether `e` says the record's topic is unknown to the broker or refused (an ACL).
pub(super) fn is_unusable_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}
