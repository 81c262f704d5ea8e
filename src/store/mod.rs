//! PostgreSQL: the event log, the projection and the stored replies, written one batch per
//! transaction (one fenced statement, see [`apply_batch`]): load what the batch needs
//! ([`Known`]), decide it ([`decide_batch`], pure, in [`crate::domain::decide`]), write its
//! [`Effects`]. Also here: tokens ([`tokens`]), the retention of stored replies ([`retention`]),
//! rebuilding the view ([`rebuild`]). What may import sqlx lives under `store/` and `pipeline/`.
//!
//! Invariants this file keeps (the tests in `tests/` check them):
//! - A batch's effects (log rows, view rows, stored replies) commit together or not at all.
//! - Every handled request id has exactly one row in `command_replies` per scope (the credential
//!   that sent it, see [`Command::scope`]); a request id seen again in its scope is answered from
//!   that row (the same bytes) or, with other content, with a 422.
//! - An event's versions are 1..n without gaps: a batch decided on rows read without locks is
//!   written only if no other writer moved its events or handled its request ids meanwhile (the
//!   log's and the stored replies' primary keys, and a version guard on the view); otherwise it
//!   is decided again with the rows read under `FOR UPDATE`, and a conflict there fails the
//!   batch with [`StoreError::Conflict`], to be retried whole (a bounded number of times; the
//!   consumer then isolates the command that keeps conflicting).
//! - A writer that lost its partitions but still holds a batch (a zombie) writes nothing stale:
//!   its batch was decided on rows the new owner has since moved, so a fence trips, and decided
//!   again its request ids are found handled and get the replies the new owner stored.
//! - Commands are decided in the order given ([`decide_batch`], pure), so per-partition order is
//!   kept.
//! - Per command (topic, partition), `applied_offsets` holds the highest offset of any command a
//!   committed batch handled, raised in the same statement as the batch's rows (never lowered:
//!   `GREATEST`), so every applied command's offset is at or below it. A record at or below it is
//!   never applied again, whatever the retention of stored replies: it gets its stored reply
//!   while one is kept, else a 409 ([`offsets`]). The offsets are read in the same statement
//!   (one snapshot) as the stored replies (`read_batch`), so a record they cover has its reply
//!   visible to the batch unless the retention pruned it. A command topic deleted and created
//!   again restarts at offset 0: its stored offsets must be reset ([`offsets::reset`]).
//! - Schema changes are expand/contract (`migrations/README.md`): the write function the
//!   previous release calls keeps its signature and keeps working; a new signature is a new
//!   name. The migrator tolerates migrations newer than the binary ([`migrate_with`]), so the
//!   previous release starts against a schema this one migrated (a rollback), and refuses a
//!   known migration whose text changed.

pub mod backfill;
pub mod feed;
pub mod offsets;
pub mod rebuild;
pub mod retention;
pub mod sizes;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::auth::{AuthMode, Credentials, TokenGrant};
use crate::domain::command::Command;
use crate::domain::decide::{
    decide_batch, Effects, Handled, Known, LogRow, Outcome, Rules, Source, StoredReply, ViewRow,
};
use crate::domain::projection::{truncate_to_micros, EventState};
use crate::drf::pyjson;
use crate::metrics::BatchParts;

pub use feed::Feed;
pub use sizes::Fit;

