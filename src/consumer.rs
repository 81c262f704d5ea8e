//! The processing loop: poll a batch, decode it, apply it in one transaction, publish the
//! replies, and only then store the offsets.
//!
//! Invariants:
//! - An offset is stored (and so committed) only after the transaction holding the command's
//!   effect has committed and its reply has been acknowledged by the broker. A crash anywhere
//!   before that redelivers the command, and the stored reply answers it again (no new version).
//! - Batches are applied one at a time, in poll order, so commands of one partition are applied
//!   in partition order. A batch's replies are published while the next batch is applied, and
//!   are acknowledged before the next batch's are sent, so they also leave in order.
//! - A database that is down is retried with back-off, without polling further; data the
//!   database refuses is isolated to its command, which gets a 400, so a partition never stalls.
//! - On shutdown the batch in hand is finished (applied, answered, offsets committed) first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

use crate::command::{self, Action, Command, Incoming};
use crate::config::Config;
use crate::kafka::{self, Publisher};
use crate::metrics;
use crate::reply::{detail, Destination, Outgoing};
use crate::store::{self, Outcome, OutcomeKind, Source, StoreError};
use crate::trace;

/// What `/healthz` and `/readyz` report; written by the processor.
#[derive(Debug, Default)]
pub struct Health {
    pub migrated: AtomicBool,
    pub subscribed: AtomicBool,
    pub database_ok: AtomicBool,
    pub assigned_partitions: AtomicUsize,
}

impl Health {
    /// Migrations ran and the consumer is subscribed.
    pub fn is_live(&self) -> bool {
        self.migrated.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }
    /// Live, the database answers, and partitions are assigned.
    pub fn is_ready(&self) -> bool {
        self.is_live()
            && self.database_ok.load(Ordering::Relaxed)
            && self.assigned_partitions.load(Ordering::Relaxed) > 0
    }
}

/// A batch applied in PostgreSQL, with what its replies need.
struct Applied {
    batch: Vec<Incoming>,
    commands: Vec<(Command, Source)>,
    outcomes: Vec<Outcome>,
    traces: Vec<Option<trace::Continued>>,
}

/// An applied batch whose records are being published.
struct InFlight {
    applied: Applied,
    publishing: tokio::task::JoinHandle<bool>,
}

/// Consumer callbacks: rebalances are logged, counted and reflected in [`Health`].
#[derive(Debug)]
pub struct ProcessorContext {
    health: Arc<Health>,
}

