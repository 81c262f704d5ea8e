//! The store's side of `event-updater feed backfill`: the event log read page by page in the
//! feed's order, the versions of the views a page covered (their rows are read as the live feed
//! reads them, [`super::feed::read_views`]), and the job's cursor.
//!
//! A job is its arguments and target topics ([`Job`]). Its log rows are read with keyset
//! pagination on the log's primary key (`event_uuid`, `version`) ([`page`]): each page is one
//! index range scan after the last row of the page before, so an event's versions come in
//! ascending order and a page costs the same at the start of the log as at its end.
//!
//! Invariants the cursor (`feed_backfill_cursors`, one row per unfinished job) keeps:
//! - It names the last row of a page whose records the broker has acknowledged, or the job's
//!   start: the caller moves it ([`advance`]) only after every record of the page, and of the
//!   pages before, was acknowledged. A kill -9 between the acknowledgement and the move leaves
//!   it one page behind (that page is published again: the same bytes), never ahead.
//! - It exists only while the job is unfinished: [`finish`] deletes it, so a rerun after a
//!   complete run starts over (changes appended meanwhile to events the run had passed would
//!   otherwise be missed), and a rerun after an interrupted one resumes ([`open`]).
//! - One run per job at a time: [`lock`] takes a session advisory lock on the job's key, held by
//!   the run's connection and released by PostgreSQL when that connection ends, however the
//!   tool ends.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::feed::{log_change_from_row, LOG_COLUMNS};
use super::StoreError;
use crate::domain::feed::LogChange;

/// Log rows per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 1_000;

/// The first key of the two-key advisory locks of backfill jobs (`"feed"` in ASCII), so that
/// they never meet sqlx's migration lock or another tool's.
const LOCK_CLASS: i32 = 0x6665_6564;

/// Why a backfill cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another run of the same job holds its lock.
    #[error("another `feed backfill` of the same job is running ({job}); wait for it or stop it")]
    AlreadyRunning { job: String },
}

/// What a backfill publishes: the log rows it selects and where their records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The topic of the change records.
    pub changes_topic: String,
    /// The topic of the view records; empty for none.
    pub view_topic: String,
    /// Only this event's rows.
    pub event: Option<Uuid>,
    /// Only rows recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl Job {
    /// The job's identity, the cursor's key: its arguments and topics as compact JSON (the
    /// time in microseconds, as PostgreSQL keeps it).
    pub fn key(&self) -> String {
        json!({
            "changes_topic": self.changes_topic,
            "view_topic": self.view_topic,
            "event": self.event.map(|u| u.to_string()),
            "since": self.since.map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        })
        .to_string()
    }

    /// Where the job starts: before its event's first version, or before the whole log.
    pub fn start(&self) -> Position {
        Position {
            event_uuid: self.event.unwrap_or(Uuid::nil()),
            version: 0,
        }
    }

    /// The `WHERE` clause of the job's rows after `$1`, `$2` (event, version), with `$3` its
    /// event and `$4` its time where it has them. The event's filter is an equality on the
    /// key's first column, so a one-event job scans that event's rows alone.
    fn after_clause(&self) -> String {
        let mut clause = "(event_uuid, version) > ($1, $2)".to_string();
        if self.event.is_some() {
            clause.push_str(" AND event_uuid = $3");
        }
        if self.since.is_some() {
            clause.push_str(if self.event.is_some() {
                " AND recorded_at >= $4"
            } else {
                " AND recorded_at >= $3"
            });
        }
        clause
    }

    /// Binds the parameters of [`Job::after_clause`].
    fn bind_after<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        after: Position,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut q = q.bind(after.event_uuid).bind(after.version);
        if let Some(u) = self.event {
            q = q.bind(u);
        }
        if let Some(t) = self.since {
            q = q.bind(t);
        }
        q
    }
}

/// A place in the log's order: the row (`event_uuid`, `version`), or before one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub event_uuid: Uuid,
    pub version: i64,
}

impl Position {
    /// The position of a change's row.
    pub fn of(c: &LogChange) -> Position {
        Position {
            event_uuid: c.event_uuid,
            version: c.version,
        }
    }
}

/// An unfinished job's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last row acknowledged (or the job's start).
    pub after: Position,
    /// Change records acknowledged by the runs so far.
    pub published: i64,
    pub started_at: DateTime<Utc>,
    /// Whether an earlier run left it (this run resumes).
    pub resumed: bool,
}

/// The job's lock, held until the connection it was taken on ends (see the module doc).
/// Returns [`BackfillError::AlreadyRunning`] when another session holds it.
pub async fn lock(conn: &mut PgConnection, job: &Job) -> Result<(), BackfillError> {
    let key = job.key();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(&key)
        .fetch_one(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    match got {
        true => Ok(()),
        false => Err(BackfillError::AlreadyRunning { job: key }),
    }
}

/// The job's cursor: the one an interrupted run left (unless `restart`), else a new one at the
/// job's start, stored before anything is published.
pub async fn open(conn: &mut PgConnection, job: &Job, restart: bool) -> Result<Cursor, StoreError> {
    let key = job.key();
    if !restart {
        let row = sqlx::query(
            "SELECT after_uuid, after_version, published, started_at FROM feed_backfill_cursors WHERE job = $1",
        )
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(r) = row {
            return Ok(Cursor {
                after: Position {
                    event_uuid: r.try_get("after_uuid")?,
                    version: r.try_get("after_version")?,
                },
                published: r.try_get("published")?,
                started_at: r.try_get("started_at")?,
                resumed: true,
            });
        }
    }
    let after = job.start();
    let started_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO feed_backfill_cursors AS c
             (job, changes_topic, view_topic, event_uuid, since, after_uuid, after_version, published, started_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, now(), now())
         ON CONFLICT (job) DO UPDATE SET after_uuid = $6, after_version = $7, published = 0,
             started_at = now(), updated_at = now()
         RETURNING c.started_at",
    )
    .bind(&key)
    .bind(&job.changes_topic)
    .bind(&job.view_topic)
    .bind(job.event)
    .bind(job.since)
    .bind(after.event_uuid)
    .bind(after.version)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Cursor {
        after,
        published: 0,
        started_at,
        resumed: false,
    })
}

