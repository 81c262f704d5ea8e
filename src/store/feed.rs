//! What a batch gives the change feed: the changes it appended or whose commands it saw again,
//! in the batch's order, and the current view of each event they belong to.
//!
//! A change appended now is taken from the batch's own log rows (no read); a change whose
//! command was applied before (a redelivery: a duplicate of a stored 200/201, or a record at or
//! below its partition's applied offset whose stored reply was pruned) is read back from the
//! log, so that it is published again with the same bytes ([`crate::domain::feed`]). The views
//! are the batch's final view rows, and for an event the batch did not change, its row as read
//! after the write.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::command::Command;
use crate::domain::decide::{Effects, LogRow, Outcome, OutcomeKind, Source};
use crate::domain::feed::LogChange;
use crate::domain::projection::EventState;
use crate::drf::pyjson;

use super::{view_from_row, StoreError, VIEW_COLUMNS};

/// The columns [`log_change_from_row`] reads, for a `SELECT … FROM event_log`.
pub const LOG_COLUMNS: &str = "event_uuid, version, request_id, change::text AS change, recorded_at, source_topic, source_partition, source_offset, scope";

/// A batch's part of the feed.
#[derive(Debug, Default)]
pub struct Feed {
    /// Each change with the index of the command (in the batch) that appended it or was
    /// redelivered; in the batch's order, so an event's versions ascend.
    pub changes: Vec<(usize, LogChange)>,
    /// The current view of each event of `changes`, once each.
    pub views: Vec<EventState>,
}

impl Feed {
    /// Appends `later`, a batch applied after this one: its changes after these, and its views
    /// in place of these where they name the same event.
    pub fn extend(&mut self, later: Feed, offset: usize) {
        self.changes
            .extend(later.changes.into_iter().map(|(i, c)| (i + offset, c)));
        for v in later.views {
            self.views.retain(|w| w.event_uuid != v.event_uuid);
            self.views.push(v);
        }
    }
}

/// One row of `event_log` selected with [`LOG_COLUMNS`].
pub fn log_change_from_row(r: &PgRow) -> Result<LogChange, StoreError> {
    let text: String = r.try_get("change")?;
    let change =
        pyjson::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("change: {e}")))?;
    Ok(LogChange {
        event_uuid: r.try_get("event_uuid")?,
        version: r.try_get("version")?,
        change,
        applied_at: r.try_get("recorded_at")?,
        request_id: r.try_get("request_id")?,
        scope: r.try_get("scope")?,
        topic: r.try_get("source_topic")?,
        partition: r.try_get("source_partition")?,
        offset: r.try_get("source_offset")?,
    })
}

/// The log rows of `keys` (event, version), in no particular order; a key without a row is
/// left out.
pub async fn read_changes(
    conn: &mut PgConnection,
    keys: &[(Uuid, i64)],
) -> Result<Vec<LogChange>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (uuids, versions): (Vec<Uuid>, Vec<i64>) = keys.iter().copied().unzip();
    let rows = sqlx::query(&format!(
        "SELECT {LOG_COLUMNS} FROM event_log
         WHERE (event_uuid, version) IN (SELECT * FROM unnest($1::uuid[], $2::int8[]))"
    ))
    .bind(&uuids)
    .bind(&versions)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(log_change_from_row).collect()
}

/// The log rows appended by the command records at `sources`, of their events (an event's rows,
/// by the primary key, filtered by source): a record at or below its partition's applied offset
/// whose stored reply was pruned names no version.
async fn read_changes_by_source(
    conn: &mut PgConnection,
    sources: &[(Uuid, &Source)],
) -> Result<Vec<LogChange>, StoreError> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let uuids: Vec<Uuid> = sources.iter().map(|(u, _)| *u).collect();
    let topics: Vec<&str> = sources.iter().map(|(_, s)| s.topic.as_str()).collect();
    let partitions: Vec<i32> = sources.iter().map(|(_, s)| s.partition).collect();
    let offsets: Vec<i64> = sources.iter().map(|(_, s)| s.offset).collect();
    let rows = sqlx::query(&format!(
        "SELECT {LOG_COLUMNS} FROM event_log
         WHERE (event_uuid, source_topic, source_partition, source_offset) IN
               (SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int8[]))"
    ))
    .bind(&uuids)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(log_change_from_row).collect()
}