/// Errors from the store, sorted by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down: back off and retry the same batch.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A concurrent writer got there first (unique violation, serialization failure,
    /// deadlock): retry the same batch after a short back-off; it will see the other writer's
    /// work. The consumer bounds these retries (`consumer::CONFLICT_ATTEMPTS`).
    #[error("conflict with a concurrent writer: {0}")]
    Conflict(#[source] sqlx::Error),
    /// The database refused the data itself: isolate the command that carries it.
    #[error("the database refused the data: {0}")]
    Refused(#[source] sqlx::Error),
    /// The statement failed for a reason that may well repeat with the same commands (a
    /// statement or lock timeout, out of memory, a missing function, any SQLSTATE not sorted
    /// elsewhere): retry a bounded number of times, then split the batch; a command that still
    /// fails alone is not applied (the consumer answers it 500 and dead-letters it).
    #[error("the database failed the statement: {0}")]
    Failed(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

impl StoreError {
    /// PostgreSQL's SQLSTATE of the error, where the database sent one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Unavailable(sqlx::Error::Database(db))
            | StoreError::Conflict(sqlx::Error::Database(db))
            | StoreError::Refused(sqlx::Error::Database(db))
            | StoreError::Failed(sqlx::Error::Database(db))
            | StoreError::Url(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// SQLSTATEs (and classes, as two-character prefixes) of a database that is unreachable,
/// shutting down, full or read-only for now: the same batch may pass once it is back, so it is
/// retried for as long as it takes. Class 08: connection exception; 57P01..57P03: admin
/// shutdown, crash shutdown, cannot connect now; 57P04/57P05: database dropped, idle session
/// timeout; 25P03: idle-in-transaction timeout (our own session was cut while frozen); 25006:
/// read-only transaction (a primary that became a standby during a failover); 53000, 53100,
/// 53300: insufficient resources, disk full, too many connections; class 58: system (I/O) error.
/// And what refuses a new connection: class 28, invalid authorization (a rotated password);
/// 3D000, the database does not exist; 55000, the database does not allow connections
/// (`ALLOW_CONNECTIONS false`).
const TRANSIENT_SQLSTATES: [&str; 15] = [
    "08", "57P01", "57P02", "57P03", "57P04", "57P05", "25P03", "25006", "53000", "53100", "53300",
    "58", "28", "3D000", "55000",
];

/// Sorts an error by what to do about it:
/// - 23505 (a key another writer inserted), 40001 and 40P01 (serialization failure,
///   deadlock): [`StoreError::Conflict`];
/// - classes 22 (data exception), 23 (integrity) and 54 (program limit), and a value that cannot
///   be encoded or decoded: [`StoreError::Refused`], the data itself;
/// - [`TRANSIENT_SQLSTATES`] and errors without a SQLSTATE that concern the connection (I/O,
///   TLS, protocol, a pool that timed out or closed): [`StoreError::Unavailable`], retried
///   without bound;
/// - anything else, notably 57014 (statement timeout or cancel), 55P03 (lock timeout), 53200
///   (out of memory), 42883 (undefined function) and any SQLSTATE not named here:
///   [`StoreError::Failed`], retried a bounded number of times, so that a failure that repeats
///   with the same commands cannot stall a partition for good.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            match sort_sqlstate(db.code().as_deref().unwrap_or_default()) {
                Sorted::Conflict => StoreError::Conflict(e),
                Sorted::Refused => StoreError::Refused(e),
                Sorted::Unavailable => StoreError::Unavailable(e),
                Sorted::Failed => StoreError::Failed(e),
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
            StoreError::Refused(e)
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_) => StoreError::Failed(e),
        _ => StoreError::Unavailable(e),
    }
}

/// What [`classify`] makes of a SQLSTATE: the [`StoreError`] variant it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sorted {
    Conflict,
    Refused,
    Unavailable,
    Failed,
}

/// Sorts a SQLSTATE as [`classify`] says (pure).
fn sort_sqlstate(code: &str) -> Sorted {
    match code {
        "23505" | "40001" | "40P01" => Sorted::Conflict,
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => Sorted::Refused,
        c if !c.is_empty() && TRANSIENT_SQLSTATES.iter().any(|t| c.starts_with(t)) => {
            Sorted::Unavailable
        }
        _ => Sorted::Failed,
    }
}

#[cfg(test)]
mod sqlstate_tests {
    use super::*;

    #[test]
    fn only_an_unreachable_database_is_unavailable_and_repeating_failures_are_failed() {
        for code in ["23505", "40001", "40P01"] {
            assert_eq!(sort_sqlstate(code), Sorted::Conflict, "{code}");
        }
        for code in [
            "22P05", "22021", "22003", "23502", "23514", "54000", "54001",
        ] {
            assert_eq!(sort_sqlstate(code), Sorted::Refused, "{code}");
        }
        for code in [
            "08000", "08006", "08P01", "57P01", "57P02", "57P03", "57P04", "57P05", "25P03",
            "25006", "53000", "53100", "53300", "58000", "58030", "28000", "28P01", "3D000",
            "55000",
        ] {
            assert_eq!(sort_sqlstate(code), Sorted::Unavailable, "{code}");
        }
        // Statement timeout, lock timeout, out of memory, undefined function, too complex, an
        // internal error, a SQLSTATE no one knows, none at all: bounded, never forever.
        for code in [
            "57014", "55P03", "53200", "42883", "42P01", "53400", "XX000", "XX001", "P0001",
            "ZZ999", "",
        ] {
            assert_eq!(sort_sqlstate(code), Sorted::Failed, "{code:?}");
        }
    }
}

/// Creates the database named in `url` when it does not exist, connects a pool, and runs the
/// migrations. For tools; the processor's pool is [`connect_for_processing`].
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, None).await
}

/// Bounds on what one of the processor's sessions may wait for or hold, set on every connection
/// of its pool (and of the pools made beside it from the same options), so that no frozen or
/// runaway session can hold a partition up for good:
/// - `statement`: PostgreSQL's `statement_timeout`; a statement running longer is cancelled
///   (57014);
/// - `lock`: `lock_timeout`; a statement waiting longer for a row lock (a frozen session that
///   holds `FOR UPDATE` on an event's row) fails (55P03);
/// - `idle_in_transaction`: `idle_in_transaction_session_timeout`; a session of ours that stops
///   inside a transaction (a frozen or partitioned processor) is ended by the server, which
///   releases its locks for the partition's new owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    pub statement: std::time::Duration,
    pub lock: std::time::Duration,
    pub idle_in_transaction: std::time::Duration,
}

impl SessionTimeouts {
    /// The session parameters, in milliseconds (PostgreSQL's unit for these).
    fn parameters(&self) -> [(&'static str, String); 3] {
        let ms = |d: std::time::Duration| d.as_millis().max(1).to_string();
        [
            ("statement_timeout", ms(self.statement)),
            ("lock_timeout", ms(self.lock)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction),
            ),
        ]
    }
}

