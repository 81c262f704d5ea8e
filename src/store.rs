//! PostgreSQL: the event log, the projection and the stored replies, written one batch per
//! transaction.
//!
//! Invariants this file keeps (the tests in `tests/` check them):
//! - A batch's effects (log rows, view rows, stored replies) commit together or not at all.
//! - Every handled request id has exactly one row in `command_replies`; a request id seen again
//!   is answered from that row (the same bytes) or, with other content, with a 422.
//! - An event's versions are 1..n without gaps: the next version is read under `FOR UPDATE` on
//!   the view row, and the log's primary key refuses a repeat from a concurrent writer (the
//!   batch then fails with [`StoreError::Conflict`] and is retried whole).
//! - Commands are applied in the order given, so per-partition order is kept.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::auth::{self, AuthMode, Credentials, TokenGrant};
use crate::command::{Action, Command};
use crate::projection::{self, EventState};
use crate::pyjson;
use crate::reply::{detail, Reply};

/// Errors from the store, sorted by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down: back off and retry the same batch.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A concurrent writer got there first (unique violation, serialization failure,
    /// deadlock): retry the same batch at once; it will see the other writer's work.
    #[error("conflict with a concurrent writer: {0}")]
    Conflict(#[source] sqlx::Error),
    /// The database refused the data itself: isolate the command that carries it.
    #[error("the database refused the data: {0}")]
    Refused(#[source] sqlx::Error),
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

/// Sorts an error by what to do about it. Only errors about the data itself (SQLSTATE classes
/// 22 data exception, 23 integrity, 54 program limit; a row we cannot decode) are `Refused`:
/// anything else, from a refused connection to an unknown state, is retried as `Unavailable`,
/// so that no infrastructure trouble is ever answered as a 400.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "23505" | "40001" | "40P01" => StoreError::Conflict(e),
                c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => {
                    StoreError::Refused(e)
                }
                _ => StoreError::Unavailable(e),
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
            StoreError::Refused(e)
        }
        _ => StoreError::Unavailable(e),
    }
}

/// Creates the database named in `url` when it does not exist, connects a pool, and runs the
/// migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
    create_database_if_missing(&options).await?;
    // sqlx prepares every statement; after five runs PostgreSQL may settle on a generic plan
    // made while the tables were tiny (a sequential scan for `request_id = ANY($1)`), and keep
    // it as they grow. Custom plans are re-made per execution with the real array and sizes.
    let options = options.options([("plan_cache_mode", "force_custom_plan")]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Runs the migrations under `migrations/` (embedded in the binary).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
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

/// Where a command came from; written to the log and to the stored reply.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How one command of a batch ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    /// The reply value.
    pub reply: Arc<Vec<u8>>,
    pub kind: OutcomeKind,
}

/// Whether an outcome was decided now or earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Handled for the first time (applied, or rejected and stored).
    New,
    /// The request id was handled before with the same content: the stored reply.
    Duplicate,
    /// The request id was handled before with other content: a 422, not stored.
    ReusedRequestId,
    /// Authentication or permission failed: a 403, not stored (an unauthenticated producer
    /// must not be able to claim a request id).
    Forbidden,
}

/// A request id's stored answer.
struct Handled {
    fingerprint: Vec<u8>,
    status: u16,
    reply: Arc<Vec<u8>>,
}