/// Moves the job's cursor to `after`, the last row of a page the broker acknowledged whole,
/// counting its `published` records. Call it only then (the module doc's invariant).
pub async fn advance(
    conn: &mut PgConnection,
    job: &Job,
    after: Position,
    published: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE feed_backfill_cursors
         SET after_uuid = $2, after_version = $3, published = published + $4, updated_at = now()
         WHERE job = $1",
    )
    .bind(job.key())
    .bind(after.event_uuid)
    .bind(after.version)
    .bind(published)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends the job: its cursor is deleted, so that the next run with the same arguments starts over.
pub async fn finish(conn: &mut PgConnection, job: &Job) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM feed_backfill_cursors WHERE job = $1")
        .bind(job.key())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// How much of the job is left after `after`: (log rows, events), in one query.
pub async fn remaining(
    conn: &mut PgConnection,
    job: &Job,
    after: Position,
) -> Result<(i64, i64), StoreError> {
    let sql = format!(
        "SELECT count(*) AS changes, count(DISTINCT event_uuid) AS events FROM event_log WHERE {}",
        job.after_clause()
    );
    let r = job
        .bind_after(sqlx::query(&sql), after)
        .fetch_one(&mut *conn)
        .await?;
    Ok((r.try_get("changes")?, r.try_get("events")?))
}

/// The job's next `limit` log rows after `after`, in (`event_uuid`, `version`) order, read as the
/// live feed reads them ([`log_change_from_row`]).
pub async fn page(
    conn: &mut PgConnection,
    job: &Job,
    after: Position,
    limit: u32,
) -> Result<Vec<LogChange>, StoreError> {
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM event_log WHERE {} ORDER BY event_uuid, version LIMIT {limit}",
        job.after_clause()
    );
    let rows = job
        .bind_after(sqlx::query(&sql), after)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(log_change_from_row).collect()
}

/// The current versions of `events`' view rows, by event.
pub async fn view_versions(
    conn: &mut PgConnection,
    events: &[Uuid],
) -> Result<HashMap<Uuid, i64>, StoreError> {
    let rows = sqlx::query("SELECT event_uuid, version FROM events WHERE event_uuid = ANY($1)")
        .bind(events)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("event_uuid")?, r.try_get("version")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> Job {
        Job {
            changes_topic: "event-changes".into(),
            view_topic: "event-views".into(),
            event: None,
            since: None,
        }
    }

    #[test]
    fn a_job_is_keyed_by_every_argument_and_topic() {
        let base = job();
        let event = Job {
            event: Some(Uuid::from_u128(7)),
            ..job()
        };
        let since = Job {
            since: Some(Utc.timestamp_opt(1_796_000_000, 123_456_000).unwrap()),
            ..job()
        };
        let other_topic = Job {
            changes_topic: "elsewhere".into(),
            ..job()
        };
        let no_views = Job {
            view_topic: String::new(),
            ..job()
        };
        let keys: Vec<String> = [&base, &event, &since, &other_topic, &no_views]
            .iter()
            .map(|j| j.key())
            .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(base.key(), job().key(), "the same arguments, the same key");
        assert_eq!(
            since.key(),
            r#"{"changes_topic":"event-changes","view_topic":"event-views","event":null,"since":"2026-11-30T00:53:20.123456Z"}"#
        );
    }

    #[test]
    fn a_job_starts_before_its_event_or_before_the_whole_log() {
        assert_eq!(
            job().start(),
            Position {
                event_uuid: Uuid::nil(),
                version: 0
            }
        );
        let u = Uuid::from_u128(42);
        let one = Job {
            event: Some(u),
            ..job()
        };
        assert_eq!(
            one.start(),
            Position {
                event_uuid: u,
                version: 0
            }
        );
    }

    #[test]
    fn the_filters_number_their_parameters_in_binding_order() {
        let t = Some(Utc.timestamp_opt(0, 0).unwrap());
        let u = Some(Uuid::from_u128(1));
        let clause = |event, since| {
            Job {
                event,
                since,
                ..job()
            }
            .after_clause()
        };
        assert_eq!(clause(None, None), "(event_uuid, version) > ($1, $2)");
        assert_eq!(
            clause(u, None),
            "(event_uuid, version) > ($1, $2) AND event_uuid = $3"
        );
        assert_eq!(
            clause(None, t),
            "(event_uuid, version) > ($1, $2) AND recorded_at >= $3"
        );
        assert_eq!(
            clause(u, t),
            "(event_uuid, version) > ($1, $2) AND event_uuid = $3 AND recorded_at >= $4"
        );
    }

    #[test]
    fn positions_order_as_the_log_key() {
        let a = Position {
            event_uuid: Uuid::from_u128(1),
            version: 9,
        };
        let b = Position {
            event_uuid: Uuid::from_u128(2),
            version: 1,
        };
        assert!(a < b);
        assert!(
            Position {
                event_uuid: Uuid::nil(),
                version: 0
            } < a
        );
    }
}
