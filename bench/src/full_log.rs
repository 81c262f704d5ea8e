//! The drain with a full log: the same drain after `--preload-changes` changes (and their stored
//! replies and views) of other events were put in the log by set-based SQL.

use std::time::Instant;

use anyhow::Context;
use sqlx::PgPool;

use crate::child::Feed;
use crate::drain::Drain;
use crate::run::{Bench, Scope};
use crate::units::fmt_count;

/// The drain with a full log, and how long filling the log took.
#[derive(Debug, Clone)]
pub struct Preloaded {
    pub changes: u64,
    pub fill_seconds: f64,
    pub drain: Drain,
}

impl Bench {
    /// The drain again, after filling the log with `changes` changes of other events.
    pub async fn preloaded_drain(&self, scope: Scope, changes: u64) -> anyhow::Result<Preloaded> {
        let (pool, authorization) = self.prepare_database(&scope).await?;
        let started = Instant::now();
        self.preload(&pool, changes).await?;
        pool.close().await;
        let fill_seconds = started.elapsed().as_secs_f64();
        let label = format!("drain, {} changes in the log", fmt_count(changes as f64));
        let drain = self
            .drain(
                &scope,
                self.args.commands,
                self.max_batch,
                Feed::On,
                &label,
                Some(authorization),
            )
            .await?;
        Ok(Preloaded {
            changes,
            fill_seconds,
            drain,
        })
    }

    pub async fn preload(&self, pool: &PgPool, changes: u64) -> anyhow::Result<()> {
        const CHUNK: u64 = 250_000;
        let total = i64::try_from(changes).context("--preload-changes is too large")?;
        let mut from = 0i64;
        while from < total {
            let to = total.min(from + CHUNK as i64);
            sqlx::query(PRELOAD_LOG)
                .bind(from)
                .bind(to)
                .execute(pool)
                .await?;
            sqlx::query(PRELOAD_REPLIES)
                .bind(from)
                .bind(to)
                .execute(pool)
                .await?;
            from = to;
            self.progress(format_args!("preload: {from} of {total} changes"));
        }
        sqlx::query(PRELOAD_VIEWS).bind(total).execute(pool).await?;
        sqlx::query("VACUUM (ANALYZE) event_log, command_replies, events")
            .execute(pool)
            .await?;
        Ok(())
    }
}

const PRELOAD_LOG: &str = "INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset)
     SELECT md5('preload-' || (g / 10))::uuid, g % 10 + 1, 'preload-' || g,
            jsonb_build_object('action', 'login', 'app', 'authentik.core', 'user', jsonb_build_object('pk', 1),
                               'context', jsonb_build_object('n', g), 'client_ip', '10.0.0.1'),
            now(), 'preload', (g % 6)::int, g
     FROM generate_series($1::int8, $2::int8 - 1) AS g";

/// The stored replies of those changes, about the size of real ones.
const PRELOAD_REPLIES: &str = "INSERT INTO command_replies (scope, request_id, fingerprint, event_uuid, status, version, reply, handled_at, source_topic, source_partition, source_offset)
     SELECT '\\x'::bytea, 'preload-' || g, sha256(convert_to('preload-' || g, 'UTF8')), md5('preload-' || (g / 10))::uuid,
            (CASE WHEN g % 10 = 0 THEN 201 ELSE 200 END)::int2, g % 10 + 1,
            convert_to(json_build_object('request_id', 'preload-' || g, 'event_uuid', md5('preload-' || (g / 10))::uuid,
                'status', 200, 'version', g % 10 + 1,
                'body', json_build_object('pk', md5('preload-' || (g / 10))::uuid, 'user', json_build_object('pk', 1),
                    'action', 'login', 'app', 'authentik.core', 'context', json_build_object('n', g),
                    'client_ip', '10.0.0.1', 'created', now(), 'expires', now() + interval '365 days',
                    'brand', json_build_object()))::text, 'UTF8'),
            now(), 'preload', (g % 6)::int, g
     FROM generate_series($1::int8, $2::int8 - 1) AS g";

/// The views of the preloaded events (`$1`: the number of changes).
const PRELOAD_VIEWS: &str = r#"INSERT INTO events (event_uuid, version, "user", action, app, context, client_ip, created, expires, brand, updated_at)
     SELECT md5('preload-' || e)::uuid, LEAST(10, $1::int8 - e * 10), '{"pk": 1}', 'login', 'authentik.core',
            jsonb_build_object('n', e * 10 + 9), '10.0.0.1', now(), now() + interval '365 days', '{}', now()
     FROM generate_series(0, ($1::int8 - 1) / 10) AS e"#;
