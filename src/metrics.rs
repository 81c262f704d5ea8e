//! Metrics: every name the processor exports, and the one function that records each happening.
//!
//! Names follow Prometheus conventions (`_total`, `_seconds`, base units). The recorder is
//! process-wide (the `metrics` crate allows one), installed once by [`install`]; `/metrics`
//! renders it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::command::Refusal;
use crate::domain::decide::OutcomeKind;
use crate::domain::reply::Destination;

pub const COMMANDS: &str = "event_updater_commands_total";
pub const COMMAND_LATENCY: &str = "event_updater_command_latency_seconds";
pub const BATCH_SIZE: &str = "event_updater_batch_size";
pub const DB_TRANSACTION: &str = "event_updater_db_transaction_seconds";
pub const DB_ERRORS: &str = "event_updater_db_errors_total";
pub const PUBLISHED: &str = "event_updater_records_published_total";
pub const PUBLISH_FAILED: &str = "event_updater_publish_failures_total";
pub const REBALANCES: &str = "event_updater_rebalances_total";
pub const ASSIGNED_PARTITIONS: &str = "event_updater_assigned_partitions";
pub const REPLY_TO_REFUSED: &str = "event_updater_reply_to_refused_total";
pub const CONSUMER_LAG: &str = "event_updater_consumer_lag";
pub const VERSION_CONFLICTS: &str = "event_updater_version_conflicts_total";
pub const DUPLICATES: &str = "event_updater_duplicates_total";
pub const STAGE: &str = "event_updater_stage_seconds";
pub const REFUSED: &str = "event_updater_commands_refused_total";
pub const PRODUCER_FATAL: &str = "event_updater_producer_fatal_errors_total";
pub const KEPT_CONFLICTING: &str = "event_updater_kept_conflicting_total";
pub const TABLE_BYTES: &str = "event_updater_table_bytes";
pub const TABLE_ROWS: &str = "event_updater_table_rows";
pub const REPLIES_PRUNED: &str = "event_updater_replies_pruned_total";
pub const DB_FAILED_COMMANDS: &str = "event_updater_db_failed_commands_total";
pub const TOPIC_UNUSABLE: &str = "event_updater_topic_unusable";
pub const DEAD_LETTERS_DROPPED: &str = "event_updater_dead_letters_dropped_total";
pub const FEED_LAG_CHANGES: &str = "event_updater_feed_lag_changes";
pub const FEED_LAG_SECONDS: &str = "event_updater_feed_lag_seconds";

static HANDLE: OnceLock<Result<PrometheusHandle, InstallError>> = OnceLock::new();

/// Why the Prometheus recorder could not be installed (the same error on every later call).
#[derive(Debug, Clone, thiserror::Error)]
pub enum InstallError {
    /// The histograms' buckets were refused.
    #[error("the histogram buckets are refused")]
    Buckets(#[source] Arc<BuildError>),
    /// The recorder could not be made the process's (another one is installed).
    #[error("the recorder cannot be made the process-wide one")]
    Recorder(#[source] Arc<BuildError>),
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03,
                        0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BATCH_SIZE.into()),
                        &[
                            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
                        ],
                    )
                })
                .map_err(|e| InstallError::Buckets(Arc::new(e)))?
                .install_recorder()
                .map_err(|e| InstallError::Recorder(Arc::new(e)))
        })
        .clone()
}

/// One command answered: its status, whether it was new, and how long since it was produced.
pub fn record_command(status: u16, kind: OutcomeKind, latency: Option<Duration>) {
    record_commands(std::iter::once((status, kind, latency, None)));
}