impl ClientContext for ProcessorContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag per
    /// assigned partition becomes `event_updater_consumer_lag`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; a negative lag means "not known yet".
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::record_consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    /// Before partitions go, commit what is stored for them, so that their next owner starts
    /// after the last answered command instead of at the last periodic auto-commit. (Batches run
    /// in the polling task, so a batch is never half-done when this runs; a batch already
    /// polled for a revoked partition is still applied once, thanks to the stored replies.)
    fn pre_rebalance(&self, consumer: &BaseConsumerRef<'_>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
                Err(e) => tracing::info!(error = %e, "commit before revocation failed"),
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumerRef<'_>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.health
            .assigned_partitions
            .store(assigned, Ordering::Relaxed);
        metrics::record_rebalance(assigned);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), assigned, "partitions assigned")
            }
            Rebalance::Revoke(_) => tracing::info!(assigned, "revocation done"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type BaseConsumerRef<'a> = rdkafka::consumer::BaseConsumer<ProcessorContext>;

/// The command consumer with its context.
pub type CommandConsumer = StreamConsumer<ProcessorContext>;

/// Creates the consumer: offsets are stored by hand after each batch and auto-committed.
pub fn create_consumer(cfg: &Config, health: Arc<Health>) -> KafkaResult<CommandConsumer> {
    let mut c = kafka::client_config(cfg);
    c.set("group.id", &cfg.kafka_group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // Bounds the records librdkafka prefetches (default 64 MiB), which is most of the
        // processor's memory under a backlog; 16 MiB still holds many batches.
        .set("queued.max.messages.kbytes", "16384")
        // How long a fetch may wait at the broker for data. Kafka answers as soon as data
        // arrives; some Kafka-protocol brokers wait the whole time, which then bounds the
        // latency of a quiet partition. Overridable with KAFKA_PROPERTIES.
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    c.create_with_context(ProcessorContext { health })
}

/// The processor: owns the consumer, the publisher and the pool.
pub struct Processor {
    pub consumer: CommandConsumer,
    pub publisher: Publisher,
    pub pool: PgPool,
    pub cfg: Config,
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor").finish_non_exhaustive()
    }
}

impl Processor {
    /// Subscribes and runs until `shutdown` turns true; then finishes the batch in hand,
    /// commits the stored offsets and returns.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> KafkaResult<()> {
        self.consumer.subscribe(&[&self.cfg.command_topic])?;
        self.health.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(topic = %self.cfg.command_topic, group = %self.cfg.kafka_group_id, "subscribed");
        // The batch whose effects are committed and whose replies are being published while the
        // next batch is decoded and applied.
        let mut in_flight: Option<InFlight> = None;
        loop {
            let batch = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                b = self.next_batch(&mut in_flight) => b,
            };
            if batch.is_empty() {
                continue;
            }
            let applied = self.apply(batch, &mut shutdown).await;
            // Replies leave in batch order: the previous batch's are acknowledged (and its
            // offsets stored) before this batch's are sent.
            if let Some(previous) = in_flight.take() {
                if !self.complete(previous).await {
                    break;
                }
            }
            match applied {
                Some(a) => in_flight = Some(self.publish(a, &shutdown)),
                None => break,
            }
        }
        if let Some(last) = in_flight.take() {
            self.complete(last).await;
        }
        tracing::info!("shutting down: committing stored offsets");
        self.publisher.flush(Duration::from_secs(5));
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last auto-commit.
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; the last batch will be redelivered and answered from the stored replies")
            }
        }
        Ok(())
    }

    /// Waits for one record, then takes what arrives within the linger, up to `max_batch`.
    /// While it waits for the first, it completes the batch in flight, so that an idle
    /// processor stores its last offsets at once. (Only the first wait races with it: `recv`
    /// is cancellation safe, and nothing has been taken yet.)
    async fn next_batch(&self, in_flight: &mut Option<InFlight>) -> Vec<Incoming> {
        let mut batch = Vec::new();
        let first = loop {
            let Some(f) = in_flight.as_mut() else {
                break self.consumer.recv().await;
            };
            tokio::select! {
                m = self.consumer.recv() => break m,
                published = &mut f.publishing => {
                    if let Some(done) = in_flight.take() {
                        self.finish(done.applied, matches!(published, Ok(true)));
                    }
                }
            }
        };
        match first {
            Ok(m) => batch.push(to_incoming(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return batch;
            }
        }
        let deadline = tokio::time::Instant::now() + self.cfg.batch_linger();
        while batch.len() < self.cfg.max_batch as usize {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(to_incoming(&m)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Decodes a batch and applies it in one transaction. `None`: shutdown came first.
    async fn apply(
        &self,
        batch: Vec<Incoming>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Applied> {
        let span = tracing::debug_span!("batch", size = batch.len());
        async {
            let commands: Vec<(Command, Source)> = batch
                .iter()
                .map(|m| {
                    let c = command::decode(m, self.cfg.max_message_bytes);
                    let s = Source {
                        topic: m.topic.clone(),
                        partition: m.partition,
                        offset: m.offset,
                    };
                    (c, s)
                })
                .collect();
            let outcomes = self.apply_durably(&commands, shutdown).await?;
            let traces = batch
                .iter()
                .map(|m| m.header("traceparent").and_then(trace::continue_from))
                .collect();
            Some(Applied {
                batch,
                commands,
                outcomes,
                traces,
            })
        }
        .instrument(span)
        .await
    }

    /// Starts publishing an applied batch's replies (and dead letters) in the background.
    fn publish(&self, a: Applied, shutdown: &watch::Receiver<bool>) -> InFlight {
        let records = outgoing(&self.cfg, &a.batch, &a.commands, &a.outcomes, &a.traces);
        let publisher = self.publisher.clone();
        let mut shutdown = shutdown.clone();
        let publishing =
            tokio::spawn(async move { publisher.publish_all(&records, &mut shutdown).await });
        InFlight {
            applied: a,
            publishing,
        }
    }

    /// Waits until a batch's records are acknowledged, then finishes it. False when shutdown
    /// came first (offsets not stored).
    async fn complete(&self, f: InFlight) -> bool {
        let published = matches!(f.publishing.await, Ok(true));
        self.finish(f.applied, published)
    }

    /// Records a published batch's metrics and logs and stores its offsets; a batch whose
    /// records were not all acknowledged (shutdown) stores nothing.
    fn finish(&self, a: Applied, published: bool) -> bool {
        if !published {
            tracing::warn!("shutdown before every reply was acknowledged; offsets not stored");
            return false;
        }
        let now = Utc::now();
        for (((m, (c, _)), o), t) in a
            .batch
            .iter()
            .zip(&a.commands)
            .zip(&a.outcomes)
            .zip(&a.traces)
        {
            let latency = m.timestamp_ms.and_then(|t| {
                (now.timestamp_millis() - t)
                    .try_into()
                    .ok()
                    .map(Duration::from_millis)
            });
            metrics::record_command(o.status, o.kind, latency);
            let event_uuid = match &c.action {
                Action::Apply { event_uuid, .. } => Some(*event_uuid),
                Action::Reject { event_uuid, .. } => *event_uuid,
            };
            let span = tracing::info_span!(
                "command",
                request_id = %c.request_id,
                event_uuid = event_uuid.map(tracing::field::display),
                partition = m.partition,
                offset = m.offset,
                trace_id = t.as_ref().map(|t| tracing::field::display(&t.trace_id)),
                span_id = t.as_ref().map(|t| tracing::field::display(&t.span_id)),
            );
            span.in_scope(|| {
                tracing::debug!(status = o.status, outcome = ?o.kind, "answered");
            });
        }
        self.store_offsets(&a.batch);
        true
    }

    /// Applies the batch, retrying while the database is unavailable or a concurrent writer
    /// conflicts; if the database refuses the data, applies the commands one by one so that
    /// only the offending command is answered with a 400. `None`: shutdown came first.
    async fn apply_durably(
        &self,
        commands: &[(Command, Source)],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Vec<Outcome>> {
        match self.apply_retrying(commands, shutdown).await? {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, size = commands.len(), "batch refused; applying its commands one by one");
                let mut out = Vec::with_capacity(commands.len());
                for c in commands {
                    out.push(self.apply_one(c.clone(), shutdown).await?);
                }
                Some(out)
            }
        }
    }

    async fn apply_one(
        &self,
        (cmd, source): (Command, Source),
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let single = [(cmd, source)];
        let e = match self.apply_retrying(&single, shutdown).await? {
            Ok(mut o) => return o.pop(),
            Err(e) => e,
        };
        let [(cmd, source)] = single;
        tracing::warn!(request_id = %cmd.request_id, error = %e, "the database refused a command; answering 400");
        let refused = Command {
            action: Action::Reject {
                event_uuid: match &cmd.action {
                    Action::Apply { event_uuid, .. } => Some(*event_uuid),
                    Action::Reject { event_uuid, .. } => *event_uuid,
                },
                status: 400,
                body: detail(refusal_text(&e)),
            },
            ..cmd
        };
        let single = [(refused, source)];
        match self.apply_retrying(&single, shutdown).await? {
            Ok(mut o) => o.pop(),
            Err(e) => {
                // Even the rejection cannot be stored: answer without storing it.
                tracing::error!(error = %e, "could not store a rejection");
                let [(cmd, _)] = single;
                let reply = crate::reply::Reply {
                    request_id: cmd.request_id,
                    event_uuid: None,
                    status: 400,
                    version: None,
                    body: detail(refusal_text(&e)),
                };
                Some(Outcome {
                    status: 400,
                    reply: Arc::new(reply.to_bytes()),
                    kind: OutcomeKind::New,
                })
            }
        }
    }

    /// `None`: shutdown while waiting; `Some(Err)`: refused data (never a transient error).
    async fn apply_retrying(
        &self,
        commands: &[(Command, Source)],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Result<Vec<Outcome>, StoreError>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = std::time::Instant::now();
            let wait = match store::apply_batch(
                &self.pool,
                commands,
                self.cfg.auth_mode,
                Utc::now(),
            )
            .await
            {
                Ok(o) => {
                    metrics::record_batch(commands.len(), started.elapsed());
                    self.health.database_ok.store(true, Ordering::Relaxed);
                    return Some(Ok(o));
                }
                Err(e @ StoreError::Conflict(_)) => {
                    metrics::record_db_error("conflict");
                    tracing::info!(error = %e, "concurrent writer; retrying the batch");
                    Duration::from_millis(10)
                }
                Err(
                    e @ (StoreError::Unavailable(_) | StoreError::Url(_) | StoreError::Migrate(_)),
                ) => {
                    metrics::record_db_error("unavailable");
                    self.health.database_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; retrying the batch");
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    b
                }
                Err(e) => {
                    metrics::record_db_error("refused");
                    return Some(Err(e));
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Shutdown while the database is away: leave the batch uncommitted; it is
                // redelivered after the restart.
                _ = shutdown.wait_for(|s| *s) => return None,
            }
        }
    }

    fn store_offsets(&self, batch: &[Incoming]) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for m in batch {
            let e = next.entry((&m.topic, m.partition)).or_insert(0);
            *e = (*e).max(m.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "bad offset");
            }
        }
        // Fails for partitions revoked meanwhile; their new owner re-reads them and is
        // answered from the stored replies.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::info!(error = %e, "could not store offsets (partition revoked?)");
        }
        // Commit now rather than at the next auto-commit, so that a crash redelivers at most
        // the batch in hand. Asynchronous: the next batch does not wait for it.
        match self.consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) => {}
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => tracing::info!(error = %e, "commit failed; the auto-commit will retry"),
        }
    }
}

