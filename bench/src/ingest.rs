//! (c) PostgreSQL's limit: the rows the processor writes for the same commands (log rows, views,
//! stored replies), decided in memory with the processor's own decoding and decisions, then
//! written by plain `INSERT … SELECT FROM unnest` statements, unfenced, in large transactions;
//! only the database time is counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, Postgres};
use uuid::Uuid;

use event_updater::domain::auth::AuthMode;
use event_updater::domain::command::{self, Command, Incoming};
use event_updater::domain::decide::{
    decide_batch, BatchSettings, Effects, RowCounts, Source, StoredState,
};
use event_updater::domain::projection::EventState;
use event_updater::store;

use crate::cost::{show_cost, Cost, Mark};
use crate::procstat::Probe;
use crate::run::{Bench, Scope};
use crate::units::fmt_count;

/// Commands per transaction of the PostgreSQL limit (c).
pub const INGEST_CHUNK: u64 = 20_000;

/// What the PostgreSQL limit (c) wrote, and its rate: commands per second of database time.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub commands: u64,
    pub rate: f64,
    pub transactions: u64,
    pub log_rows: u64,
    pub view_upserts: u64,
    pub reply_rows: u64,
    /// PostgreSQL's CPU and WAL per command over the ingest (no processor, no Kafka).
    pub cost: Cost,
}

impl Bench {
    /// (c): PostgreSQL's limit for the same rows: the log rows, views and stored replies of the
    /// N commands, computed in memory with the processor's own decoding and decisions, then
    /// written by plain `INSERT … SELECT FROM unnest` statements in large transactions
    /// ([`INGEST_CHUNK`] commands each, one view row per event touched in a chunk), without
    /// Kafka and without the processor's fences; only the database time is counted.
    pub async fn pg_ingest(&self, scope: Scope) -> anyhow::Result<Ingest> {
        let n = self.args.commands;
        self.progress(format_args!(
            "PostgreSQL ingest (c): the rows of {n} commands, {INGEST_CHUNK} per transaction"
        ));
        let pool = store::connect(&scope.db_url, 1).await?;
        self.checkpoint().await;
        let mut states: HashMap<Uuid, EventState> = HashMap::new();
        let mut db_time = Duration::ZERO;
        let mut out = Ingest {
            commands: n,
            rate: 0.0,
            transactions: 0,
            log_rows: 0,
            view_upserts: 0,
            reply_rows: 0,
            cost: Cost::default(),
        };
        // PostgreSQL alone: no processor, and Kafka has no part in it.
        let probe = Probe {
            postmaster: self.probe().postmaster,
            ..Probe::default()
        };
        let mark = Mark::now(&probe, &self.admin_url, true).await;
        let mut i = 0;
        while i < n {
            let end = n.min(i + INGEST_CHUNK);
            let now = Utc::now();
            let effects = self.ingest_rows(i..end, &states, now);
            let writes = unfenced_writes(&effects, now);
            let t = Instant::now();
            let mut tx = pool.begin().await?;
            for statement in writes {
                statement.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            db_time += t.elapsed();
            out.transactions += 1;
            let RowCounts {
                log,
                views,
                replies,
            } = effects.counts();
            out.log_rows += log as u64;
            out.view_upserts += views as u64;
            out.reply_rows += replies as u64;
            for v in effects.views {
                states.insert(v.state.event_uuid, v.state);
            }
            i = end;
        }
        out.cost = mark.cost(&probe, &self.admin_url, n).await;
        pool.close().await;
        out.rate = n as f64 / db_time.as_secs_f64().max(1e-9);
        self.progress(format_args!(
            "PostgreSQL ingest (c): {} cmd/s ({} log rows, {} view upserts, \
            {} replies); per command: {}",
            fmt_count(out.rate),
            out.log_rows,
            out.view_upserts,
            out.reply_rows,
            show_cost(&out.cost)
        ));
        Ok(out)
    }

    /// Decodes and decides commands `range` in memory with the processor's own functions
    /// ([`command::decode`], [`decide_batch`]), against `states` (the events as the log has them
    /// so far). Tokens are not part of the limit: its records carry none, and the
    /// rows are those of authorized commands (one scope).
    fn ingest_rows(
        &self,
        range: std::ops::Range<u64>,
        states: &HashMap<Uuid, EventState>,
        now: DateTime<Utc>,
    ) -> Effects {
        let commands: Vec<(Command, Source)> = range
            .map(|i| {
                let c = self.workload.command(i);
                let source = Source {
                    topic: "bench".into(),
                    partition: (i % self.partitions.max(1) as u64) as i32,
                    offset: i64::try_from(i).unwrap_or(i64::MAX),
                };
                let incoming = Incoming {
                    topic: source.topic.clone(),
                    partition: source.partition,
                    offset: source.offset,
                    key: Some(c.key.into_bytes()),
                    payload: Some(c.value.into_bytes()),
                    ..Incoming::default()
                };
                let cmd =
                    command::decode(&incoming, self.cfg.max_message_bytes, AuthMode::Disabled);
                (cmd, source)
            })
            .collect();
        // What the database would know: the current state of every event the commands name.
        let mut known = StoredState::default();
        for (c, _) in &commands {
            if let Some(u) = c.action.event_uuid_to_apply() {
                if let Some(s) = states.get(&u) {
                    known.states.entry(u).or_insert_with(|| s.clone());
                }
            }
        }
        let rules = BatchSettings {
            auth_mode: AuthMode::Disabled,
            max_reply_bytes: self.cfg.max_reply_bytes,
        };
        decide_batch(&commands, known, rules, now).1
    }
}

/// The log rows, as the processor's write has them but for their scopes (one scope here).
const INSERT_LOG: &str = "INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset)
     SELECT u, v, r, c::jsonb, $8, t, p, o
     FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[]) AS x(u, v, r, c, t, p, o)";