/// As [`connect`], for the processor's hot path:
/// - Every statement the processor runs is a lookup or write by key, so its sessions set
///   `enable_seqscan = off`: a cached generic plan, made while a table was tiny, can then never
///   be a sequential scan that keeps being used once the table is large. And they set
///   `plan_cache_mode = force_generic_plan`: prepared statements (and the write function's
///   statements) are planned once per connection, not again for every batch. (Under `auto`,
///   PostgreSQL plans a statement taking arrays anew for each call while the arrays' lengths
///   move its estimates: planning the batch's read and the write function's five statements
///   cost about as much as running them for a batch of a few commands.)
/// - Every session has the [`SessionTimeouts`]. The migrations run before, on a connection
///   without them (a migration may rightly take longer than a batch).
/// - No ping before each use of a pooled connection: a broken connection fails the statement,
///   and the batch is retried like any unavailable database.
pub async fn connect_for_processing(
    url: &str,
    max_connections: u32,
    timeouts: SessionTimeouts,
) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, Some(timeouts)).await
}

async fn connect_with(
    url: &str,
    max_connections: u32,
    processing: Option<SessionTimeouts>,
) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
    create_database_if_missing(&options).await?;
    let Some(timeouts) = processing else {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        return Ok(pool);
    };
    let migrator = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.clone())
        .await?;
    let migrated = migrate(&migrator).await;
    migrator.close().await;
    migrated?;
    let parameters = timeouts.parameters();
    let options = options.options(
        [
            ("enable_seqscan", "off"),
            ("plan_cache_mode", "force_generic_plan"),
        ]
        .into_iter()
        .chain(parameters.iter().map(|(k, v)| (*k, v.as_str()))),
    );
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Runs the migrations under `migrations/` (embedded in the binary), see [`migrate_with`].
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    migrate_with(pool, sqlx::migrate!("./migrations")).await
}

/// Runs `migrator`'s migrations that the database has not applied, tolerating migrations the
/// database has that `migrator` does not know: those of a newer release, which keep this
/// release's write path working (expand/contract, `migrations/README.md`), so a rolling deploy
/// runs both releases side by side and a rollback starts. A known migration whose text changed
/// since it was applied is still refused ([`sqlx::migrate::MigrateError::VersionMismatch`]).
pub async fn migrate_with(
    pool: &PgPool,
    mut migrator: sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    migrator.set_ignore_missing(true);
    let mut conn = pool.acquire().await?;
    // `run_direct` is what `run` does on the connection it acquires; `run(&mut *conn)` would
    // make this future fail a higher-ranked `Send` bound.
    match migrator.run_direct(&mut *conn).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // sqlx leaves its advisory lock held by the session when a migration fails or is
            // refused: close the session rather than return it, locked, to the pool (where it
            // would hold every other replica's migrator back).
            let _ = conn.detach().close().await;
            Err(e.into())
        }
    }
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let name = options.get_database().unwrap_or("postgres").to_string();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Applies `commands` (in order) and returns one outcome per command, with every effect
/// committed atomically before it returns.
///
/// The common case takes two round trips and no row locks: one statement reads what the batch
/// needs (`read_batch`), the decisions are made in memory ([`decide_batch`]), and one call of
/// the `event_updater_write_batch` function writes the log rows, the views and the stored replies
/// as a single implicit transaction. That is safe without locks because the write is fenced:
/// - versions are contiguous, so any change committed to an event after it was read includes
///   the version after the one read, and the log's primary key `(event_uuid, version)` refuses
///   ours (23505);
/// - a view row is only updated at the version it was read at, and a new one only inserted where
///   none exists (the function raises 40001 otherwise);
/// - `command_replies`' primary key refuses a (scope, request id) that another writer handled
///   meanwhile.
///
/// When a fence trips, the batch is decided again on the locking path ([`apply_batch_locked`]):
/// one transaction that reads under `FOR UPDATE`.
pub async fn apply_batch(
    pool: &PgPool,
    commands: &[(Command, Source)],
    rules: Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    Ok(apply_batch_timed(pool, commands, rules, now, false, None)
        .await?
        .outcomes)
}

/// A batch's outcomes, one per command, and its part of the change feed.
#[derive(Debug)]
pub struct Applied {
    pub outcomes: Vec<Outcome>,
    pub feed: Feed,
    /// How long the attempt that applied it took, by part (reading, deciding, writing).
    pub parts: BatchParts,
    /// How many of the commands given were applied: all of them, or where a [`Fit`] cut the
    /// batch, its leading ones (the outcomes are theirs).
    pub taken: usize,
}

impl Applied {
    /// An attempt that began at `started`, had read what it needed `read` after and decided
    /// `decided` after, and has just written (and committed).
    fn timed(
        outcomes: Vec<Outcome>,
        feed: Feed,
        taken: usize,
        started: Instant,
        read: std::time::Duration,
        decided: std::time::Duration,
    ) -> Applied {
        let parts = BatchParts {
            read,
            decide: decided - read,
            write: started.elapsed() - decided,
        };
        Applied {
            outcomes,
            feed,
            parts,
            taken,
        }
    }
}

