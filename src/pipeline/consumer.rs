//! The processing pipeline: fetch and decode, apply, publish, store offsets, each stage
//! working on a later batch while the next stage finishes an earlier one.
//!
//! - **Fetch** (one thread of its own): polls the consumer, decodes each record into a command
//!   and hands it to the lane of its partition. Records are admitted against a byte budget
//!   ([`Budget`]), released when their batch is finished, so memory in flight is bounded by the
//!   processor and not by the consumer's prefetch.
//! - **Lanes** (`APPLY_CONCURRENCY` tasks, partition `p` in lane `p mod n`): each takes what
//!   its queue holds (natural batching, up to `MAX_BATCH` commands and `MAX_BATCH_BYTES`),
//!   applies it on its own connection ([`store::apply_batch`]), and hands the replies to the
//!   producer in order, without waiting for their acknowledgements.
//! - **Ackers** (one per lane): wait for a batch's acknowledgements, in the lane's order, then
//!   record its metrics and store its offsets.
//!
//! Invariants:
//! - One writer per partition: a partition's commands all go through one lane, which applies
//!   its batches one after the other in offset order; so per-partition order of effects holds.
//! - A lane hands its batches' replies to the idempotent producer in that same order, so the
//!   replies of one event leave in order too (a reply the producer gives up on is sent again
//!   after later ones; that takes a broker outage longer than `message.timeout.ms`).
//! - An offset is stored (and so committed) only after the batch holding the command has
//!   committed in PostgreSQL and every reply of it has been acknowledged; an acker finishes its
//!   lane's batches in order, so stored offsets only move forward over answered commands. A
//!   crash anywhere before that redelivers the command, and its stored reply answers it again.
//! - Partitions being revoked are drained first: the rebalance callback waits (up to a bound)
//!   until every fetched record is finished and commits, so their next owner starts after the
//!   last answered command. Anything still in flight past the bound is fenced by the database
//!   (see [`store::apply_batch`]).
//! - Assignment is incremental under both group protocols (`KAFKA_GROUP_PROTOCOL`: classic with
//!   the cooperative-sticky assignor, or consumer): librdkafka reports the rebalance protocol
//!   as cooperative, so rdkafka's `ConsumerContext::rebalance` hands a revocation to
//!   `incremental_unassign` and an assignment to `incremental_assign`. A revocation names only
//!   the partitions that leave; the others stay assigned, keep their fetch positions and
//!   their records in the lanes, and are never re-read. The drain waits for every record in
//!   flight, a superset of the leaving partitions' records, so the rule above holds for a
//!   partial revocation too. A lost assignment (the member's session expired, or the broker
//!   fenced it) is drained but not committed; its records are answered and fenced like a
//!   zombie's.
//! - A database that is down is retried with back-off; data the database refuses is isolated to
//!   its command, which gets a 400, so a partition never stalls.
//! - Conflicts with concurrent writers (a zombie: a previous owner of a partition still applying
//!   the batch it held when the group moved the partition) are retried at most
//!   [`CONFLICT_ATTEMPTS`] times per batch, with jittered exponential back-off; then the batch's
//!   commands are applied one by one, and a command that still conflicts is not applied and gets a
//!   stored 409 ([`KEPT_CONFLICTING`]), so a partition never stalls on a fight between writers.
//!   A zombie's late write cannot double anything: it is fenced (see [`store::apply_batch`]) and
//!   decided again on current rows, where a request id the new owner handled gets its stored
//!   reply.
//! - On shutdown, fetching stops, each lane finishes the batch in hand (records it had not
//!   started are left for redelivery), the ackers finish what was published, and the stored
//!   offsets are committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::{Config, ConfigError};
use crate::domain::command::{self, Action, Command, Incoming};
use crate::domain::decide::{unstored, Outcome, OutcomeKind, Source};
use crate::domain::reply::{detail, Destination, Outgoing, MAX_ECHOED_BYTES};
use crate::metrics;
use crate::pipeline::kafka::{self, Enqueued, Publisher};
use crate::pipeline::trace;
use crate::store::{self, StoreError};

