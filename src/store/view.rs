//! The events' view and log by row: the view's columns and how a row becomes an
//! [`EventState`], upserting views (repairs), and reading one event's view or history.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::decide::Source;
use crate::domain::projection::EventState;
use crate::drf::pyjson;

use super::StoreError;

/// The view's columns as [`view_from_row`] reads them (the JSON ones as text, for Python's
/// parser).
pub(crate) const VIEW_COLUMNS: &str = r#"event_uuid, version, "user"::text AS "user", action, app, context::text AS context, client_ip, created, expires, brand::text AS brand"#;

/// The view in a row selected with [`VIEW_COLUMNS`].
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

/// Inserts or replaces the view rows `c` (no version guard: for repairs, never for the
/// processor's writes).
async fn upsert_columns(
    tx: &mut Transaction<'_, Postgres>,
    c: &ViewColumns,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if c.uuid.is_empty() {
        return Ok(());
    }
    let q = sqlx::query(
        r#"INSERT INTO events (event_uuid, version, "user", action, app, context, client_ip, created, expires, brand, updated_at)
           SELECT u, v, us::jsonb, a, ap, co::jsonb, ip, cr, ex, br::jsonb, $11
           FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[])
                AS t(u, v, us, a, ap, co, ip, cr, ex, br)
           ON CONFLICT (event_uuid) DO UPDATE SET
             version = EXCLUDED.version, "user" = EXCLUDED."user", action = EXCLUDED.action,
             app = EXCLUDED.app, context = EXCLUDED.context, client_ip = EXCLUDED.client_ip,
             expires = EXCLUDED.expires, brand = EXCLUDED.brand, updated_at = EXCLUDED.updated_at"#,
    );
    c.bind(q, None).bind(now).execute(&mut **tx).await?;
    Ok(())
}

/// View rows as columns, for the multi-row statements.
#[derive(Debug, Default)]
pub(super) struct ViewColumns {
    pub(super) uuid: Vec<Uuid>,
    pub(super) version: Vec<i64>,
    pub(super) user: Vec<String>,
    pub(super) action: Vec<String>,
    pub(super) app: Vec<String>,
    pub(super) context: Vec<String>,
    pub(super) client_ip: Vec<Option<String>>,
    pub(super) created: Vec<DateTime<Utc>>,
    pub(super) expires: Vec<DateTime<Utc>>,
    pub(super) brand: Vec<String>,
}

/// A query of the multi-row statements, its parameters bound in order.
pub(super) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl ViewColumns {
    /// Binds the columns as the next ten parameters (eleven with `read_versions`, the write
    /// function's, bound after the versions).
    pub(super) fn bind<'q>(
        &'q self,
        q: PgQuery<'q>,
        read_versions: Option<&'q Vec<i64>>,
    ) -> PgQuery<'q> {
        let q = q.bind(&self.uuid).bind(&self.version);
        let q = match read_versions {
            Some(v) => q.bind(v),
            None => q,
        };
        q.bind(&self.user)
            .bind(&self.action)
            .bind(&self.app)
            .bind(&self.context)
            .bind(&self.client_ip)
            .bind(&self.created)
            .bind(&self.expires)
            .bind(&self.brand)
    }

    pub(super) fn push(&mut self, s: &EventState) {
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
