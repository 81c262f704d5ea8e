//! Kafka clients: their configuration, topic creation, and the reply publisher.
//!
//! Every client starts from [`client_config`], so the pass-through librdkafka properties (TLS,
//! SASL, ...) apply to the consumer, the producer and the admin client alike. The
//! [`Publisher`] delivers a batch's replies, dead letters and change feed records and retries
//! until the broker has acknowledged every one: the consumer stores no offset before that. The
//! feed's records go through a producer of their own ([`feed_producer`]), which keeps their order
//! per key under any failure.
//!
//! A topic the broker does not know (deleted) or refuses (an ACL) is retried a bounded number
//! of times ([`UNUSABLE_TOPIC_ATTEMPTS`]); then it is reported unusable: an error log and the
//! `event_updater_topic_unusable{destination,topic}` gauge name it, and `/readyz` fails.
//! Invariants in that state:
//! - A reply is never dropped: it is retried (back-off up to 5 s) until the reply topic takes
//!   it, so its command's offset is not stored meanwhile and the lane's later batches wait
//!   behind it; commands are held, never lost. The first reply delivered clears the state.
//! - A dead letter never holds a command up: once the dead-letter topic is unusable, a dead
//!   letter it refuses is dropped (logged with its request id and counted in
//!   `event_updater_dead_letters_dropped_total{topic}`), its command's reply still goes out and
//!   the offset moves on. The state clears once the topic is seen again.
//! - A deleted topic is seen as such by the producer within [`TOPIC_PROPAGATION_MAX`] (librdkafka
//!   otherwise waits up to 30 s, and its records wait with it).
//! - While a topic is unusable, its metadata is asked for every [`UNUSABLE_TOPIC_PROBE`], so
//!   that the producer learns of the topic's return at once rather than at its next periodic
//!   metadata refresh (`topic.metadata.refresh.interval.ms`, 5 minutes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{
    is_secret_property, mask_url_password, replication_factor_for, Config, AUTO_REPLICATION_FACTOR,
};
use crate::domain::reply::{header, Destination, Outgoing, Reply};
use crate::metrics;
use crate::pipeline::health::Health;

/// The base configuration of every client: bootstrap servers plus the pass-through properties.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap_servers);
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    c
}