/// What `/healthz` and `/readyz` report; written by the processor and the reply producer.
#[derive(Debug)]
pub struct Health {
    pub migrated: AtomicBool,
    pub subscribed: AtomicBool,
    pub database_ok: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    /// The reply producer reaches a broker (false after "all brokers down", true again once
    /// its statistics show a broker up).
    pub producer_connected: AtomicBool,
    /// The reply producer hit a fatal error (the idempotent producer cannot go on): nothing
    /// more can be answered until the process restarts.
    pub producer_fatal: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            migrated: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            database_ok: AtomicBool::new(false),
            assigned_partitions: AtomicUsize::new(0),
            producer_connected: AtomicBool::new(true),
            producer_fatal: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Migrations ran, the consumer is subscribed, and the reply producer is not broken for
    /// good.
    pub fn is_live(&self) -> bool {
        self.migrated.load(Ordering::Relaxed)
            && self.subscribed.load(Ordering::Relaxed)
            && !self.producer_fatal.load(Ordering::Relaxed)
    }
    /// Live, the database answers, partitions are assigned, and the reply producer reaches a
    /// broker.
    pub fn is_ready(&self) -> bool {
        self.is_live()
            && self.database_ok.load(Ordering::Relaxed)
            && self.assigned_partitions.load(Ordering::Relaxed) > 0
            && self.producer_connected.load(Ordering::Relaxed)
    }
}

/// The bytes and records fetched but not finished yet (answered and offsets stored, or
/// dropped at shutdown). The fetch thread waits while the budget is spent; the rebalance
/// callback waits until nothing is in flight.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    state: Mutex<InFlight>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct InFlight {
    bytes: usize,
    records: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            state: Mutex::new(InFlight::default()),
            changed: Condvar::new(),
        }
    }

    /// Blocks until `bytes` fit (a record larger than the whole budget fits when nothing else
    /// is in flight); false when `stop` turned true first.
    fn acquire(&self, bytes: usize, stop: &AtomicBool) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while s.records > 0 && s.bytes + bytes > self.limit {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            s = match self.changed.wait_timeout(s, Duration::from_millis(100)) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        s.bytes += bytes;
        s.records += 1;
        true
    }

    fn release(&self, bytes: usize, records: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.bytes = s.bytes.saturating_sub(bytes);
            s.records = s.records.saturating_sub(records);
        }
        self.changed.notify_all();
    }

    /// Blocks until nothing is in flight, or `bound` passed; true when idle.
    fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while s.records > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = match self.changed.wait_timeout(s, deadline - now) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        true
    }
}

/// What a record costs against the [`Budget`]: its bytes, plus a fixed share for what its
/// decoded command holds besides them.
fn cost(m: &Incoming) -> usize {
    const OVERHEAD: usize = 1024;
    let headers: usize = m
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    // The value is held as bytes and, decoded, about as much again.
    2 * m.payload.as_ref().map_or(0, Vec::len)
        + m.key.as_ref().map_or(0, Vec::len)
        + headers
        + OVERHEAD
}

