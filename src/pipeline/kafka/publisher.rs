//! The [`Publisher`]: hands a batch's records to the producers in order and settles them, sending
//! again what failed, until the broker has acknowledged every one (or refused it for good).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use crate::config::Config;
use crate::domain::reply::{header, Destination, Outgoing};
use crate::metrics;
use crate::pipeline::health::Health;

use super::refused::{is_permanent, refused_reply};
use super::unusable::{is_unusable_topic, leave_unusable, probe};
use super::{enqueue_waiting, future_record, PublisherContext, UNUSABLE_TOPIC_ATTEMPTS};

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
    /// The change feed's producer ([`feed_producer`](super::feed_producer)), for
    /// [`Destination::is_feed`] records.
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
    /// A publisher on `producer` (from [`reply_producer`](super::reply_producer)) and `feed`
    /// (from [`feed_producer`](super::feed_producer)), reporting unusable topics to `health`.
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
                tracing::warn!(
                    error = %e,
                    topic = ?record.topic,
                    "reply-to topic unusable; replying on the default topic"
                );
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
                        tracing::error!(
                            topic,
                            error = %e,
                            request_id = ?request_id,
                            "dead letter dropped: the dead-letter topic is unusable (its command \
                            is answered all the same)"
                        );
                    }
                    // Once the topic is known to be unusable (logged as an error), a record per
                    // retry would flood the log.
                    _ if known => {
                        tracing::debug!(
                            topic,
                            error = %e,
                            attempt,
                            request_id = ?request_id,
                            destination = ?d,
                            "the topic is still unusable; will retry"
                        );
                        retry.push(record);
                    }
                    _ => {
                        tracing::warn!(
                            topic,
                            error = %e,
                            attempt,
                            request_id = ?request_id,
                            destination = ?d,
                            "the topic is unknown to the broker or refused; will retry"
                        );
                        retry.push(record);
                    }
                }
            }
            Err(e) if is_permanent(&e) && record.destination.is_feed() => {
                // Never dropped (a gap), never sent around (a reorder): retried until the topic
                // takes it (an operator raises its max.message.bytes), the service not ready.
                metrics::record_publish_failed(record.destination, true);
                self.topic_unusable(record.destination, &e);
                tracing::debug!(
                    error = %e,
                    bytes = record.value.len(),
                    destination = ?record.destination,
                    "the topic refuses a change feed record; will retry"
                );
                retry.push(record);
            }
            Err(e) if is_permanent(&e) => {
                metrics::record_publish_failed(record.destination, true);
                let bytes = record.value.len();
                match record.destination {
                    Destination::Reply if record.header(header::REPLY_REFUSED).is_none() => {
                        tracing::error!(
                            error = %e,
                            bytes,
                            "the broker refuses this reply for good; it goes to the dead-letter \
                            topic and a short error reply answers the command"
                        );
                        let (dead, answer) = refused_reply(record, &e);
                        retry.push(dead);
                        retry.push(answer);
                    }
                    Destination::DeadLetter if bytes > 0 => {
                        tracing::error!(
                            error = %e,
                            bytes,
                            "the broker refuses this dead letter for good; sending its headers \
                            without the value"
                        );
                        record.value = Arc::new(Vec::new());
                        record.headers.push((
                            header::DLQ_VALUE_DROPPED.into(),
                            bytes.to_string().into_bytes(),
                        ));
                        retry.push(record);
                    }
                    _ => {
                        tracing::error!(
                            error = %e,
                            bytes,
                            destination = ?record.destination,
                            "the broker refuses even this short record for good; dropped"
                        );
                    }
                }
            }
            Err(e) => {
                metrics::record_publish_failed(record.destination, false);
                tracing::warn!(
                    error = %e,
                    destination = ?record.destination,
                    "publish failed; will retry"
                );
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
                tracing::error!(
                    topic,
                    error = %e,
                    "the reply topic is unusable (deleted, or denied by an ACL): replies are \
                    retried until it is back, commands wait (none is lost), and the service \
                    reports itself not ready"
                )
            }
            Destination::DeadLetter => {
                tracing::error!(
                    topic,
                    error = %e,
                    "the dead-letter topic is unusable (deleted, or denied by an ACL): dead \
                    letters are dropped until it is back (commands go on being answered), and the \
                    service reports itself not ready"
                )
            }
            Destination::Changes | Destination::View => {
                tracing::error!(
                    topic,
                    error = %e,
                    destination = ?d,
                    "a change feed topic is unusable (deleted, denied by an ACL, or refusing its \
                    records): its records are retried until it takes them, commands wait (none is \
                    lost, no change is skipped), and the service reports itself not ready"
                )
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