/// Applies `commands` (in order) in one transaction and returns one outcome per command.
pub async fn apply_batch(
    pool: &PgPool,
    commands: &[(Command, Source)],
    auth_mode: AuthMode,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = pool.begin().await?;
    let grants = match auth_mode {
        AuthMode::Required => load_grants(&mut tx, commands).await?,
        AuthMode::Disabled => HashMap::new(),
    };

    let ids: Vec<&str> = commands
        .iter()
        .map(|(c, _)| c.request_id.as_str())
        .collect();
    // The commands handled before or earlier in this batch, by request id.
    let mut seen: HashMap<String, Handled> = HashMap::new();
    for row in sqlx::query(
        "SELECT request_id, fingerprint, status, reply FROM command_replies WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    {
        let status: i16 = row.try_get("status")?;
        seen.insert(
            row.try_get("request_id")?,
            Handled {
                fingerprint: row.try_get("fingerprint")?,
                status: u16::try_from(status).unwrap_or_default(),
                reply: Arc::new(row.try_get("reply")?),
            },
        );
    }

    let mut uuids: Vec<Uuid> = commands
        .iter()
        .filter(|(c, _)| !seen.contains_key(&c.request_id))
        .filter_map(|(c, _)| match &c.action {
            Action::Apply { event_uuid, .. } => Some(*event_uuid),
            Action::Reject { .. } => None,
        })
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    let mut states = load_for_update(&mut tx, &uuids).await?;

    let mut outcomes = Vec::with_capacity(commands.len());
    let mut writes = Writes::default();
    let mut touched: Vec<Uuid> = Vec::new();
    for (cmd, source) in commands {
        if auth_mode == AuthMode::Required {
            let grant = match &cmd.credentials {
                Credentials::Bearer(h) => grants.get(h).copied(),
                _ => None,
            };
            if let Some(text) = auth::denial(&cmd.credentials, grant) {
                outcomes.push(unstored(cmd, 403, detail(text), OutcomeKind::Forbidden));
                continue;
            }
        }
        if let Some(handled) = seen.get(&cmd.request_id) {
            outcomes.push(if handled.fingerprint.as_slice() == cmd.fingerprint {
                Outcome {
                    status: handled.status,
                    reply: handled.reply.clone(),
                    kind: OutcomeKind::Duplicate,
                }
            } else {
                let text = format!(
                    "request_id {:?} was already used for a different command.",
                    cmd.request_id
                );
                unstored(cmd, 422, detail(text), OutcomeKind::ReusedRequestId)
            });
            continue;
        }
        let current = match &cmd.action {
            Action::Apply { event_uuid, .. } => states.get(event_uuid),
            Action::Reject { .. } => None,
        };
        let (reply, applied) = decide(cmd, current, now);
        if let Some(applied) = applied {
            writes.applied(&applied, &cmd.request_id, source, now);
            let u = applied.state.event_uuid;
            if !touched.contains(&u) {
                touched.push(u);
            }
            states.insert(u, applied.state);
        }
        let bytes = Arc::new(reply.to_bytes());
        writes.reply(cmd, &reply, &bytes, source, now);
        seen.insert(
            cmd.request_id.clone(),
            Handled {
                fingerprint: cmd.fingerprint.to_vec(),
                status: reply.status,
                reply: bytes.clone(),
            },
        );
        outcomes.push(Outcome {
            status: reply.status,
            reply: bytes,
            kind: OutcomeKind::New,
        });
    }

    for u in &touched {
        if let Some(s) = states.remove(u) {
            writes.view(s);
        }
    }
    writes.write(&mut tx, now).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Decides a new, authenticated command against its event's current state (`None`: the event
/// does not exist): the reply, and for an accepted command what it did. Pure; the caller writes.
pub fn decide(
    cmd: &Command,
    current: Option<&EventState>,
    now: DateTime<Utc>,
) -> (Reply, Option<projection::Applied>) {
    let reply = |event_uuid, status, version, body| Reply {
        request_id: cmd.request_id.clone(),
        event_uuid,
        status,
        version,
        body,
    };
    match &cmd.action {
        Action::Reject {
            event_uuid,
            status,
            body,
        } => (reply(*event_uuid, *status, None, body.clone()), None),
        Action::Apply {
            event_uuid,
            expected_version,
            body,
        } => {
            let current_version = current.map_or(0, |s| s.version);
            match expected_version {
                Some(expected) if *expected != current_version => (
                    reply(
                        Some(*event_uuid),
                        409,
                        None,
                        conflict_body(*expected, current_version),
                    ),
                    None,
                ),
                _ => {
                    let mut applied = projection::apply(*event_uuid, current, body, now);
                    let status = if applied.created { 201 } else { 200 };
                    let body = std::mem::take(&mut applied.response);
                    (
                        reply(Some(*event_uuid), status, Some(applied.state.version), body),
                        Some(applied),
                    )
                }
            }
        }
    }
}

/// The 409 body: DRF's `detail` plus the version the event is at.
fn conflict_body(expected: i64, current: i64) -> Value {
    let text = if current == 0 {
        format!("Version conflict: expected version {expected}, but the event does not exist.")
    } else if expected == 0 {
        format!(
            "Version conflict: expected the event not to exist, but it is at version {current}."
        )
    } else {
        format!(
            "Version conflict: expected version {expected}, but the event is at version {current}."
        )
    };
    json!({"detail": text, "current_version": current})
}

/// A reply that is not stored with the request id (403, 422).
fn unstored(cmd: &Command, status: u16, body: Value, kind: OutcomeKind) -> Outcome {
    let event_uuid = match &cmd.action {
        Action::Apply { event_uuid, .. } => Some(*event_uuid),
        Action::Reject { event_uuid, .. } => *event_uuid,
    };
    let reply = Reply {
        request_id: cmd.request_id.clone(),
        event_uuid,
        status,
        version: None,
        body,
    };
    Outcome {
        status,
        reply: Arc::new(reply.to_bytes()),
        kind,
    }
}

/// The standing of every token the batch's commands present.
async fn load_grants(
    tx: &mut Transaction<'_, Postgres>,
    commands: &[(Command, Source)],
) -> Result<HashMap<[u8; 32], TokenGrant>, StoreError> {
    let mut hashes: Vec<Vec<u8>> = commands
        .iter()
        .filter_map(|(c, _)| match &c.credentials {
            Credentials::Bearer(h) => Some(h.to_vec()),
            _ => None,
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT token_hash, can_change_event,
                revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS usable
         FROM api_tokens WHERE token_hash = ANY($1)",
    )
    .bind(&hashes)
    .fetch_all(&mut **tx)
    .await?;
    let mut grants = HashMap::new();
    for r in rows {
        let h: Vec<u8> = r.try_get("token_hash")?;
        if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
            grants.insert(
                h,
                TokenGrant {
                    usable: r.try_get("usable")?,
                    can_change_event: r.try_get("can_change_event")?,
                },
            );
        }
    }
    Ok(grants)
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
            .map(|ip| crate::ipaddr::pg_inet(&ip)),
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
        c.uuid.push(s.event_uuid);
        c.version.push(s.version);
        c.user.push(s.user.to_string());
        c.action.push(s.action.clone());
        c.app.push(s.app.clone());
        c.context.push(s.context.to_string());
        c.client_ip.push(s.client_ip.clone());
        c.created.push(s.created);
        c.expires.push(s.expires);
        c.brand.push(s.brand.to_string());
    }
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

#[derive(Default)]
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

/// What one batch writes: log rows, the final view row of each event it touched, and the
/// stored replies. The processor and the benchmark's ingest phase both write through it, so the
/// benchmark measures the processor's own statements.
#[derive(Debug, Default)]
pub struct Writes {
    log: LogRows,
    views: Vec<EventState>,
    replies: ReplyRows,
}

impl Writes {
    /// An accepted command's log row.
    pub fn applied(
        &mut self,
        a: &projection::Applied,
        request_id: &str,
        source: &Source,
        now: DateTime<Utc>,
    ) {
        self.log.push(a, request_id, source, now);
    }

    /// A command's stored reply (`bytes` is `reply` serialised).
    pub fn reply(
        &mut self,
        cmd: &Command,
        reply: &Reply,
        bytes: &[u8],
        source: &Source,
        now: DateTime<Utc>,
    ) {
        self.replies.push(cmd, reply, bytes, source, now);
    }

    /// An event's view row after the batch (once per event).
    pub fn view(&mut self, state: EventState) {
        self.views.push(state);
    }

    /// (log rows, view rows, stored replies).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.log.uuid.len(),
            self.views.len(),
            self.replies.request_id.len(),
        )
    }

    /// Writes everything in `tx` (which the caller commits).
    pub async fn write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.log.insert(tx).await?;
        upsert_views(tx, self.views.iter(), now).await?;
        self.replies.insert(tx).await
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
    now: Option<DateTime<Utc>>,
}