/// The pass-through properties with secret values masked, for the start-up log: the whole
/// value of a secret property ([`is_secret_property`]), and the password of any other value
/// that is a URL with one (`sasl.oauthbearer.token.endpoint.url=https://id:secret@…`).
pub fn masked_properties(cfg: &Config) -> Vec<String> {
    cfg.kafka_properties
        .iter()
        .map(|(k, v)| {
            if is_secret_property(k) {
                format!("{k}=***")
            } else if v.contains("://") {
                format!("{k}={}", mask_url_password(v))
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

/// Creates the command, reply and dead-letter topics, and the change feed's changes and view
/// topics where they are configured, where they do not exist yet, with
/// `TOPIC_REPLICATION_FACTOR` replicas ([`replication_factor_for`]: `auto` is three, or the
/// broker count where the cluster has fewer). A replication factor below what the cluster
/// allows, for a topic created or found, is logged as an error: losing one broker then loses
/// commands or replies. (The start goes on: an operator may mean it, and a single-broker
/// cluster has no better.)
pub async fn ensure_topics(cfg: &Config) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let names: Vec<&String> = [
        &cfg.command_topic,
        &cfg.reply_topic,
        &cfg.dlq_topic,
        &cfg.changes_topic,
        &cfg.view_topic,
    ]
    .into_iter()
    .filter(|n| !n.is_empty())
    .collect();
    let metadata = admin
        .inner()
        .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))?;
    let brokers = metadata.brokers().len();
    let (replication, low) = replication_factor_for(cfg.topic_replication_factor, brokers);
    let allowed = replication_factor_for(AUTO_REPLICATION_FACTOR, brokers).0 as usize;
    for t in metadata
        .topics()
        .iter()
        .filter(|t| names.iter().any(|n| n.as_str() == t.name()))
    {
        let replicas = t.partitions().iter().map(|p| p.replicas().len()).min();
        if let Some(replicas) = replicas.filter(|r| *r < allowed) {
            tracing::error!(topic = t.name(), replicas, brokers, "this topic has fewer replicas than the cluster allows (up to 3): losing one broker can lose its records");
        }
    }
    let missing: Vec<&String> = names
        .iter()
        .copied()
        .filter(|n| {
            !metadata.topics().iter().any(|t| {
                t.name() == n.as_str() && t.error().is_none() && !t.partitions().is_empty()
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if low {
        tracing::error!(
            replication,
            brokers,
            topics = ?missing,
            "TOPIC_REPLICATION_FACTOR is below what the cluster allows (up to 3): the topics created now can lose records when one broker is lost; leave it at auto"
        );
    }
    let max_bytes = producer_max_bytes(cfg).to_string();
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|n| {
            let topic = NewTopic::new(
                n,
                cfg.topic_partitions,
                TopicReplication::Fixed(replication),
            );
            // The feed's topics: the changes kept for good (a reader starts from version 1),
            // the views compacted to the last per event; both take any record the feed sends.
            if **n == cfg.changes_topic {
                topic
                    .set("retention.ms", "-1")
                    .set("max.message.bytes", &max_bytes)
            } else if **n == cfg.view_topic {
                topic
                    .set("cleanup.policy", "compact")
                    .set("max.message.bytes", &max_bytes)
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = cfg.topic_partitions, replication, "created topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, error = %code, "could not create topic"),
                )
            }
        }
    }
    Ok(())
}

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
        tracing::warn!("KAFKA_PROPERTIES sets message.timeout.ms: the change feed's producer ignores it (a feed record is never given up on)");
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
                tracing::error!(error = %error, reason, producer = self.name, "a producer failed for good: nothing more can be published on it; the service reports itself not live and must be restarted");
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.health
                    .producer_connected
                    .store(false, Ordering::Relaxed);
                tracing::warn!(error = %error, reason, producer = self.name, "a producer reaches no broker; not ready");
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

fn producer_config(cfg: &Config) -> ClientConfig {
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
            "KAFKA_PROPERTIES lowers message.max.bytes below MAX_REPLY_BYTES and MAX_MESSAGE_BYTES plus headers: larger replies will be refused and go to the dead-letter topic, each answered by a short error reply"
        );
    }
    c
}

/// What [`Publisher::settle`] found.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// Every record acknowledged (false: shutdown came first).
    pub published: bool,
    /// When the batch's replies (and dead letters) were acknowledged: before its change feed
    /// records, which linger longer.
    pub answered_at: Instant,
}

/// A batch's records handed to the producer, with their pending acknowledgements.
pub struct Enqueued {
    records: Vec<Outgoing>,
    pending: Vec<Result<DeliveryFuture, KafkaError>>,
}