/// Consumer callbacks: rebalances drain what is in flight, and are logged, counted and
/// reflected in [`Health`].
#[derive(Debug)]
pub struct ProcessorContext {
    health: Arc<Health>,
    budget: Arc<Budget>,
    drain_bound: Duration,
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
    /// Before partitions go, waits until every fetched record is finished (runs on the fetch
    /// thread, so nothing new is fetched meanwhile), then commits what is stored, so that the
    /// next owners start after the last answered command.
    ///
    /// Under incremental assignment (the cooperative-sticky assignor, and the consumer
    /// protocol) `tpl` holds only the partitions that leave; the others stay, with their fetch
    /// positions. Waiting for every record in flight covers the leaving partitions' records
    /// (and, needlessly but briefly, the staying ones'), and the commit covers every stored
    /// offset. A lost assignment (this member was fenced, say after a freeze) is not committed:
    /// the group no longer takes this member's commits, and the partitions' new owners answer
    /// what was redelivered from the stored replies.
    fn pre_rebalance(&self, consumer: &BaseConsumer<ProcessorContext>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            let drained = self.budget.wait_idle(self.drain_bound);
            if consumer.assignment_lost() {
                tracing::warn!(
                    partitions = tpl.count(),
                    drained,
                    "partitions lost (this member's session expired or it was fenced); not committing"
                );
                return;
            }
            tracing::info!(partitions = tpl.count(), drained, "partitions revoked");
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
                Err(e) => tracing::info!(error = %e, "commit before revocation failed"),
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<ProcessorContext>, rebalance: &Rebalance<'_>) {
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

/// The command consumer with its context.
pub type CommandConsumer = BaseConsumer<ProcessorContext>;

/// Why the command consumer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The configuration contradicts itself ([`Config::group_settings`]).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused the configuration or could not start the client.
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Creates the consumer: offsets are stored by hand after each batch and auto-committed. The
/// group protocol is `KAFKA_GROUP_PROTOCOL`'s ([`Config::group_settings`]); under `consumer`,
/// the classic-only properties of `KAFKA_PROPERTIES` are left out, each with a warning.
pub fn create_consumer(
    cfg: &Config,
    health: Arc<Health>,
    budget: Arc<Budget>,
) -> Result<CommandConsumer, ConsumerError> {
    /// One fetch response at most (librdkafka still takes a single larger record whole).
    const FETCH_MAX_BYTES: usize = 4 * 1024 * 1024;
    let group = cfg.group_settings()?;
    let prefetch_kib = (cfg.max_in_flight_bytes / 1024).min(8192);
    let mut c = kafka::client_config(cfg);
    for (k, v) in &group.set {
        c.set(*k, *v);
    }
    c.set("group.id", &cfg.kafka_group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // Bound what librdkafka holds: prefetched records (default 64 MiB) and the buffer of
        // one fetch response (default 50 MiB; it still grows to take a single larger record).
        // The processor's own budget (MAX_IN_FLIGHT_BYTES) bounds what is fetched and not yet
        // answered.
        .set("queued.max.messages.kbytes", prefetch_kib.to_string())
        .set("fetch.max.bytes", FETCH_MAX_BYTES.to_string())
        // How long a fetch may wait at the broker for data. Kafka answers as soon as data
        // arrives; some Kafka-protocol brokers wait the whole time, which then bounds the
        // latency of a quiet partition. Overridable with KAFKA_PROPERTIES.
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    for (property, instead) in &group.left_out {
        c.remove(property);
        tracing::warn!(
            property = %property,
            instead = %instead,
            "KAFKA_PROPERTIES sets a property of the classic group protocol, which the consumer protocol (KAFKA_GROUP_PROTOCOL=consumer) does not take; left out of the consumer"
        );
    }
    // What librdkafka buffers ahead is part of the processor's memory too: the operator's
    // properties may lower these bounds but not raise them past the in-flight budget.
    // (librdkafka wants a fetch to hold at least one record of `message.max.bytes`.)
    let record_max = c
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_000_000);
    for (key, most) in [
        ("queued.max.messages.kbytes", prefetch_kib),
        ("fetch.max.bytes", FETCH_MAX_BYTES.max(record_max)),
    ] {
        let asked = c.get(key).and_then(|v| v.parse::<usize>().ok());
        if asked.is_some_and(|a| a > most) {
            tracing::warn!(
                property = key,
                asked,
                kept = most,
                "KAFKA_PROPERTIES asks for more prefetch than MAX_IN_FLIGHT_BYTES allows; kept within it"
            );
            c.set(key, most.to_string());
        }
    }
    Ok(c.create_with_context(ProcessorContext {
        health,
        budget,
        drain_bound: cfg.shutdown_timeout().min(Duration::from_secs(10)),
    })?)
}

/// The processor: owns the consumer, the publisher and the pool.
pub struct Processor {
    pub consumer: CommandConsumer,
    pub budget: Arc<Budget>,
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

/// A record, decoded, on its way through a lane.
struct Fetched {
    incoming: Incoming,
    command: Command,
    cost: usize,
    fetched_at: Instant,
}

/// A batch applied in PostgreSQL whose records were handed to the producer.
struct Dispatched {
    batch: Vec<Fetched>,
    outcomes: Vec<Outcome>,
    traces: Vec<Option<trace::Continued>>,
    enqueued: Enqueued,
    published_at: Instant,
}

/// What the lanes and ackers share.
struct Shared {
    consumer: Arc<CommandConsumer>,
    budget: Arc<Budget>,
    publisher: Publisher,
    pool: PgPool,
    cfg: Config,
    health: Arc<Health>,
}

impl Processor {
    /// Subscribes and runs until `shutdown` turns true; then finishes the batches in hand,
    /// commits the stored offsets and returns.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> KafkaResult<()> {
        self.consumer.subscribe(&[&self.cfg.command_topic])?;
        self.health.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(topic = %self.cfg.command_topic, group = %self.cfg.kafka_group_id, "subscribed");
        let shared = Arc::new(Shared {
            consumer: Arc::new(self.consumer),
            budget: self.budget,
            publisher: self.publisher,
            pool: self.pool,
            cfg: self.cfg,
            health: self.health,
        });
        let lanes = shared.cfg.apply_concurrency as usize;
        let mut senders = Vec::with_capacity(lanes);
        let mut tasks = Vec::with_capacity(2 * lanes);
        for lane in 0..lanes {
            let (tx, rx) = mpsc::unbounded_channel();
            let (ack_tx, ack_rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(
                run_lane(shared.clone(), rx, ack_tx, shutdown.clone())
                    .instrument(tracing::info_span!("lane", lane)),
            ));
            tasks.push(tokio::spawn(run_acker(
                shared.clone(),
                ack_rx,
                shutdown.clone(),
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let fetcher = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fetch".into())
                // Decoding recurses into nested values as deep as the parser accepts.
                .stack_size(crate::drf::pyjson::STACK_BYTES)
                .spawn(move || fetch(&shared, senders, &stop))
                .map_err(|e| {
                    tracing::error!(error = %e, "could not start the fetch thread");
                    rdkafka::error::KafkaError::Canceled
                })?
        };
        // The fetch thread ends only when asked to, or when a lane is gone (a task panicked):
        // then the lanes and ackers drain what they hold and the processor stops with an error
        // rather than stall.
        let mut fetched = tokio::task::spawn_blocking(move || fetcher.join());
        let mut wait = shutdown.clone();
        let mut failed = tokio::select! {
            _ = wait.wait_for(|s| *s) => false,
            _ = &mut fetched => true,
        };
        stop.store(true, Ordering::Relaxed);
        if !failed {
            let _ = fetched.await;
        }
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a pipeline task failed");
                failed = true;
            }
        }
        tracing::info!("shutting down: committing stored offsets");
        shared.publisher.flush(Duration::from_secs(5));
        match shared.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last auto-commit.
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; the last batch will be redelivered and answered from the stored replies")
            }
        }
        if failed {
            tracing::error!("a pipeline stage stopped without being asked to; the processor stops");
            return Err(rdkafka::error::KafkaError::Canceled);
        }
        Ok(())
    }
}

/// The fetch thread: polls, admits each record against the budget, decodes it, and hands it
/// to its partition's lane. Returns when `stop` turns true, or when a lane is gone. (Rebalance callbacks run here,
/// inside `poll`.)
fn fetch(shared: &Shared, lanes: Vec<mpsc::UnboundedSender<Fetched>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let incoming = match shared.consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(m)) => to_incoming(&m),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let cost = cost(&incoming);
        if !shared.budget.acquire(cost, stop) {
            break;
        }
        let fetched_at = Instant::now();
        let command = command::decode(
            &incoming,
            shared.cfg.max_message_bytes,
            shared.cfg.auth_mode,
        );
        let lane = usize::try_from(incoming.partition).unwrap_or(0) % lanes.len();
        let f = Fetched {
            incoming,
            command,
            cost,
            fetched_at,
        };
        if let Err(e) = lanes[lane].send(f) {
            shared.budget.release(e.0.cost, 1);
            break;
        }
    }
}