/// As [`apply_batch`], for the processor: with `with_feed`, also the batch's part of the change
/// feed ([`feed::collect`]): the changes it appended, the changes of commands it saw again that
/// were applied before, and their events' views, read in the batch's connection after its write
/// (and in its transaction on the locking path), so the views are at least as new as the
/// batch's changes. It reports how long the attempt's parts took, and with `fit` applies only
/// the leading commands whose loads and replies fit its bound ([`sizes::fitting_prefix`], at
/// least one): [`Applied::taken`] says how many.
pub async fn apply_batch_timed(
    pool: &PgPool,
    commands: &[(Command, Source)],
    rules: Rules,
    now: DateTime<Utc>,
    with_feed: bool,
    fit: Option<Fit<'_>>,
) -> Result<Applied, StoreError> {
    // As PostgreSQL keeps it, so that a change's time reads back the same.
    let now = truncate_to_micros(now);
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let auth_mode = rules.auth_mode;
    let fit = fit.filter(|_| commands.len() > 1);
    let cap = fit.map_or(UNCAPPED, |f| sizes::value_cap(f.bound, commands.len()));
    let mut read = read_batch(&mut conn, commands, auth_mode, true, cap).await?;
    let taken = match fit {
        Some(f) => sizes::fitting_prefix(
            &sizes::probes(commands, f.own_bytes, auth_mode),
            &read.sizes(commands, auth_mode),
            f.charged,
            f.bound,
        ),
        None => commands.len(),
    };
    let commands = &commands[..taken];
    if read.withholds_any_of(commands, auth_mode) {
        // A value over the cap is needed after all (the batch was cut to what fits): read the
        // part that is applied again, whole, in one statement.
        read = read_batch(&mut conn, commands, auth_mode, true, UNCAPPED).await?;
    }
    let known = read.known;
    let read = started.elapsed();
    let (outcomes, effects) = decide_batch(commands, known, rules, now);
    let decided = started.elapsed();
    match Writes::of(&effects).write(&mut conn, now).await {
        Ok(()) => {
            let feed = match with_feed {
                true => feed::collect(&mut conn, commands, &outcomes, effects, now).await?,
                false => Feed::default(),
            };
            Ok(Applied::timed(
                outcomes, feed, taken, started, read, decided,
            ))
        }
        Err(StoreError::Conflict(e)) => {
            tracing::debug!(error = %e, "a write fence tripped; deciding the batch again under row locks");
            drop(conn);
            apply_locked(pool, commands, rules, now, with_feed).await
        }
        Err(e) => Err(e),
    }
}

/// The locking path: reads under `FOR UPDATE` (rows locked in event-id order, so concurrent
/// batches cannot deadlock) and writes in the same transaction.
pub async fn apply_batch_locked(
    pool: &PgPool,
    commands: &[(Command, Source)],
    rules: Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    Ok(
        apply_locked(pool, commands, rules, truncate_to_micros(now), false)
            .await?
            .outcomes,
    )
}

async fn apply_locked(
    pool: &PgPool,
    commands: &[(Command, Source)],
    rules: Rules,
    now: DateTime<Utc>,
    with_feed: bool,
) -> Result<Applied, StoreError> {
    let auth_mode = rules.auth_mode;
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    // The offsets, grants and stored answers as on the common path; the views under row locks.
    let mut known = read_batch(&mut tx, commands, auth_mode, false, UNCAPPED)
        .await?
        .known;
    let mut uuids: Vec<Uuid> = commands
        .iter()
        .filter(|(c, s)| known.handled(c, auth_mode).is_none() && !known.already_applied(s))
        .filter_map(|(c, _)| c.action.event_uuid_to_apply())
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    known.states = load_for_update(&mut tx, &uuids).await?;
    let read = started.elapsed();
    let (outcomes, effects) = decide_batch(commands, known, rules, now);
    let decided = started.elapsed();
    Writes::of(&effects).write(&mut tx, now).await?;
    let feed = match with_feed {
        true => feed::collect(&mut tx, commands, &outcomes, effects, now).await?,
        false => Feed::default(),
    };
    tx.commit().await?;
    Ok(Applied::timed(
        outcomes,
        feed,
        commands.len(),
        started,
        read,
        decided,
    ))
}

/// No value is withheld from a read ([`read_batch`]).
const UNCAPPED: i64 = i64::MAX;

/// What one read of a batch found ([`read_batch`]): what deciding it needs, and the sizes of the
/// stored replies and views, including those withheld for being over the read's cap.
#[derive(Debug, Default)]
struct BatchRead {
    known: Known,
    /// Stored replies' lengths, by scope and request id.
    reply_sizes: HashMap<(Vec<u8>, String), usize>,
    /// Views' lengths (see [`sizes::Sizes::view`]), by event.
    view_sizes: HashMap<Uuid, usize>,
    /// Stored replies over the cap, read without their bytes (not in `known`).
    withheld_replies: Vec<(Vec<u8>, String)>,
    /// Views over the cap, read without their JSON columns (not in `known`).
    withheld_views: Vec<Uuid>,
}

impl BatchRead {
    /// The sizes of what each of `commands` would load and answer, in their order.
    fn sizes(&self, commands: &[(Command, Source)], auth_mode: AuthMode) -> Vec<sizes::Sizes> {
        commands
            .iter()
            .map(|(c, _)| sizes::Sizes {
                stored_reply: c.scope(auth_mode).and_then(|scope| {
                    self.reply_sizes
                        .get(&(scope.to_vec(), c.request_id.clone()))
                        .copied()
                }),
                view: c
                    .action
                    .event_uuid_to_apply()
                    .and_then(|u| self.view_sizes.get(&u).copied()),
            })
            .collect()
    }