impl std::fmt::Debug for Enqueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enqueued")
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// Publishes a batch's records and waits until every one is acknowledged.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<PublisherContext>,
    /// The change feed's producer ([`feed_producer`]), for [`Destination::is_feed`] records.
    feed: Option<FutureProducer<PublisherContext>>,
    reply_topic: String,
    dlq_topic: String,
    changes_topic: String,
    view_topic: String,
    /// Where the unusable topics are reported (the producer's context reports there too).
    health: Arc<Health>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("reply_topic", &self.reply_topic)
            .field("dlq_topic", &self.dlq_topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on `producer` (from [`reply_producer`]) and `feed` (from [`feed_producer`]),
    /// reporting unusable topics to `health`.
    pub fn new(
        producer: FutureProducer<PublisherContext>,
        feed: Option<FutureProducer<PublisherContext>>,
        cfg: &Config,
        health: Arc<Health>,
    ) -> Publisher {
        Publisher {
            producer,
            feed,
            reply_topic: cfg.reply_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            changes_topic: cfg.changes_topic.clone(),
            view_topic: cfg.view_topic.clone(),
            health,
        }
    }

    /// The producer for records to `d`.
    fn producer(&self, d: Destination) -> &FutureProducer<PublisherContext> {
        match (&self.feed, d.is_feed()) {
            (Some(feed), true) => feed,
            _ => &self.producer,
        }
    }

    /// Hands `records` to the producer in order, without waiting for acknowledgements: the
    /// producer is idempotent, so records to one partition are written in the order handed
    /// over. Waits only while the producer's queue is full. Settle the result with [`settle`].
    ///
    /// [`settle`]: Publisher::settle
    pub async fn enqueue(&self, records: Vec<Outgoing>) -> Enqueued {
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            pending.push(self.enqueue_one(r).await);
        }
        Enqueued { records, pending }
    }

    async fn enqueue_one(&self, r: &Outgoing) -> Result<DeliveryFuture, KafkaError> {
        // A feed record for a topic known to be unusable is not sent now but handed to `settle`
        // as failed: it is sent when its acker reaches it, after every earlier record of its
        // lane was acknowledged, so it cannot overtake one that failed before it.
        if r.destination.is_feed()
            && self
                .health()
                .topic_unusable(r.destination)
                .load(Ordering::Relaxed)
        {
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        enqueue_waiting(self.producer(r.destination), self.record(r)).await
    }

    /// Waits until every record of `e` is acknowledged, or refused for good (see
    /// [`publish_all`]); records that failed are sent again. False: shutdown came first.
    ///
    /// [`publish_all`]: Publisher::publish_all
    pub async fn settle(&self, e: Enqueued, shutdown: &mut watch::Receiver<bool>) -> Settled {
        let mut retry = Vec::new();
        let mut published = Published::default();
        // The records are in order: the replies (and dead letters), then the feed's.
        let mut answered_at = None;
        for (record, pending) in e.records.into_iter().zip(e.pending) {
            if record.destination.is_feed() && answered_at.is_none() {
                answered_at = Some(Instant::now());
            }
            let result = match pending {
                Ok(f) => match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            self.sort(record, result, &mut retry, 1, &mut published);
        }
        published.record();
        let settled = |published: bool, answered_at: Option<Instant>| Settled {
            published,
            answered_at: answered_at.unwrap_or_else(Instant::now),
        };
        // A reply sent again was not answered before.
        if retry.iter().any(|r| !r.destination.is_feed()) {
            answered_at = None;
        }
        if retry.is_empty() {
            return settled(true, answered_at);
        }
        let wait = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => true,
            _ = shutdown.wait_for(|s| *s) => false,
        };
        let published = wait && self.publish_from(retry, shutdown, 2).await;
        settled(published, answered_at)
    }

    /// Sends all `records` and returns once each is acknowledged, or refused for good (a
    /// record the broker will never take, such as one over its size limit, is logged and
    /// counted, so that it cannot stall the partition; so is a dead letter while the
    /// dead-letter topic is unusable). Transient failures are retried with back-off, as are
    /// replies while the reply topic is unusable; when `shutdown` fires while records are still
    /// unacknowledged, it returns `false` and the caller must not store the batch's offsets.
    pub async fn publish_all(
        &self,
        records: &[Outgoing],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        self.publish_from(records.to_vec(), shutdown, 1).await
    }

    /// [`publish_all`](Publisher::publish_all), where `attempt` is the number of this first
    /// attempt (the records may have failed before).
    async fn publish_from(
        &self,
        mut pending: Vec<Outgoing>,
        shutdown: &mut watch::Receiver<bool>,
        mut attempt: u32,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let results = join_all(pending.iter().map(|r| self.send(r))).await;
            let mut retry = Vec::new();
            let mut published = Published::default();
            for (record, result) in pending.into_iter().zip(results) {
                self.sort(record, result, &mut retry, attempt, &mut published);
            }
            published.record();
            attempt = attempt.saturating_add(1);
            if retry.is_empty() {
                return true;
            }
            pending = retry;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Counts (in `published`) and logs one record's delivery result, its `attempt`th; what
    /// should be sent again goes to `retry`.
    fn sort(
        &self,
        mut record: Outgoing,
        result: Result<(), KafkaError>,
        retry: &mut Vec<Outgoing>,
        attempt: u32,
        published: &mut Published,
    ) {
        match result {
            Ok(()) => {
                published.add(record.destination);
                if record.topic.is_none() {
                    self.topic_usable(record.destination);
                }
            }
            Err(e) if record.topic.is_some() && is_unusable_topic(&e) => {
                tracing::warn!(error = %e, topic = ?record.topic, "reply-to topic unusable; replying on the default topic");
                record.topic = None;
                retry.push(record);
            }
            Err(e) if is_unusable_topic(&e) => {
                let d = record.destination;
                metrics::record_publish_failed(d, false);
                let topic = self.topic(d);
                let known = self.health().topic_unusable(d).load(Ordering::Relaxed);
                // A feed topic at once: its later records must wait (see `enqueue_one`).
                let unusable = known || attempt >= UNUSABLE_TOPIC_ATTEMPTS || d.is_feed();
                if unusable {
                    self.topic_unusable(d, &e);
                }
                let request_id = record
                    .header(header::REQUEST_ID)
                    .map(String::from_utf8_lossy);
                match d {
                    Destination::DeadLetter if unusable => {
                        metrics::record_dead_letter_dropped(topic);
                        tracing::error!(topic, error = %e, request_id = ?request_id, "dead letter dropped: the dead-letter topic is unusable (its command is answered all the same)");
                    }
                    // Once the topic is known to be unusable (logged as an error), a record per
                    // retry would flood the log.
                    _ if known => {
                        tracing::debug!(topic, error = %e, attempt, request_id = ?request_id, destination = ?d, "the topic is still unusable; will retry");
                        retry.push(record);
                    }
                    _ => {
                        tracing::warn!(topic, error = %e, attempt, request_id = ?request_id, destination = ?d, "the topic is unknown to the broker or refused; will retry");
                        retry.push(record);
                    }
                }
            }
            Err(e) if is_permanent(&e) && record.destination.is_feed() => {
                // Never dropped (a gap), never sent around (a reorder): retried until the topic
                // takes it (an operator raises its max.message.bytes), the service not ready.
                metrics::record_publish_failed(record.destination, true);
                self.topic_unusable(record.destination, &e);
                tracing::debug!(error = %e, bytes = record.value.len(), destination = ?record.destination, "the topic refuses a change feed record; will retry");
                retry.push(record);
            }
            Err(e) if is_permanent(&e) => {
                metrics::record_publish_failed(record.destination, true);
                let bytes = record.value.len();
                match record.destination {
                    Destination::Reply if record.header(REPLY_REFUSED).is_none() => {
                        tracing::error!(error = %e, bytes, "the broker refuses this reply for good; it goes to the dead-letter topic and a short error reply answers the command");
                        let (dead, answer) = refused_reply(record, &e);
                        retry.push(dead);
                        retry.push(answer);
                    }
                    Destination::DeadLetter if bytes > 0 => {
                        tracing::error!(error = %e, bytes, "the broker refuses this dead letter for good; sending its headers without the value");
                        record.value = Arc::new(Vec::new());
                        record
                            .headers
                            .push(("dlq-value-dropped".into(), bytes.to_string().into_bytes()));
                        retry.push(record);
                    }
                    _ => {
                        tracing::error!(error = %e, bytes, destination = ?record.destination, "the broker refuses even this short record for good; dropped");
                    }
                }
            }
            Err(e) => {
                metrics::record_publish_failed(record.destination, false);
                tracing::warn!(error = %e, destination = ?record.destination, "publish failed; will retry");
                retry.push(record);
            }
        }
    }

    /// The default topic of `d`: the reply topic or the dead-letter topic.
    fn topic(&self, d: Destination) -> &str {
        match d {
            Destination::Reply => &self.reply_topic,
            Destination::DeadLetter => &self.dlq_topic,
            Destination::Changes => &self.changes_topic,
            Destination::View => &self.view_topic,
        }
    }

    fn health(&self) -> &Health {
        &self.health
    }

    /// Enters the unusable state for `d`'s topic (once: the log, the gauge, the probe).
    fn topic_unusable(&self, d: Destination, e: &KafkaError) {
        if self
            .health()
            .topic_unusable(d)
            .swap(true, Ordering::Relaxed)
        {
            return;
        }
        let topic = self.topic(d).to_string();
        metrics::record_topic_unusable(d, &topic, true);
        match d {
            Destination::Reply => {
                tracing::error!(topic, error = %e, "the reply topic is unusable (deleted, or denied by an ACL): replies are retried until it is back, commands wait (none is lost), and the service reports itself not ready")
            }
            Destination::DeadLetter => {
                tracing::error!(topic, error = %e, "the dead-letter topic is unusable (deleted, or denied by an ACL): dead letters are dropped until it is back (commands go on being answered), and the service reports itself not ready")
            }
            Destination::Changes | Destination::View => {
                tracing::error!(topic, error = %e, destination = ?d, "a change feed topic is unusable (deleted, denied by an ACL, or refusing its records): its records are retried until it takes them, commands wait (none is lost, no change is skipped), and the service reports itself not ready")
            }
        }
        tokio::spawn(probe(
            self.producer(d).clone(),
            self.health.clone(),
            d,
            topic,
        ));
    }

    /// Leaves the unusable state for `d`'s topic, if it was in it.
    fn topic_usable(&self, d: Destination) {
        leave_unusable(self.health(), d, self.topic(d));
    }

    fn record<'a>(&'a self, r: &'a Outgoing) -> FutureRecord<'a, [u8], [u8]> {
        let topic = match &r.topic {
            Some(t) => t,
            None => self.topic(r.destination),
        };
        future_record(topic, r)
    }

    async fn send(&self, r: &Outgoing) -> Result<(), KafkaError> {
        self.producer(r.destination)
            .send(self.record(r), Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Waits for everything queued to be delivered (on shutdown).
    pub fn flush(&self, timeout: Duration) {
        for p in std::iter::once(&self.producer).chain(&self.feed) {
            if let Err(e) = p.flush(Timeout::After(timeout)) {
                tracing::warn!(error = %e, "producer flush incomplete");
            }
        }
    }
}

/// Records delivered, by destination, counted over a batch and recorded once.
#[derive(Debug, Default)]
struct Published([u64; 4]);

impl Published {
    fn add(&mut self, d: Destination) {
        self.0[Self::slot(d)] += 1;
    }

    fn slot(d: Destination) -> usize {
        match d {
            Destination::Reply => 0,
            Destination::DeadLetter => 1,
            Destination::Changes => 2,
            Destination::View => 3,
        }
    }

    /// Records the counts ([`metrics::record_published`]).
    fn record(&self) {
        for d in [
            Destination::Reply,
            Destination::DeadLetter,
            Destination::Changes,
            Destination::View,
        ] {
            let n = self.0[Self::slot(d)];
            if n > 0 {
                metrics::record_published(d, n);
            }
        }
    }
}

/// `r` (its key, value and headers) as a record to `topic`.
pub fn future_record<'a>(topic: &'a str, r: &'a Outgoing) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .payload(r.value.as_slice())
        .headers(headers);
    if let Some(k) = &r.key {
        record = record.key(k.as_slice());
    }
    record
}

/// Hands `record` to `producer` without waiting for its acknowledgement; waits only while the
/// producer's queue is full.
pub async fn enqueue_waiting<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The header of the error reply that stands in for a reply the broker refused.
const REPLY_REFUSED: &str = "reply-refused";

/// How many attempts in a row a record may fail because its topic is unknown or refused before
/// that topic is reported unusable (the first attempts ride out a topic that is still being
/// created, whose metadata has not reached every broker yet).
pub const UNUSABLE_TOPIC_ATTEMPTS: u32 = 5;

/// How long the producer lets a topic the cluster says does not exist be (librdkafka's
/// `topic.metadata.propagation.max.ms`, 30 s by default) before it fails its records with
/// "unknown topic", counted from the producer's first use of the topic. The topics are created
/// at start, before the producer uses them, so their metadata has long propagated by then; a
/// topic deleted later is reported within this (and [`UNUSABLE_TOPIC_ATTEMPTS`]).
pub const TOPIC_PROPAGATION_MAX: Duration = Duration::from_secs(5);

/// While a topic is unusable, how often its metadata is asked for.
pub const UNUSABLE_TOPIC_PROBE: Duration = Duration::from_secs(2);

/// Leaves the unusable state for `d`'s `topic`, if it was in it: the gauge, a log line.
fn leave_unusable(health: &Health, d: Destination, topic: &str) {
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
async fn probe(
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

/// For a reply the broker refuses for good (too large for the topic): the reply itself as a dead
/// letter, and a short reply with status 500 that says what happened and what the command's
/// outcome was (`reply_status`, `reply_version`), so that the command is still answered.
///
/// The dead letter is marked `dlq-kind: reply`: its value is a reply (the whole event, keyed by
/// its UUID), which `dlq replay` must never publish as a command. It keeps the reply's headers
/// (the request id and the command's coordinates), never a `dlq-source-*` header, which marks
/// a command's dead letter.
fn refused_reply(record: Outgoing, e: &KafkaError) -> (Outgoing, Outgoing) {
    use crate::domain::reply::{header, DeadLetterKind, REPLY_REFUSED_REASON};
    let original: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
    let reason = format!("{REPLY_REFUSED_REASON}: {e}");
    let answer = Reply {
        request_id: original["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        event_uuid: original["event_uuid"]
            .as_str()
            .and_then(|u| u.parse::<Uuid>().ok()),
        status: 500,
        version: None,
        body: json!({
            "detail": format!(
                "The reply to this command ({} bytes) was refused by the broker ({e}); it is on the dead-letter topic.",
                record.value.len()
            ),
            "reply_status": original["status"],
            "reply_version": original["version"],
        }),
    };
    let mut answer_headers = record.headers.clone();
    answer_headers.push((REPLY_REFUSED.into(), reason.clone().into_bytes()));
    let answer = Outgoing {
        destination: Destination::Reply,
        topic: record.topic.clone(),
        key: record.key.clone(),
        value: Arc::new(answer.to_bytes()),
        headers: answer_headers,
    };
    let mut headers = record.headers;
    headers.push((
        header::DLQ_KIND.into(),
        DeadLetterKind::Reply.as_str().as_bytes().to_vec(),
    ));
    headers.push((header::DLQ_REASON.into(), reason.into_bytes()));
    headers.push((
        header::DLQ_STATUS.into(),
        original["status"].to_string().into_bytes(),
    ));
    let dead = Outgoing {
        destination: Destination::DeadLetter,
        topic: None,
        key: record.key,
        value: record.value,
        headers,
    };
    (dead, answer)
}

fn is_unusable_topic(e: &KafkaError) -> bool {
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

fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logged_properties_hide_secrets_and_passwords_in_urls() {
        let mut cfg = Config::defaults();
        cfg.kafka_properties = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.oauthbearer.config", "principal=svc secret=hunter2"),
            ("sasl.password", "hunter3"),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "https://svc:hunter4@idp.example/token",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            masked_properties(&cfg),
            [
                "security.protocol=SASL_SSL",
                "sasl.oauthbearer.config=***",
                "sasl.password=***",
                "sasl.oauthbearer.token.endpoint.url=https://svc:***@idp.example/token",
            ]
        );
    }
}