/// The feed of a batch whose effects were just written on `conn` (in its transaction, where it
/// has one): see the module doc. Reads only where the batch saw commands applied before.
pub async fn collect(
    conn: &mut PgConnection,
    commands: &[(Command, Source)],
    outcomes: &[Outcome],
    effects: Effects,
    written_at: DateTime<Utc>,
) -> Result<Feed, StoreError> {
    let mut appended: HashMap<(Uuid, i64), LogRow> = effects
        .log
        .into_iter()
        .map(|l| ((l.event_uuid, l.version), l))
        .collect();
    let mut final_views: HashMap<Uuid, EventState> = effects
        .views
        .into_iter()
        .map(|v| (v.state.event_uuid, v.state))
        .collect();
    // Per command: the change, where known now; else what to read.
    let mut slots: Vec<(usize, Option<LogChange>)> = Vec::new();
    let mut by_key: Vec<(Uuid, i64)> = Vec::new();
    let mut by_source: Vec<(Uuid, &Source)> = Vec::new();
    for (i, ((cmd, source), o)) in commands.iter().zip(outcomes).enumerate() {
        match (o.kind, o.change) {
            (OutcomeKind::New, Some(key)) => {
                let Some(l) = appended.remove(&key) else {
                    continue;
                };
                slots.push((
                    i,
                    Some(LogChange {
                        event_uuid: l.event_uuid,
                        version: l.version,
                        change: l.change,
                        applied_at: written_at,
                        request_id: l.request_id,
                        scope: Some(l.scope),
                        topic: l.source.topic,
                        partition: l.source.partition,
                        offset: l.source.offset,
                    }),
                ));
            }
            (OutcomeKind::Duplicate, Some(key)) => {
                by_key.push(key);
                slots.push((i, None));
            }
            (OutcomeKind::AlreadyApplied, _) => {
                if let Some(u) = cmd.action.event_uuid_to_apply() {
                    by_source.push((u, source));
                    slots.push((i, None));
                }
            }
            _ => {}
        }
    }
    if slots.is_empty() {
        return Ok(Feed::default());
    }
    let mut read: HashMap<(Uuid, i64), LogChange> = HashMap::new();
    let mut read_by_source: HashMap<(Uuid, String, i32, i64), LogChange> = HashMap::new();
    for c in read_changes(conn, &by_key).await? {
        read.insert((c.event_uuid, c.version), c);
    }
    for c in read_changes_by_source(conn, &by_source).await? {
        read_by_source.insert((c.event_uuid, c.topic.clone(), c.partition, c.offset), c);
    }
    let mut changes = Vec::with_capacity(slots.len());
    for (i, slot) in slots {
        let change = match slot {
            Some(c) => Some(c),
            None => {
                let ((cmd, source), o) = (&commands[i], &outcomes[i]);
                match o.change {
                    Some(key) => read.get(&key).cloned(),
                    None => cmd.action.event_uuid_to_apply().and_then(|u| {
                        read_by_source
                            .get(&(u, source.topic.clone(), source.partition, source.offset))
                            .cloned()
                    }),
                }
            }
        };
        // A redelivered command whose change is not in the log (its event was changed by a
        // command a pruned reply no longer names, or a previous release's row): nothing to
        // publish again.
        if let Some(c) = change {
            changes.push((i, c));
        }
    }
    // The views: the batch's own final rows; the others (events only seen again) as they are.
    let mut views: Vec<EventState> = Vec::new();
    let mut unread: Vec<Uuid> = Vec::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    for (_, c) in &changes {
        let u = c.event_uuid;
        if !seen.insert(u) {
            continue;
        }
        match final_views.remove(&u) {
            Some(v) => views.push(v),
            None => unread.push(u),
        }
    }
    views.extend(read_views(conn, &unread).await?);
    Ok(Feed { changes, views })
}

/// The current view rows of `events`, in no particular order (an event without one is left
/// out).
pub async fn read_views(
    conn: &mut PgConnection,
    events: &[Uuid],
) -> Result<Vec<EventState>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!(
        "SELECT {VIEW_COLUMNS} FROM events WHERE event_uuid = ANY($1)"
    ))
    .bind(events)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(view_from_row).collect()
}