    /// Whether a value `commands` need was withheld.
    fn withholds_any_of(&self, commands: &[(Command, Source)], auth_mode: AuthMode) -> bool {
        if self.withheld_replies.is_empty() && self.withheld_views.is_empty() {
            return false;
        }
        commands.iter().any(|(c, _)| {
            let reply = c.scope(auth_mode).is_some_and(|scope| {
                self.withheld_replies
                    .iter()
                    .any(|(s, r)| s.as_slice() == scope && *r == c.request_id)
            });
            let view = c
                .action
                .event_uuid_to_apply()
                .is_some_and(|u| self.withheld_views.contains(&u));
            reply || view
        })
    }
}

/// One statement, no locks, for everything deciding `commands` needs: the applied offsets of
/// their partitions, the grants of their tokens, the stored answers of their request ids and
/// (with `views`) the views of their events, each a lookup by primary or unique key, and the
/// sizes of the stored replies and views. A stored reply or view whose size is over `cap` is
/// withheld (its size only), so that one read of a batch that will be cut
/// ([`sizes::fitting_prefix`]) does not load what is beyond the cut.
///
/// One statement is one snapshot: a record at or below the applied offsets read was handled by
/// a batch that committed before it, so its stored reply (if the retention kept it) is read
/// too. (Read separately, the offsets would have to be read first: a writer holding stale
/// stored replies, a zombie, could otherwise see newer offsets and answer "already applied"
/// where another writer stored a reply meanwhile.)
async fn read_batch(
    conn: &mut PgConnection,
    commands: &[(Command, Source)],
    auth_mode: AuthMode,
    views: bool,
    cap: i64,
) -> Result<BatchRead, StoreError> {
    // The (scope, request id) pairs to look up; a command without a scope (no usable
    // credentials) has nothing stored.
    let (scopes, ids): (Vec<&[u8]>, Vec<&str>) = commands
        .iter()
        .filter_map(|(c, _)| Some((c.scope(auth_mode)?, c.request_id.as_str())))
        .unzip();
    let mut uuids: Vec<Uuid> = match views {
        true => commands
            .iter()
            .filter_map(|(c, _)| c.action.event_uuid_to_apply())
            .collect(),
        false => Vec::new(),
    };
    uuids.sort_unstable();
    uuids.dedup();
    let hashes = match auth_mode {
        AuthMode::Required => token_hashes(commands),
        AuthMode::Disabled => Vec::new(),
    };
    let mut partitions: Vec<(&str, i32)> = commands
        .iter()
        .map(|(_, s)| (s.topic.as_str(), s.partition))
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    let (topics, partitions): (Vec<&str>, Vec<i32>) = partitions.into_iter().unzip();
    let rows = sqlx::query(READ_BATCH)
        .bind(&uuids)
        .bind(&scopes)
        .bind(&ids)
        .bind(&hashes)
        .bind(&topics)
        .bind(&partitions)
        .bind(cap)
        .fetch_all(&mut *conn)
        .await?;
    let mut read = BatchRead::default();
    let size = |r: &sqlx::postgres::PgRow| -> Result<usize, StoreError> {
        Ok(usize::try_from(r.try_get::<i64, _>("size")?).unwrap_or(usize::MAX))
    };
    for r in &rows {
        match r.try_get::<i32, _>("kind")? {
            1 => {
                let (uuid, size) = (r.try_get::<Uuid, _>("event_uuid")?, size(r)?);
                read.view_sizes.insert(uuid, size);
                if i64::try_from(size).unwrap_or(i64::MAX) > cap {
                    read.withheld_views.push(uuid);
                    continue;
                }
                let s = view_from_row(r)?;
                read.known.states.insert(s.event_uuid, s);
            }
            2 => {
                let scope: Vec<u8> = r.try_get("scope")?;
                let request_id: String = r.try_get("request_id")?;
                let size = size(r)?;
                read.reply_sizes
                    .insert((scope.clone(), request_id.clone()), size);
                if i64::try_from(size).unwrap_or(i64::MAX) > cap {
                    read.withheld_replies.push((scope, request_id));
                    continue;
                }
                let status: i32 = r.try_get("status")?;
                read.known.handled.entry(scope).or_default().insert(
                    request_id,
                    Handled {
                        fingerprint: r.try_get("fingerprint")?,
                        status: u16::try_from(status).unwrap_or_default(),
                        reply: Arc::new(r.try_get("reply")?),
                        change: r
                            .try_get::<Option<Uuid>, _>("event_uuid")?
                            .zip(r.try_get::<Option<i64>, _>("version")?),
                    },
                );
            }
            3 => {
                let h: Vec<u8> = r.try_get("scope")?;
                if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
                    read.known.grants.insert(
                        h,
                        TokenGrant {
                            usable: r.try_get("usable")?,
                            can_change_event: r.try_get("can_change_event")?,
                        },
                    );
                }
            }
            _ => {
                read.known.applied.insert(
                    (r.try_get("request_id")?, r.try_get("status")?),
                    r.try_get("version")?,
                );
            }
        }
    }
    Ok(read)
}