fn refusal_text(e: &StoreError) -> String {
    let inner = match e {
        StoreError::Refused(sqlx::Error::Database(db)) => db.message().to_string(),
        other => other.to_string(),
    };
    format!("The database cannot store this command: {inner}")
}

/// The records a batch publishes: one reply per command, plus a dead letter for each record
/// that could not be decoded, the first time it is handled. A `reply-to` header is honoured
/// when the allow-list names its topic.
fn outgoing(
    cfg: &Config,
    batch: &[Incoming],
    commands: &[(Command, Source)],
    outcomes: &[Outcome],
    traces: &[Option<trace::Continued>],
) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(batch.len());
    for (((m, (c, _)), o), t) in batch.iter().zip(commands).zip(outcomes).zip(traces) {
        let mut headers = vec![("request-id".to_string(), c.request_id.clone().into_bytes())];
        if let Some(v) = m.header("correlation-id") {
            headers.push(("correlation-id".to_string(), v.to_vec()));
        }
        if let Some(t) = t {
            headers.push(("traceparent".to_string(), t.header.clone().into_bytes()));
        }
        let topic = m.header("reply-to").and_then(|t| {
            let t = std::str::from_utf8(t).ok()?;
            if cfg.reply_to_allowed(t) {
                Some(t.to_string())
            } else {
                metrics::record_reply_to_refused();
                None
            }
        });
        out.push(Outgoing {
            destination: Destination::Reply,
            topic,
            key: c.reply_key.clone(),
            value: o.reply.clone(),
            headers,
        });
        if let (Some(reason), OutcomeKind::New) = (&c.dead_letter, o.kind) {
            // The command's own headers travel along, except its credentials.
            let mut headers: Vec<(String, Vec<u8>)> = m
                .headers
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                .collect();
            headers.push(("dlq-reason".into(), reason.clone().into_bytes()));
            headers.push(("dlq-status".into(), o.status.to_string().into_bytes()));
            headers.push(("dlq-source-topic".into(), m.topic.clone().into_bytes()));
            headers.push((
                "dlq-source-partition".into(),
                m.partition.to_string().into_bytes(),
            ));
            headers.push((
                "dlq-source-offset".into(),
                m.offset.to_string().into_bytes(),
            ));
            headers.push(("request-id".into(), c.request_id.clone().into_bytes()));
            out.push(Outgoing {
                destination: Destination::DeadLetter,
                topic: None,
                key: m.key.clone(),
                value: Arc::new(m.payload.clone().unwrap_or_default()),
                headers,
            });
        }
    }
    out
}

fn to_incoming(m: &BorrowedMessage<'_>) -> Incoming {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Incoming {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}