impl LogRows {
    fn push(
        &mut self,
        a: &projection::Applied,
        request_id: &str,
        source: &Source,
        now: DateTime<Utc>,
    ) {
        self.uuid.push(a.state.event_uuid);
        self.version.push(a.state.version);
        self.request_id.push(request_id.to_string());
        self.change.push(a.change.to_string());
        self.topic.push(source.topic.clone());
        self.partition.push(source.partition);
        self.offset.push(source.offset);
        self.now = Some(now);
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        let Some(now) = self.now else { return Ok(()) };
        sqlx::query(
            "INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset)
             SELECT u, v, r, c::jsonb, $5, t, p, o
             FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $6::text[], $7::int4[], $8::int8[]) AS x(u, v, r, c, t, p, o)",
        )
        .bind(&self.uuid)
        .bind(&self.version)
        .bind(&self.request_id)
        .bind(&self.change)
        .bind(now)
        .bind(&self.topic)
        .bind(&self.partition)
        .bind(&self.offset)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct ReplyRows {
    request_id: Vec<String>,
    fingerprint: Vec<Vec<u8>>,
    event_uuid: Vec<Option<Uuid>>,
    status: Vec<i16>,
    version: Vec<Option<i64>>,
    reply: Vec<Vec<u8>>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    now: Option<DateTime<Utc>>,
}

impl ReplyRows {
    fn push(
        &mut self,
        cmd: &Command,
        reply: &Reply,
        bytes: &[u8],
        source: &Source,
        now: DateTime<Utc>,
    ) {
        self.request_id.push(cmd.request_id.clone());
        self.fingerprint.push(cmd.fingerprint.to_vec());
        self.event_uuid.push(reply.event_uuid);
        self.status
            .push(i16::try_from(reply.status).unwrap_or(i16::MAX));
        self.version.push(reply.version);
        self.reply.push(bytes.to_vec());
        self.topic.push(source.topic.clone());
        self.partition.push(source.partition);
        self.offset.push(source.offset);
        self.now = Some(now);
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        let Some(now) = self.now else { return Ok(()) };
        sqlx::query(
            "INSERT INTO command_replies (request_id, fingerprint, event_uuid, status, version, reply, handled_at, source_topic, source_partition, source_offset)
             SELECT r, f, u, s, v, b, $7, t, p, o
             FROM UNNEST($1::text[], $2::bytea[], $3::uuid[], $4::int2[], $5::int8[], $6::bytea[], $8::text[], $9::int4[], $10::int8[]) AS x(r, f, u, s, v, b, t, p, o)",
        )
        .bind(&self.request_id)
        .bind(&self.fingerprint)
        .bind(&self.event_uuid)
        .bind(&self.status)
        .bind(&self.version)
        .bind(&self.reply)
        .bind(now)
        .bind(&self.topic)
        .bind(&self.partition)
        .bind(&self.offset)
        .execute(&mut **tx)
        .await?;
        Ok(())
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