/// [`read_batch`]'s statement, one lookup by primary or unique key per row:
/// - kind 1: views ($1), with their size (as [`sizes::Sizes::view`] measures it), the JSON
///   columns withheld over the cap ($7);
/// - kind 2: stored answers by (scope, request id) ($2, $3), with the event and version they
///   appended, if any, and the reply's length, the reply withheld over the cap;
/// - kind 3: tokens by hash ($4; the hash in `scope`);
/// - kind 4: applied offsets by (topic, partition) ($5, $6): the topic in `request_id`, the
///   partition in `status`, the offset in `version`.
const READ_BATCH: &str = r#"
SELECT 1 AS kind, e.event_uuid, e.version,
       CASE WHEN z.size <= $7 THEN e."user"::text END AS "user", e.action, e.app,
       CASE WHEN z.size <= $7 THEN e.context::text END AS context,
       e.client_ip, e.created, e.expires,
       CASE WHEN z.size <= $7 THEN e.brand::text END AS brand,
       NULL::text AS request_id, NULL::bytea AS fingerprint, NULL::int4 AS status, NULL::bytea AS reply,
       NULL::bytea AS scope, NULL::bool AS can_change_event, NULL::bool AS usable, z.size
FROM events e
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN pg_column_size(e."user") + pg_column_size(e.context) + pg_column_size(e.brand) < 2000
            THEN (pg_column_size(e."user") + pg_column_size(e.context) + pg_column_size(e.brand))::int8
        ELSE (octet_length(e."user"::text) + octet_length(e.context::text) + octet_length(e.brand::text))::int8
    END AS size
) z
WHERE e.event_uuid = ANY($1)
UNION ALL
SELECT 2, c.event_uuid, c.version, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       c.request_id, c.fingerprint, c.status::int4,
       CASE WHEN octet_length(c.reply) <= $7 THEN c.reply END, c.scope, NULL, NULL,
       octet_length(c.reply)::int8
FROM unnest($2::bytea[], $3::text[]) AS k(scope, request_id)
JOIN command_replies c ON c.scope = k.scope AND c.request_id = k.request_id
UNION ALL
SELECT 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       token_hash, can_change_event, revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()),
       0
FROM api_tokens WHERE token_hash = ANY($4)
UNION ALL
SELECT 4, NULL, a.applied_offset, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       a.topic, NULL, a.partition, NULL, NULL, NULL, NULL, 0
FROM unnest($5::text[], $6::int4[]) AS k(topic, partition)
JOIN applied_offsets a ON a.topic = k.topic AND a.partition = k.partition
"#;

/// The distinct token hashes a batch's commands present.
fn token_hashes(commands: &[(Command, Source)]) -> Vec<Vec<u8>> {
    let mut hashes: Vec<Vec<u8>> = commands
        .iter()
        .filter_map(|(c, _)| match &c.credentials {
            Credentials::Bearer(h) => Some(h.to_vec()),
            _ => None,
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

pub(crate) const VIEW_COLUMNS: &str = r#"event_uuid, version, "user"::text AS "user", action, app, context::text AS context, client_ip, created, expires, brand::text AS brand"#;

async fn load_for_update(
    tx: &mut Transaction<'_, Postgres>,
    uuids: &[Uuid],
) -> Result<HashMap<Uuid, EventState>, StoreError> {
    if uuids.is_empty() {
        return Ok(HashMap::new());
    }
    // Sorted ids and ORDER BY: concurrent batches take their row locks in one order.
    let rows = sqlx::query(&format!(
        "SELECT {VIEW_COLUMNS} FROM events WHERE event_uuid = ANY($1) ORDER BY event_uuid FOR UPDATE"
    ))
    .bind(uuids)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| view_from_row(r).map(|s| (s.event_uuid, s)))
        .collect()
}

pub(crate) fn view_from_row(r: &sqlx::postgres::PgRow) -> Result<EventState, StoreError> {
    let json = |col: &str| -> Result<Value, StoreError> {
        let text: String = r.try_get(col)?;
        pyjson::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
    };
    Ok(EventState {
        event_uuid: r.try_get("event_uuid")?,
        version: r.try_get("version")?,
        user: json("user")?,
        action: r.try_get("action")?,
        app: r.try_get("app")?,
        context: json("context")?,
        client_ip: r
            .try_get::<Option<String>, _>("client_ip")?
            .map(|ip| crate::drf::ipaddr::pg_inet(&ip)),
        created: r.try_get("created")?,
        expires: r.try_get("expires")?,
        brand: json("brand")?,
    })
}

pub(crate) async fn upsert_views<'a>(
    tx: &mut Transaction<'_, Postgres>,
    states: impl Iterator<Item = &'a EventState>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut c = ViewColumns::default();
    for s in states {
        c.push(s);
    }
    upsert_columns(tx, &c, now).await
}

/// Inserts or replaces the view rows `c` (no version guard: for repairs and the benchmark's
/// limit, never for the processor's writes).
async fn upsert_columns(
    tx: &mut Transaction<'_, Postgres>,
    c: &ViewColumns,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if c.uuid.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"INSERT INTO events (event_uuid, version, "user", action, app, context, client_ip, created, expires, brand, updated_at)
           SELECT u, v, us::jsonb, a, ap, co::jsonb, ip, cr, ex, br::jsonb, $11
           FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[])
                AS t(u, v, us, a, ap, co, ip, cr, ex, br)
           ON CONFLICT (event_uuid) DO UPDATE SET
             version = EXCLUDED.version, "user" = EXCLUDED."user", action = EXCLUDED.action,
             app = EXCLUDED.app, context = EXCLUDED.context, client_ip = EXCLUDED.client_ip,
             expires = EXCLUDED.expires, brand = EXCLUDED.brand, updated_at = EXCLUDED.updated_at"#,
    )
    .bind(&c.uuid)
    .bind(&c.version)
    .bind(&c.user)
    .bind(&c.action)
    .bind(&c.app)
    .bind(&c.context)
    .bind(&c.client_ip)
    .bind(&c.created)
    .bind(&c.expires)
    .bind(&c.brand)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// View rows as columns, for the multi-row statements.
