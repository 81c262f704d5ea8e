//! Applying a batch: read what it needs, decide it (pure), write its effects in one fenced
//! statement ([`apply_batch`]); when a fence trips, the same under row locks
//! ([`apply_batch_locked`]).

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::command::Command;
use crate::domain::decide::{decide_batch, BatchSettings, Outcome, Source};
use crate::domain::projection::{truncate_to_micros, EventState};
use crate::metrics::BatchParts;

use super::read::{read_batch, UNCAPPED};
use super::{feed, sizes, view_from_row, Feed, Fit, StoreError, Writes, VIEW_COLUMNS};

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
    settings: BatchSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    Ok(
        apply_batch_timed(pool, commands, settings, now, false, None)
            .await?
            .outcomes,
    )
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
    settings: BatchSettings,
    now: DateTime<Utc>,
    with_feed: bool,
    fit: Option<Fit<'_>>,
) -> Result<Applied, StoreError> {
    // As PostgreSQL keeps it, so that a change's time reads back the same.
    let now = truncate_to_micros(now);
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let auth_mode = settings.auth_mode;
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
    let (outcomes, effects) = decide_batch(commands, known, settings, now);
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
            tracing::debug!(
                error = %e,
                "a write fence tripped; deciding the batch again under row locks"
            );
            drop(conn);
            apply_locked(pool, commands, settings, now, with_feed).await
        }
        Err(e) => Err(e),
    }
}

/// The locking path: reads under `FOR UPDATE` (rows locked in event-id order, so concurrent
/// batches cannot deadlock) and writes in the same transaction.
pub async fn apply_batch_locked(
    pool: &PgPool,
    commands: &[(Command, Source)],
    settings: BatchSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    Ok(
        apply_locked(pool, commands, settings, truncate_to_micros(now), false)
            .await?
            .outcomes,
    )
}

async fn apply_locked(
    pool: &PgPool,
    commands: &[(Command, Source)],
    settings: BatchSettings,
    now: DateTime<Utc>,
    with_feed: bool,
) -> Result<Applied, StoreError> {
    let auth_mode = settings.auth_mode;
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
    let (outcomes, effects) = decide_batch(commands, known, settings, now);
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
