//! Retention of stored replies: the background task that deletes `command_replies` rows older
//! than `IDEMPOTENCY_RETENTION`, and measures the tables' sizes for `/metrics`.
//!
//! Why it exists: every handled request id keeps one row with its reply bytes, so that a
//! redelivery is answered identically and a reused id is detected (a 422). Producers retry and
//! brokers redeliver within minutes or hours, not months; without a bound the table would grow
//! by every command forever. A request id replayed after the window finds no row and is handled
//! as a new command (README, "Operating it").
//!
//! Why it runs apart from the pipeline, in small batches: the task never stalls the processor.
//! - It has a database connection of its own ([`pool_beside`]), so it never takes one that a
//!   lane waits for.
//! - Each batch deletes at most [`PRUNE_BATCH`] rows in its own short transaction, found through
//!   the `command_replies_handled_at` index oldest first. The pipeline never locks stored
//!   replies; the most it can wait for is one batch's commit, when it inserts a request id whose
//!   old row that batch is deleting.
//! - Rows are deleted by `ctid`, so the statement does not depend on the table's primary key.
//! - The cutoff is fixed at the start of a pass, so a pass ends even while replies keep coming.
//!
//! Several processors on one database: each batch first takes the transaction-scoped advisory
//! lock [`PRUNE_LOCK_KEY`] with `pg_try_advisory_xact_lock`; a processor that does not get it
//! ends its pass (another one is pruning) and tries again after its interval. So at most one
//! batch deletes at any moment, and no two processors wait on each other's row locks.
//!
//! Invariant: a stored reply whose `handled_at` is not older than the window at the start of a
//! pass is never deleted by that pass; one that is older is deleted by the first pass that holds
//! the lock to the end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics;
use crate::store::StoreError;

/// Most rows one DELETE statement (one transaction) removes.
pub const PRUNE_BATCH: i64 = 2_000;

/// The advisory lock that serializes pruning among the processors of one database (the bytes
/// of `evupprun`).
pub const PRUNE_LOCK_KEY: i64 = 0x6576_7570_7072_756e;

/// The tables whose sizes are exported as `event_updater_table_bytes{table}`.
pub const TABLES: [&str; 3] = ["event_log", "events", "command_replies"];

/// Deletes the oldest stored replies handled before `$1`, at most `$2` of them.
const DELETE_BATCH: &str = "DELETE FROM command_replies WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM command_replies WHERE handled_at < $1 ORDER BY handled_at LIMIT $2))";

/// Size on disk (heap, indexes, TOAST) and estimated rows of each table named in `$1`.
const TABLE_SIZES: &str = "SELECT t.name, pg_total_relation_size(c.oid) AS bytes,
       c.reltuples::float8 AS tuples
FROM unnest($1::text[]) AS t(name) JOIN pg_class c ON c.oid = to_regclass(t.name)";

/// The retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Stored replies handled longer ago than this are deleted.
    pub window: Duration,
    /// The pause between two passes.
    pub interval: Duration,
}

impl Retention {
    pub fn from_config(cfg: &Config) -> Retention {
        Retention {
            window: cfg.idempotency_retention,
            interval: cfg.idempotency_prune_interval,
        }
    }

    /// The oldest `handled_at` kept at `now`; `None` when the window reaches back beyond what a
    /// timestamp can hold (nothing is old enough then).
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let window = chrono::Duration::from_std(self.window).ok()?;
        now.checked_sub_signed(window)
    }
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassEnd {
    /// No stored reply older than the cutoff is left.
    Done,
    /// Another session holds the prune lock: it is pruning.
    LockHeldElsewhere,
    /// Shutdown was asked for between two batches.
    Stopped,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub deleted: u64,
    pub end: PassEnd,
}

/// A pool of one connection to the same database as `pool`, with its settings, opened when
/// first used: the pruner's own, so that it never takes a connection the pipeline waits for.
pub fn pool_beside(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(pool.connect_options().as_ref().clone())
}

/// One batch: deletes up to `limit` stored replies handled before `cutoff`, oldest first, in a
/// transaction of its own. `None` when another session holds [`PRUNE_LOCK_KEY`].
pub async fn prune_batch(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Option<u64>, StoreError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        tx.rollback().await?;
        return Ok(None);
    }
    let deleted = sqlx::query(DELETE_BATCH)
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    metrics::record_replies_pruned(deleted);
    Ok(Some(deleted))
}

/// One pass: batches of [`PRUNE_BATCH`] until no stored reply older than `cutoff` is left,
/// another session holds the lock, or `stop` is true between two batches.
pub async fn prune(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    stop: &watch::Receiver<bool>,
) -> Result<Pass, StoreError> {
    let mut deleted = 0;
    loop {
        if *stop.borrow() {
            return Ok(Pass {
                deleted,
                end: PassEnd::Stopped,
            });
        }
        match prune_batch(pool, cutoff, PRUNE_BATCH).await? {
            None => {
                return Ok(Pass {
                    deleted,
                    end: PassEnd::LockHeldElsewhere,
                })
            }
            Some(n) => {
                deleted += n;
                if n < PRUNE_BATCH.unsigned_abs() {
                    return Ok(Pass {
                        deleted,
                        end: PassEnd::Done,
                    });
                }
            }
        }
    }
}

/// Reads the size of each of [`TABLES`] and sets the gauges.
pub async fn refresh_sizes(pool: &PgPool) -> Result<(), StoreError> {
    let names: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let rows = sqlx::query(TABLE_SIZES)
        .bind(&names)
        .fetch_all(pool)
        .await?;
    for r in rows {
        let name: String = r.try_get("name")?;
        let bytes: i64 = r.try_get("bytes")?;
        let tuples: f64 = r.try_get("tuples")?;
        // reltuples is -1 until the table is first vacuumed or analyzed.
        metrics::record_table_size(&name, bytes, (tuples >= 0.0).then_some(tuples));
    }
    Ok(())
}

/// The task: a pass and a size refresh, then a pause of `retention.interval`, until `shutdown`
/// turns true (or its sender is gone). Errors are logged and the next pass tries again; the
/// task never ends the service. Closes `pool` when it ends.
pub async fn run(pool: PgPool, retention: Retention, mut shutdown: watch::Receiver<bool>) {
    metrics::record_replies_pruned(0);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if let Some(cutoff) = retention.cutoff(Utc::now()) {
            match prune(&pool, cutoff, &shutdown).await {
                Ok(Pass { deleted, end }) if deleted > 0 => {
                    tracing::info!(
                        deleted,
                        %cutoff,
                        ?end,
                        "stored replies past the retention window deleted"
                    );
                }
                Ok(Pass { end, .. }) => tracing::debug!(%cutoff, ?end, "nothing to prune"),
                Err(e) => {
                    tracing::warn!(
                        error = %e.chain(),
                        "pruning stored replies failed; trying again after the interval"
                    );
                }
            }
        }
        if let Err(e) = refresh_sizes(&pool).await {
            tracing::warn!(error = %e.chain(), "reading the tables' sizes failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.interval) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    pool.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_window_before_now() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = Retention {
            window: Duration::from_secs(7 * 86_400),
            interval: Duration::from_secs(60),
        };
        assert_eq!(
            r.cutoff(now).unwrap().to_rfc3339(),
            "2026-11-23T12:00:00+00:00"
        );
        let longest = Retention {
            window: crate::config::MAX_DURATION,
            ..r
        };
        assert!(longest.cutoff(now).is_some_and(|c| c < now));
    }
}