#[derive(Debug, Default)]
struct ViewColumns {
    uuid: Vec<Uuid>,
    version: Vec<i64>,
    user: Vec<String>,
    action: Vec<String>,
    app: Vec<String>,
    context: Vec<String>,
    client_ip: Vec<Option<String>>,
    created: Vec<DateTime<Utc>>,
    expires: Vec<DateTime<Utc>>,
    brand: Vec<String>,
}

impl ViewColumns {
    fn push(&mut self, s: &EventState) {
        self.uuid.push(s.event_uuid);
        self.version.push(s.version);
        self.user.push(s.user.to_string());
        self.action.push(s.action.clone());
        self.app.push(s.app.clone());
        self.context.push(s.context.to_string());
        self.client_ip.push(s.client_ip.clone());
        self.created.push(s.created);
        self.expires.push(s.expires);
        self.brand.push(s.brand.to_string());
    }
}

/// What one batch writes: log rows, the final view row of each event it touched (with the
/// version it was read at), the stored replies and the partitions' raised applied offsets;
/// written by one call of the `event_updater_write_batch_v3` function (see `migrations/`),
/// which fences the write. (`_v2`, without the log rows' scopes, and `event_updater_write_batch`,
/// without the offsets either, are earlier releases': kept for them, not called here.)
#[derive(Debug, Default)]
pub struct Writes {
    log: LogRows,
    views: ViewRows,
    replies: ReplyRows,
    offsets: OffsetRows,
}

/// The SQL of [`Writes::write`]: one call with 33 parameters.
const WRITE_BATCH: &str = "SELECT event_updater_write_batch_v3($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)";

impl Writes {
    /// The rows of a batch's decided effects, as the columns of the write.
    pub fn of(effects: &Effects) -> Writes {
        let mut w = Writes::default();
        for l in &effects.log {
            w.log.push(l);
        }
        for v in &effects.views {
            w.views.push(v);
        }
        for r in &effects.replies {
            w.replies.push(r);
        }
        for o in &effects.offsets {
            w.offsets.push(o);
        }
        w
    }

    /// (log rows, view rows, stored replies).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.log.uuid.len(),
            self.views.columns.uuid.len(),
            self.replies.request_id.len(),
        )
    }

    /// Writes everything in one statement: atomically on its own, or as part of the caller's
    /// transaction (the applied offsets with the rows they cover). A tripped fence is
    /// [`StoreError::Conflict`]. Nothing to write (every command answered from what is stored,
    /// at or below the applied offsets): no statement.
    pub async fn write(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (l, v, r, o) = (&self.log, &self.views, &self.replies, &self.offsets);
        if l.uuid.is_empty()
            && v.columns.uuid.is_empty()
            && r.request_id.is_empty()
            && o.topic.is_empty()
        {
            return Ok(());
        }
        let q = sqlx::query(WRITE_BATCH);
        o.bind(r.bind(v.bind(l.bind(q))))
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl Writes {
    /// The same rows by three plain `INSERT … SELECT FROM unnest` statements, unfenced (views
    /// upserted): what PostgreSQL ingests at best, for the benchmark's limit. Not for the
    /// processor, whose writes must be fenced.
    pub async fn write_unfenced(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset)
             SELECT u, v, r, c::jsonb, $8, t, p, o
             FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[]) AS x(u, v, r, c, t, p, o)",
        );
        self.log
            .bind_unscoped(q)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        upsert_columns(tx, &self.views.columns, now).await?;
        let q = sqlx::query(
            "INSERT INTO command_replies (scope, request_id, fingerprint, event_uuid, status, version, reply, handled_at, source_topic, source_partition, source_offset)
             SELECT sc, r, f, u, s, v, b, $11, t, p, o
             FROM UNNEST($1::bytea[], $2::text[], $3::bytea[], $4::uuid[], $5::int2[], $6::int8[], $7::bytea[], $8::text[], $9::int4[], $10::int8[]) AS x(sc, r, f, u, s, v, b, t, p, o)",
        );
        self.replies.bind(q).bind(now).execute(&mut **tx).await?;
        let q = sqlx::query("SELECT event_updater_record_offsets($1, $2, $3, $4)");
        self.offsets.bind(q).bind(now).execute(&mut **tx).await?;
        Ok(())
    }
}