/// The views, inserted or replaced (no version fence).
const UPSERT_VIEWS: &str = r#"INSERT INTO events (event_uuid, version, "user", action, app, context, client_ip, created, expires, brand, updated_at)
     SELECT u, v, us::jsonb, a, ap, co::jsonb, ip, cr, ex, br::jsonb, $11
     FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[])
          AS t(u, v, us, a, ap, co, ip, cr, ex, br)
     ON CONFLICT (event_uuid) DO UPDATE SET
       version = EXCLUDED.version, "user" = EXCLUDED."user", action = EXCLUDED.action,
       app = EXCLUDED.app, context = EXCLUDED.context, client_ip = EXCLUDED.client_ip,
       expires = EXCLUDED.expires, brand = EXCLUDED.brand, updated_at = EXCLUDED.updated_at"#;

/// The stored replies.
const INSERT_REPLIES: &str = "INSERT INTO command_replies (scope, request_id, fingerprint, event_uuid, status, version, reply, handled_at, source_topic, source_partition, source_offset)
     SELECT sc, r, f, u, s, v, b, $11, t, p, o
     FROM UNNEST($1::bytea[], $2::text[], $3::bytea[], $4::uuid[], $5::int2[], $6::int8[], $7::bytea[], $8::text[], $9::int4[], $10::int8[]) AS x(sc, r, f, u, s, v, b, t, p, o)";

/// The partitions' applied offsets, raised as the processor raises them (the migrations'
/// function).
const RECORD_OFFSETS: &str = "SELECT event_updater_record_offsets($1, $2, $3, $4)";

/// A statement with its parameters bound.
type Statement = sqlx::query::Query<'static, Postgres, PgArguments>;

/// One chunk's rows as plain `INSERT … SELECT FROM unnest` statements, unfenced: the log rows,
/// the views (where any), the stored replies and the applied offsets, each column an array
/// built from the processor's decided [`Effects`]. Bound here, before the clock starts.
fn unfenced_writes(e: &Effects, now: DateTime<Utc>) -> Vec<Statement> {
    let log = &e.log;
    let mut out = vec![sqlx::query(INSERT_LOG)
        .bind(column(log, |l| l.event_uuid))
        .bind(column(log, |l| l.version))
        .bind(column(log, |l| l.request_id.clone()))
        .bind(column(log, |l| l.change.to_string()))
        .bind(column(log, |l| l.source.topic.clone()))
        .bind(column(log, |l| l.source.partition))
        .bind(column(log, |l| l.source.offset))
        .bind(now)];
    let views: Vec<&EventState> = e.views.iter().map(|v| &v.state).collect();
    if !views.is_empty() {
        out.push(
            sqlx::query(UPSERT_VIEWS)
                .bind(column(&views, |s| s.event_uuid))
                .bind(column(&views, |s| s.version))
                .bind(column(&views, |s| s.user.to_string()))
                .bind(column(&views, |s| s.action.clone()))
                .bind(column(&views, |s| s.app.clone()))
                .bind(column(&views, |s| s.context.to_string()))
                .bind(column(&views, |s| s.client_ip.clone()))
                .bind(column(&views, |s| s.created))
                .bind(column(&views, |s| s.expires))
                .bind(column(&views, |s| s.brand.to_string()))
                .bind(now),
        );
    }
    let r = &e.replies;
    out.push(
        sqlx::query(INSERT_REPLIES)
            .bind(column(r, |r| r.scope.clone()))
            .bind(column(r, |r| r.request_id.clone()))
            .bind(column(r, |r| r.fingerprint.to_vec()))
            .bind(column(r, |r| r.event_uuid))
            .bind(column(r, |r| i16::try_from(r.status).unwrap_or(i16::MAX)))
            .bind(column(r, |r| r.version))
            .bind(column(r, |r| r.reply.to_vec()))
            .bind(column(r, |r| r.source.topic.clone()))
            .bind(column(r, |r| r.source.partition))
            .bind(column(r, |r| r.source.offset))
            .bind(now),
    );
    let o = &e.offsets;
    out.push(
        sqlx::query(RECORD_OFFSETS)
            .bind(column(o, |s| s.topic.clone()))
            .bind(column(o, |s| s.partition))
            .bind(column(o, |s| s.offset))
            .bind(now),
    );
    out
}

/// One column of `rows`: `field` of each.
fn column<T, U>(rows: &[T], field: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(field).collect()
}
