//! The highest offset applied per command partition (`applied_offsets`): read for each batch
//! ([`read_applied`]) so that a record at or below it is answered without being applied again
//! (see [`crate::domain::decide::decide_batch`]), raised by the batch's own write (the
//! `event_updater_write_batch_v3` function, in the same statement as its rows, never lowered),
//! and listed or reset by the operator ([`list`], [`reset`]) after a command topic was deleted
//! and created again (its offsets restart at 0).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use super::StoreError;
use crate::domain::decide::Source;

/// The applied offsets of the partitions `sources` come from, by (topic, partition): one
/// lookup by primary key.
pub async fn read_applied(
    conn: &mut PgConnection,
    sources: impl Iterator<Item = &Source>,
) -> Result<HashMap<(String, i32), i64>, StoreError> {
    let mut keys: Vec<(&str, i32)> = sources.map(|s| (s.topic.as_str(), s.partition)).collect();
    keys.sort_unstable();
    keys.dedup();
    let (topics, partitions): (Vec<&str>, Vec<i32>) = keys.into_iter().unzip();
    let rows = sqlx::query(
        "SELECT a.topic, a.partition, a.applied_offset
         FROM unnest($1::text[], $2::int4[]) AS k(topic, partition)
         JOIN applied_offsets a ON a.topic = k.topic AND a.partition = k.partition",
    )
    .bind(&topics)
    .bind(&partitions)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get("topic")?, r.try_get("partition")?),
                r.try_get("applied_offset")?,
            ))
        })
        .collect()
}

/// One partition's stored applied offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedOffset {
    pub topic: String,
    pub partition: i32,
    pub applied_offset: i64,
    pub updated_at: DateTime<Utc>,
}

impl AppliedOffset {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<AppliedOffset, StoreError> {
        Ok(AppliedOffset {
            topic: r.try_get("topic")?,
            partition: r.try_get("partition")?,
            applied_offset: r.try_get("applied_offset")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

/// Every stored applied offset, by topic and partition.
pub async fn list(pool: &PgPool) -> Result<Vec<AppliedOffset>, StoreError> {
    let rows = sqlx::query(
        "SELECT topic, partition, applied_offset, updated_at FROM applied_offsets ORDER BY topic, partition",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(AppliedOffset::from_row).collect()
}

/// Forgets the applied offsets of `topic` (of one partition, or all of them), so that its
/// records are applied from its current offsets on: for a command topic that was deleted and
/// created again. Returns the rows removed. Run it while no processor consumes the topic: a
/// batch in flight would store its offsets again.
pub async fn reset(
    pool: &PgPool,
    topic: &str,
    partition: Option<i32>,
) -> Result<Vec<AppliedOffset>, StoreError> {
    let rows = sqlx::query(
        "DELETE FROM applied_offsets WHERE topic = $1 AND ($2::int4 IS NULL OR partition = $2)
         RETURNING topic, partition, applied_offset, updated_at",
    )
    .bind(topic)
    .bind(partition)
    .fetch_all(pool)
    .await?;
    let mut out = rows
        .iter()
        .map(AppliedOffset::from_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort_by_key(|a| a.partition);
    Ok(out)
}