/// Per (topic, partition), the offset to raise the stored applied offset to.
#[derive(Debug, Default)]
struct OffsetRows {
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl OffsetRows {
    /// Binds the columns, in the function's order, as the next three parameters.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(&self.topic).bind(&self.partition).bind(&self.offset)
    }

    fn push(&mut self, s: &Source) {
        self.topic.push(s.topic.clone());
        self.partition.push(s.partition);
        self.offset.push(s.offset);
    }
}

#[derive(Debug, Default)]
struct LogRows {
    uuid: Vec<Uuid>,
    version: Vec<i64>,
    request_id: Vec<String>,
    change: Vec<String>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    scope: Vec<Vec<u8>>,
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl LogRows {
    /// Binds the columns, in the function's order, as the next eight parameters.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        self.bind_unscoped(q).bind(&self.scope)
    }

    /// The first seven columns, without the scopes (the unfenced write's statement).
    fn bind_unscoped<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(&self.uuid)
            .bind(&self.version)
            .bind(&self.request_id)
            .bind(&self.change)
            .bind(&self.topic)
            .bind(&self.partition)
            .bind(&self.offset)
    }

    fn push(&mut self, l: &LogRow) {
        self.uuid.push(l.event_uuid);
        self.version.push(l.version);
        self.request_id.push(l.request_id.clone());
        self.change.push(l.change.to_string());
        self.topic.push(l.source.topic.clone());
        self.partition.push(l.source.partition);
        self.offset.push(l.source.offset);
        self.scope.push(l.scope.clone());
    }
}

/// A batch's view rows and the version each was read at (0: it did not exist).
#[derive(Debug, Default)]
struct ViewRows {
    columns: ViewColumns,
    read_version: Vec<i64>,
}

impl ViewRows {
    /// Binds the columns, in the function's order, as the next eleven parameters.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        let c = &self.columns;
        q.bind(&c.uuid)
            .bind(&c.version)
            .bind(&self.read_version)
            .bind(&c.user)
            .bind(&c.action)
            .bind(&c.app)
            .bind(&c.context)
            .bind(&c.client_ip)
            .bind(&c.created)
            .bind(&c.expires)
            .bind(&c.brand)
    }

    fn push(&mut self, v: &ViewRow) {
        self.columns.push(&v.state);
        self.read_version.push(v.read_version);
    }
}

#[derive(Debug, Default)]
struct ReplyRows {
    scope: Vec<Vec<u8>>,
    request_id: Vec<String>,
    fingerprint: Vec<Vec<u8>>,
    event_uuid: Vec<Option<Uuid>>,
    status: Vec<i16>,
    version: Vec<Option<i64>>,
    reply: Vec<Vec<u8>>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl ReplyRows {
    /// Binds the columns, in the function's order, as the next ten parameters.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(&self.scope)
            .bind(&self.request_id)
            .bind(&self.fingerprint)
            .bind(&self.event_uuid)
            .bind(&self.status)
            .bind(&self.version)
            .bind(&self.reply)
            .bind(&self.topic)
            .bind(&self.partition)
            .bind(&self.offset)
    }

    fn push(&mut self, r: &StoredReply) {
        self.scope.push(r.scope.clone());
        self.request_id.push(r.request_id.clone());
        self.fingerprint.push(r.fingerprint.to_vec());
        self.event_uuid.push(r.event_uuid);
        self.status
            .push(i16::try_from(r.status).unwrap_or(i16::MAX));
        self.version.push(r.version);
        self.reply.push(r.reply.to_vec());
        self.topic.push(r.source.topic.clone());
        self.partition.push(r.source.partition);
        self.offset.push(r.source.offset);
    }
}

/// One row of an event's history.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub version: i64,
    pub request_id: String,
    pub change: Value,
    pub recorded_at: DateTime<Utc>,
    pub source: Source,
}

/// The current view of one event (None when it does not exist).
pub async fn load_view(pool: &PgPool, event_uuid: Uuid) -> Result<Option<EventState>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {VIEW_COLUMNS} FROM events WHERE event_uuid = $1"
    ))
    .bind(event_uuid)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(view_from_row).transpose()
}

/// An event's log, in version order.
pub async fn load_history(pool: &PgPool, event_uuid: Uuid) -> Result<Vec<LogEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT version, request_id, change::text AS change, recorded_at, source_topic, source_partition, source_offset
         FROM event_log WHERE event_uuid = $1 ORDER BY version",
    )
    .bind(event_uuid)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let change: String = r.try_get("change")?;
            Ok(LogEntry {
                version: r.try_get("version")?,
                request_id: r.try_get("request_id")?,
                change: pyjson::parse_str(&change)
                    .map_err(|e| StoreError::Corrupt(format!("change: {e}")))?,
                recorded_at: r.try_get("recorded_at")?,
                source: Source {
                    topic: r.try_get("source_topic")?,
                    partition: r.try_get("source_partition")?,
                    offset: r.try_get("source_offset")?,
                },
            })
        })
        .collect()
}