/// A lane: takes what its queue holds, applies it, hands the replies to the producer, passes
/// the batch to its acker. On shutdown, finishes the batch in hand and releases the rest.
async fn run_lane(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Fetched>,
    acks: mpsc::UnboundedSender<Dispatched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_batch = shared.cfg.max_batch as usize;
    let max_bytes = shared.cfg.max_batch_bytes;
    let mut behind = false;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        let mut bytes = first.cost;
        let mut batch = vec![first];
        // Natural batching: what is already here, and a linger only when the lane is behind.
        let linger_until = tokio::time::Instant::now() + shared.cfg.batch_linger();
        while batch.len() < max_batch && bytes < max_bytes {
            match rx.try_recv() {
                Ok(f) => {
                    bytes += f.cost;
                    batch.push(f);
                }
                Err(_) if behind => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(f)) => {
                        bytes += f.cost;
                        batch.push(f);
                    }
                    _ => break,
                },
                Err(_) => break,
            }
        }
        behind = !rx.is_empty();
        let started = Instant::now();
        metrics::record_stage("queue", started - batch[0].fetched_at);
        let span = tracing::debug_span!("batch", size = batch.len());
        let Some(outcomes) = persist_batch(&shared, &batch, &mut shutdown)
            .instrument(span)
            .await
        else {
            // Shutdown while the database was away: nothing of this batch is stored.
            release(&shared, &batch);
            break;
        };
        metrics::record_stage("apply", started.elapsed());
        let traces: Vec<Option<trace::Continued>> = batch
            .iter()
            .map(|f| {
                f.incoming
                    .header("traceparent")
                    .and_then(trace::continue_from)
            })
            .collect();
        let records = outgoing(&shared.cfg, &batch, &outcomes, &traces);
        let enqueued = shared.publisher.enqueue(records).await;
        let d = Dispatched {
            batch,
            outcomes,
            traces,
            enqueued,
            published_at: Instant::now(),
        };
        if let Err(e) = acks.send(d) {
            release(&shared, &e.0.batch);
            break;
        }
    }
    // Records fetched but not started: left uncommitted, redelivered after the restart.
    rx.close();
    while let Ok(f) = rx.try_recv() {
        shared.budget.release(f.cost, 1);
    }
}