/// A batch's commands answered: for each, its status, whether it was new, how long since it
/// was produced, and the envelope rule a new one broke (see [`record_refused`]). The counters
/// are looked up once per (status, outcome) of the batch, not once per command.
pub fn record_commands(
    answered: impl Iterator<Item = (u16, OutcomeKind, Option<Duration>, Option<Refusal>)>,
) {
    let mut counts: Vec<((u16, OutcomeKind), u64)> = Vec::new();
    let latency = histogram!(COMMAND_LATENCY);
    for (status, kind, l, refused) in answered {
        match counts.iter_mut().find(|(k, _)| *k == (status, kind)) {
            Some((_, n)) => *n += 1,
            None => counts.push(((status, kind), 1)),
        }
        if let Some(l) = l {
            latency.record(l.as_secs_f64());
        }
        if let Some(reason) = refused {
            record_refused(reason);
        }
    }
    for ((status, kind), n) in counts {
        let outcome = match kind {
            OutcomeKind::New => "new",
            OutcomeKind::Duplicate => "duplicate",
            OutcomeKind::ReusedRequestId => "reused_request_id",
            OutcomeKind::Forbidden => "forbidden",
            OutcomeKind::AlreadyApplied => "already_applied",
        };
        counter!(COMMANDS, "status" => status.to_string(), "outcome" => outcome).increment(n);
        match (status, kind) {
            (409, OutcomeKind::New) => counter!(VERSION_CONFLICTS).increment(n),
            (_, OutcomeKind::Duplicate) => counter!(DUPLICATES).increment(n),
            _ => {}
        }
    }
}

/// A command answered with a 400 because it broke an envelope rule, counted under the rule's
/// label ([`Refusal::as_str`]).
pub fn record_refused(reason: Refusal) {
    counter!(REFUSED, "reason" => reason.as_str()).increment(1);
}

/// The reply producer failed for good (librdkafka's fatal error).
pub fn record_producer_fatal() {
    counter!(PRODUCER_FATAL).increment(1);
}

/// One batch committed to PostgreSQL: its size, the time of its attempt, and that time's
/// parts (read, decide, write: see [`Stage`]).
pub fn record_batch(size: usize, transaction: Duration, parts: Option<BatchParts>) {
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(DB_TRANSACTION).record(transaction.as_secs_f64());
    if let Some(p) = parts {
        record_stage(Stage::Read, p.read);
        record_stage(Stage::Decide, p.decide);
        record_stage(Stage::Write, p.write);
    }
}

/// The parts of one attempt at a batch in the database (see [`Stage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchParts {
    pub read: Duration,
    pub decide: Duration,
    pub write: Duration,
}

/// A stage of the pipeline a batch passes through, in order; the `stage` label of
/// [`STAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its first record fetched to the batch started (waiting for its lane).
    Queue,
    /// The database, retries included: the sum of `read`, `decide` and `write` when the first
    /// attempt passes.
    Apply,
    /// Reading what the batch needs (applied offsets, stored replies, grants, views, sizes).
    Read,
    /// Deciding the batch in memory.
    Decide,
    /// Writing its effects, the commit included (and reading back what the feed needs).
    Write,
    /// Its replies (and dead letters) handed to the producer to acknowledged.
    Publish,
    /// Its change feed records handed to the producer to acknowledged (they linger longer
    /// than replies); then its offsets are stored.
    Feed,
}

impl Stage {
    /// Every stage, in the order a batch passes them.
    pub const ALL: [Stage; 7] = [
        Stage::Queue,
        Stage::Apply,
        Stage::Read,
        Stage::Decide,
        Stage::Write,
        Stage::Publish,
        Stage::Feed,
    ];

    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Apply => "apply",
            Stage::Read => "read",
            Stage::Decide => "decide",
            Stage::Write => "write",
            Stage::Publish => "publish",
            Stage::Feed => "feed",
        }
    }
}

/// Time a batch spent in one [`Stage`] of the pipeline.
pub fn record_stage(stage: Stage, d: Duration) {
    histogram!(STAGE, "stage" => stage.as_str()).record(d.as_secs_f64());
}

/// What became of a failed transaction: the `kind` label of [`DB_ERRORS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The database is unreachable (or the pool or its URL is): retried without bound.
    Unavailable,
    /// A concurrent writer got there first: retried a bounded number of times.
    Conflict,
    /// The statement failed (a timeout, a missing function, corrupt data): retried a bounded
    /// number of times.
    Failed,
    /// The database refused the data: its command is answered 400.
    Refused,
}

impl DbErrorKind {
    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DbErrorKind::Unavailable => "unavailable",
            DbErrorKind::Conflict => "conflict",
            DbErrorKind::Failed => "failed",
            DbErrorKind::Refused => "refused",
        }
    }
}

