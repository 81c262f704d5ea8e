//! The batch's write: its decided effects as the columns of one call of the fenced write
//! function ([`Writes`]).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::decide::{Effects, LogRow, Source, StoredReply, ViewRow};

use super::view::{PgQuery, ViewColumns};
use super::StoreError;

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

impl LogRows {
    /// Binds the columns, in the function's order, as the next eight parameters.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(&self.uuid)
            .bind(&self.version)
            .bind(&self.request_id)
            .bind(&self.change)
            .bind(&self.topic)
            .bind(&self.partition)
            .bind(&self.offset)
            .bind(&self.scope)
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
        self.columns.bind(q, Some(&self.read_version))
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