fn release(shared: &Shared, batch: &[Fetched]) {
    let bytes = batch.iter().map(|f| f.cost).sum();
    shared.budget.release(bytes, batch.len());
}

/// An acker: finishes its lane's batches in order once their records are acknowledged.
async fn run_acker(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Dispatched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stored = true;
    while let Some(d) = rx.recv().await {
        if !stored {
            // An earlier batch of this lane was not acknowledged before shutdown: later ones
            // must not store offsets past it.
            release(&shared, &d.batch);
            continue;
        }
        let Dispatched {
            batch,
            outcomes,
            traces,
            enqueued,
            published_at,
        } = d;
        let published = shared.publisher.settle(enqueued, &mut shutdown).await;
        metrics::record_stage("publish", published_at.elapsed());
        stored = finish(&shared, &batch, &outcomes, &traces, published);
        release(&shared, &batch);
    }
}

/// Records a published batch's metrics and logs and stores its offsets; a batch whose records
/// were not all acknowledged (shutdown) stores nothing.
fn finish(
    shared: &Shared,
    batch: &[Fetched],
    outcomes: &[Outcome],
    traces: &[Option<trace::Continued>],
    published: bool,
) -> bool {
    if !published {
        tracing::warn!("shutdown before every reply was acknowledged; offsets not stored");
        return false;
    }
    let now = Utc::now();
    for ((f, o), t) in batch.iter().zip(outcomes).zip(traces) {
        let (m, c) = (&f.incoming, &f.command);
        let latency = m.timestamp_ms.and_then(|t| {
            (now.timestamp_millis() - t)
                .try_into()
                .ok()
                .map(Duration::from_millis)
        });
        metrics::record_command(o.status, o.kind, latency);
        if let (Some(reason), OutcomeKind::New) = (o.refused, o.kind) {
            metrics::record_refused(reason);
        }
        let span = tracing::info_span!(
            "command",
            request_id = %c.request_id,
            event_uuid = c.action.event_uuid().map(tracing::field::display),
            partition = m.partition,
            offset = m.offset,
            trace_id = t.as_ref().map(|t| tracing::field::display(&t.trace_id)),
            span_id = t.as_ref().map(|t| tracing::field::display(&t.span_id)),
        );
        span.in_scope(|| {
            tracing::debug!(status = o.status, outcome = ?o.kind, "answered");
        });
    }
    store_offsets(&shared.consumer, batch);
    true
}