/// A transaction failed, as `kind` says.
pub fn record_db_error(kind: DbErrorKind) {
    counter!(DB_ERRORS, "kind" => kind.as_str()).increment(1);
}

/// What kept conflicting `CONFLICT_ATTEMPTS` times: the `scope` label of [`KEPT_CONFLICTING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictScope {
    /// A batch: its commands are then applied one by one.
    Batch,
    /// A command alone: it was not applied and got a 409.
    Command,
}

impl ConflictScope {
    /// The `scope` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictScope::Batch => "batch",
            ConflictScope::Command => "command",
        }
    }
}

/// Concurrent writers conflicted with a batch or a command `CONFLICT_ATTEMPTS` times.
pub fn record_kept_conflicting(scope: ConflictScope) {
    counter!(KEPT_CONFLICTING, "scope" => scope.as_str()).increment(1);
}

/// The database kept failing a command alone: it was not applied, answered 500 and
/// dead-lettered. `sqlstate` is PostgreSQL's error code (`none` where there was none).
pub fn record_db_failed_command(sqlstate: Option<&str>) {
    counter!(DB_FAILED_COMMANDS, "sqlstate" => sqlstate.unwrap_or("none").to_string()).increment(1);
}

/// `n` records to `d` acknowledged by the broker.
pub fn record_published(d: Destination, n: u64) {
    counter!(PUBLISHED, "topic" => topic_label(d)).increment(n);
}

pub fn record_publish_failed(d: Destination, permanent: bool) {
    counter!(PUBLISH_FAILED, "topic" => topic_label(d), "permanent" => permanent.to_string())
        .increment(1);
}

/// A rebalance changed the assignment to `assigned` partitions.
pub fn record_rebalance(assigned: usize) {
    counter!(REBALANCES).increment(1);
    gauge!(ASSIGNED_PARTITIONS).set(assigned as f64);
}

fn topic_label(d: Destination) -> &'static str {
    match d {
        Destination::Reply => "reply",
        Destination::DeadLetter => "dlq",
        Destination::Changes => "changes",
        Destination::View => "view",
    }
}

/// A `reply-to` header named a topic outside the allow-list; the reply went to the default.
pub fn record_reply_to_refused() {
    counter!(REPLY_TO_REFUSED).increment(1);
}

/// Messages between the committed position and the end of a partition (from librdkafka's
/// statistics).
pub fn record_consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// A table's size on disk (`pg_total_relation_size`: heap, indexes and TOAST) and PostgreSQL's
/// estimate of its rows (`pg_class.reltuples`; `None` before the table was first vacuumed or
/// analyzed, when the row gauge keeps its last value).
pub fn record_table_size(table: &str, bytes: i64, rows: Option<f64>) {
    gauge!(TABLE_BYTES, "table" => table.to_string()).set(bytes as f64);
    if let Some(rows) = rows {
        gauge!(TABLE_ROWS, "table" => table.to_string()).set(rows);
    }
}

/// `n` stored replies older than the retention window were deleted (0 registers the counter).
pub fn record_replies_pruned(n: u64) {
    counter!(REPLIES_PRUNED).increment(n);
}

/// The topic `topic` of `d` (`reply` or `dlq`) became unusable (1: the broker does not know it
/// or refuses it, so records to it keep failing) or usable again (0).
pub fn record_topic_unusable(d: Destination, topic: &str, unusable: bool) {
    gauge!(TOPIC_UNUSABLE, "destination" => topic_label(d), "topic" => topic.to_string())
        .set(if unusable { 1.0 } else { 0.0 });
}

/// A dead letter was dropped because the dead-letter topic `topic` is unusable (its command was
/// answered all the same).
pub fn record_dead_letter_dropped(topic: &str) {
    counter!(DEAD_LETTERS_DROPPED, "topic" => topic.to_string()).increment(1);
}

/// The change feed's lag: `changes` appended to the log by this process whose change records
/// the broker has not acknowledged yet, and the age of the oldest of them (0 when none).
pub fn record_feed_lag(changes: usize, oldest: Duration) {
    gauge!(FEED_LAG_CHANGES).set(changes as f64);
    gauge!(FEED_LAG_SECONDS).set(oldest.as_secs_f64());
}