/// Most attempts at one batch, and then at each of its commands alone, while concurrent writers
/// keep conflicting with it (see `persist_retrying`).
pub const CONFLICT_ATTEMPTS: u32 = 8;
/// The first wait after a conflict; it doubles with each further conflict, up to
/// [`CONFLICT_BACKOFF_MAX`], and is jittered.
const CONFLICT_BACKOFF: Duration = Duration::from_millis(10);
const CONFLICT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The `detail` of the 409 a command gets when concurrent writers kept changing its event for
/// [`CONFLICT_ATTEMPTS`] attempts: it was not applied, and its request id keeps this answer.
pub const KEPT_CONFLICTING: &str = "Concurrent writers kept changing this event while the command was being applied; it was not applied. Send it again with a new request_id.";

/// Applies the batch, retrying while the database is unavailable or a concurrent writer
/// conflicts; if the database refuses the data, or the batch still conflicts after
/// [`CONFLICT_ATTEMPTS`], applies the commands one by one so that only the offending command is
/// answered with an error (400 for refused data, 409 [`KEPT_CONFLICTING`] for a command that
/// keeps conflicting), and the others are applied. `None`: shutdown came first.
async fn persist_batch(
    shared: &Shared,
    batch: &[Fetched],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Vec<Outcome>> {
    let mut commands: Vec<(Command, Source)> = batch
        .iter()
        .map(|f| {
            let s = Source {
                topic: f.incoming.topic.clone(),
                partition: f.incoming.partition,
                offset: f.incoming.offset,
            };
            (f.command.clone(), s)
        })
        .collect();
    match persist_retrying(shared, &commands, shutdown).await? {
        Ok(o) => Some(o),
        Err(e) if commands.len() == 1 => {
            let c = commands.pop()?;
            answer_unapplied(shared, c, &e, shutdown)
                .await
                .map(|o| vec![o])
        }
        Err(e) => {
            if matches!(e, StoreError::Conflict(_)) {
                metrics::record_kept_conflicting("batch");
            }
            tracing::warn!(error = %e, size = commands.len(), "batch not applied; applying its commands one by one");
            let mut out = Vec::with_capacity(commands.len());
            for c in commands {
                out.push(persist_alone(shared, c, shutdown).await?);
            }
            Some(out)
        }
    }
}

/// Applies one command; if it is refused or keeps conflicting, answers it with an error
/// ([`answer_unapplied`]).
async fn persist_alone(
    shared: &Shared,
    (cmd, source): (Command, Source),
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let single = [(cmd, source)];
    let e = match persist_retrying(shared, &single, shutdown).await? {
        Ok(mut o) => return o.pop(),
        Err(e) => e,
    };
    let [c] = single;
    answer_unapplied(shared, c, &e, shutdown).await
}

/// Answers a command that could not be applied, without applying it: a 400 when the database
/// refused its data, a 409 ([`KEPT_CONFLICTING`]) when it still conflicted after
/// [`CONFLICT_ATTEMPTS`]. The answer is stored with its request id like any other (it writes no
/// event row, so no concurrent writer of the event can conflict with it), so a redelivery gets
/// the same bytes and never a late apply; only if even that cannot be stored is it answered
/// unstored.
async fn answer_unapplied(
    shared: &Shared,
    (cmd, source): (Command, Source),
    e: &StoreError,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let (status, text) = match e {
        StoreError::Conflict(_) => {
            metrics::record_kept_conflicting("command");
            tracing::warn!(request_id = %cmd.request_id, error = %e, attempts = CONFLICT_ATTEMPTS, "the event kept changing under concurrent writers; the command is not applied and answered 409");
            (409, KEPT_CONFLICTING.to_string())
        }
        _ => {
            tracing::warn!(request_id = %cmd.request_id, error = %e, "the database refused a command; answering 400");
            (400, refusal_text(e))
        }
    };
    let event_uuid = cmd.action.event_uuid();
    let rejected = Command {
        action: Action::Reject {
            event_uuid,
            status,
            body: detail(text.clone()),
        },
        ..cmd
    };
    let single = [(rejected, source)];
    match persist_retrying(shared, &single, shutdown).await? {
        Ok(mut o) => o.pop(),
        Err(e) => {
            // Even the answer cannot be stored: answer without storing it.
            tracing::error!(error = %e, status, "could not store an error reply");
            let [(cmd, _)] = single;
            Some(unstored(&cmd, status, detail(text), OutcomeKind::New))
        }
    }
}

/// Applies `commands` as one batch, retrying what can pass:
/// - a database that is unavailable: for as long as it takes, with back-off (50 ms doubling to
///   5 s), until shutdown;
/// - a concurrent writer (a tripped fence that also conflicted on the locking path): at most
///   [`CONFLICT_ATTEMPTS`] attempts in all, waiting [`conflict_backoff`] between them; then the
///   conflict is returned, so that a command that keeps conflicting cannot stall its partition.
///
/// `None`: shutdown while waiting; `Some(Err)`: refused data, or a conflict after the bound
/// (never an unavailable database).
async fn persist_retrying(
    shared: &Shared,
    commands: &[(Command, Source)],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<Vec<Outcome>, StoreError>> {
    let mut backoff = Duration::from_millis(50);
    let mut conflicts = 0;
    loop {
        let started = Instant::now();
        let wait = match store::apply_batch(&shared.pool, commands, shared.cfg.rules(), Utc::now())
            .await
        {
            Ok(o) => {
                metrics::record_batch(commands.len(), started.elapsed());
                shared.health.database_ok.store(true, Ordering::Relaxed);
                return Some(Ok(o));
            }
            Err(e @ StoreError::Conflict(_)) => {
                metrics::record_db_error("conflict");
                shared.health.database_ok.store(true, Ordering::Relaxed);
                conflicts += 1;
                if conflicts >= CONFLICT_ATTEMPTS {
                    return Some(Err(e));
                }
                let wait = conflict_backoff(conflicts);
                tracing::debug!(error = %e, attempt = conflicts, retry_in = ?wait, "concurrent writer; retrying the batch");
                wait
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Url(_) | StoreError::Migrate(_))) => {
                metrics::record_db_error("unavailable");
                shared.health.database_ok.store(false, Ordering::Relaxed);
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

/// The wait after the `n`th conflict in a row (n >= 1): [`CONFLICT_BACKOFF`] doubled `n - 1`
/// times, at most [`CONFLICT_BACKOFF_MAX`], of which a random half is taken off ("equal
/// jitter"), so that writers that collided do not retry in step.
fn conflict_backoff(n: u32) -> Duration {
    use std::hash::BuildHasher;
    let full = CONFLICT_BACKOFF
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(CONFLICT_BACKOFF_MAX);
    let half = full / 2;
    // A fresh randomly keyed hasher per call: random enough for jitter, without a dependency.
    let r = std::collections::hash_map::RandomState::new().hash_one(n);
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(r % nanos.max(1))
}

fn store_offsets(consumer: &CommandConsumer, batch: &[Fetched]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for f in batch {
        let m = &f.incoming;
        let e = next.entry((&m.topic, m.partition)).or_insert(0);
        *e = (*e).max(m.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(error = %e, "bad offset");
        }
    }
    // Fails for partitions revoked meanwhile; their new owner re-reads them and is answered
    // from the stored replies.
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::info!(error = %e, "could not store offsets (partition revoked?)");
    }
    // Committed by the auto-commit (every `auto.commit.interval.ms`), on revocation and on
    // shutdown: one commit request per interval rather than one per batch, which a broker feels
    // at small batches. A crash redelivers what was answered since, from the stored replies.
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
    batch: &[Fetched],
    outcomes: &[Outcome],
    traces: &[Option<trace::Continued>],
) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(batch.len());
    for ((f, o), t) in batch.iter().zip(outcomes).zip(traces) {
        let (m, c) = (&f.incoming, &f.command);
        let mut headers = vec![("request-id".to_string(), c.request_id.clone().into_bytes())];
        if let Some(v) = m
            .header("correlation-id")
            .filter(|v| v.len() <= MAX_ECHOED_BYTES)
        {
            headers.push(("correlation-id".to_string(), v.to_vec()));
        }
        if let Some(t) = t {
            headers.push(("traceparent".to_string(), t.header.clone().into_bytes()));
        }
        // A 403 goes to the default reply topic only: whoever may write commands must not be
        // able to place a reply (with any request id) on a topic that others read.
        let reply_to = match o.kind {
            OutcomeKind::Forbidden => None,
            _ => m.header("reply-to"),
        };
        let topic = reply_to.and_then(|t| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupProtocol, CLASSIC_ONLY_PROPERTIES};

    /// A configuration whose bootstrap address has no broker (a port just freed): creating a
    /// consumer needs none.
    fn offline(protocol: GroupProtocol, properties: &[(&str, &str)]) -> Config {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut c = Config::defaults();
        c.kafka_bootstrap_servers = free.to_string();
        c.kafka_group_protocol = protocol;
        c.kafka_properties = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    fn create(c: &Config) -> Result<CommandConsumer, ConsumerError> {
        create_consumer(
            c,
            Arc::new(Health::default()),
            Arc::new(Budget::new(c.max_in_flight_bytes)),
        )
    }

    /// What the consumer protocol's handling rests on: librdkafka 2.12 refuses to create a
    /// consumer with `group.protocol=consumer` and any classic-only property set, even to its
    /// default value.
    #[test]
    fn librdkafka_refuses_classic_only_properties_under_the_consumer_protocol() {
        let c = offline(GroupProtocol::Consumer, &[]);
        for (property, value) in [
            ("session.timeout.ms", "45000"),
            ("heartbeat.interval.ms", "3000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("group.protocol.type", "consumer"),
        ] {
            assert!(CLASSIC_ONLY_PROPERTIES.iter().any(|(p, _)| *p == property));
            let refused = kafka::client_config(&c)
                .set("group.id", "g")
                .set("group.protocol", "consumer")
                .set(property, value)
                .create::<BaseConsumer>()
                .err()
                .unwrap_or_else(|| {
                    panic!("librdkafka took {property} under the consumer protocol")
                });
            assert!(
                refused
                    .to_string()
                    .contains("not supported for `group.protocol=consumer`"),
                "{property}: {refused}"
            );
        }
    }

    #[test]
    fn the_consumer_protocol_starts_with_classic_properties_in_kafka_properties() {
        let c = offline(
            GroupProtocol::Consumer,
            &[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
                ("partition.assignment.strategy", "range"),
                ("group.protocol.type", "consumer"),
            ],
        );
        create(&c).expect("the classic-only properties are left out");
        create(&offline(GroupProtocol::Consumer, &[])).expect("consumer protocol");
    }

    #[test]
    fn the_classic_protocol_takes_its_session_properties_and_an_operators_assignor() {
        let c = offline(
            GroupProtocol::Classic,
            &[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ],
        );
        create(&c).expect("classic protocol");
        // librdkafka refuses a mix of eager and cooperative assignors: the operator's choice
        // replaces the default rather than joining it.
        let c = offline(
            GroupProtocol::Classic,
            &[("partition.assignment.strategy", "range")],
        );
        create(&c).expect("the operator's assignor");
    }

    #[test]
    fn a_conflicting_group_protocol_property_is_a_configuration_error() {
        let c = offline(GroupProtocol::Classic, &[("group.protocol", "consumer")]);
        assert!(matches!(create(&c), Err(ConsumerError::Config(_))));
    }

    #[test]
    fn conflict_backoff_doubles_from_10_ms_is_capped_and_jittered_within_its_half() {
        for n in 1..=CONFLICT_ATTEMPTS + 20 {
            let full = (CONFLICT_BACKOFF * 2u32.pow(n.min(20) - 1)).min(CONFLICT_BACKOFF_MAX);
            for _ in 0..50 {
                let w = conflict_backoff(n);
                assert!(
                    w >= full / 2 && w < full,
                    "attempt {n}: {w:?} not in [{:?}, {full:?})",
                    full / 2
                );
            }
        }
        // Jittered: two writers that collided do not wait the same.
        let waits: std::collections::HashSet<Duration> =
            (0..20).map(|_| conflict_backoff(4)).collect();
        assert!(waits.len() > 1);
    }
}
