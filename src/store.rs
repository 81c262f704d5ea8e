//! PostgreSQL: the event log, the projection and the stored replies, written one batch per
//! transaction (one fenced statement, see [`apply_batch`]).
//!
//! Invariants this file keeps (the tests in `tests/` check them):
//! - A batch's effects (log rows, view rows, stored replies) commit together or not at all.
//! - Every handled request id has exactly one row in `command_replies` per scope (the credential
//!   that sent it, see [`Command::scope`]); a request id seen again in its scope is answered from
//!   that row (the same bytes) or, with other content, with a 422.
//! - An event's versions are 1..n without gaps: a batch decided on rows read without locks is
//!   written only if no other writer moved its events or handled its request ids meanwhile (the
//!   log's and the stored replies' primary keys, and a version guard on the view); otherwise it
//!   is decided again with the rows read under `FOR UPDATE`, and a conflict there fails the
//!   batch with [`StoreError::Conflict`], to be retried whole (a bounded number of times; the
//!   consumer then isolates the command that keeps conflicting).
//! - A writer that lost its partitions but still holds a batch (a zombie) writes nothing stale:
//!   its batch was decided on rows the new owner has since moved, so a fence trips, and decided
//!   again its request ids are found handled and get the replies the new owner stored.
//! - Commands are decided in the order given ([`decide_batch`], pure), so per-partition order is
//!   kept.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row, Transaction};
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
    /// deadlock): retry the same batch after a short back-off; it will see the other writer's
    /// work. The consumer bounds these retries (`consumer::CONFLICT_ATTEMPTS`).
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
/// migrations. For tools; the processor's pool is [`connect_for_processing`].
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, false).await
}

/// As [`connect`], for the processor's hot path:
/// - Every statement the processor runs is a lookup or write by key, so its sessions set
///   `enable_seqscan = off`: a cached generic plan, made while a table was tiny, can then never
///   be a sequential scan that keeps being used once the table is large. Prepared statements
///   (and the write function's plans) are cached per connection and not re-planned per batch.
/// - No ping before each use of a pooled connection: a broken connection fails the statement,
///   and the batch is retried like any unavailable database.
pub async fn connect_for_processing(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, true).await
}

async fn connect_with(
    url: &str,
    max_connections: u32,
    processing: bool,
) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
    create_database_if_missing(&options).await?;
    let options = if processing {
        options.options([("enable_seqscan", "off")])
    } else {
        options
    };
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .test_before_acquire(!processing)
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
    /// The envelope rule a new 400 enforced (`key_mismatch`, `too_large`, `reply_too_large`).
    pub refused: Option<&'static str>,
}

/// The settings a batch is decided under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub auth_mode: AuthMode,
    /// A command whose reply would be longer is not applied and gets a 400 instead.
    pub max_reply_bytes: usize,
}

impl Rules {
    pub fn of(cfg: &crate::config::Config) -> Rules {
        Rules {
            auth_mode: cfg.auth_mode,
            max_reply_bytes: cfg.max_reply_bytes,
        }
    }
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
#[derive(Debug)]
struct Handled {
    fingerprint: Vec<u8>,
    status: u16,
    reply: Arc<Vec<u8>>,
}

/// What the database knows that a batch's decisions need: the standing of the tokens its
/// commands present, the stored answers of its request ids (by scope, then request id: see
/// [`Command::scope`]), and the current state of its events (an event that is absent does not
/// exist).
#[derive(Debug, Default)]
pub struct Known {
    grants: HashMap<[u8; 32], TokenGrant>,
    handled: HashMap<Vec<u8>, HashMap<String, Handled>>,
    states: HashMap<Uuid, EventState>,
}

impl Known {
    /// The stored answer of `cmd`'s request id in its scope.
    fn handled(&self, cmd: &Command, auth_mode: AuthMode) -> Option<&Handled> {
        let scope = cmd.scope(auth_mode)?;
        self.handled.get(scope)?.get(&cmd.request_id)
    }
}

/// Applies `commands` (in order) and returns one outcome per command, with every effect
/// committed atomically before it returns.
///
/// The common case takes two round trips and no row locks: one statement reads what the batch
/// needs ([`read_known`]), the decisions are made in memory ([`decide_batch`]), and one call of
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
    rules: Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut conn = pool.acquire().await?;
    let known = read_known(&mut conn, commands, rules.auth_mode).await?;
    let (outcomes, writes) = decide_batch(commands, known, rules, now);
    match writes.write(&mut conn, now).await {
        Ok(()) => Ok(outcomes),
        Err(StoreError::Conflict(e)) => {
            tracing::debug!(error = %e, "a write fence tripped; deciding the batch again under row locks");
            drop(conn);
            apply_batch_locked(pool, commands, rules, now).await
        }
        Err(e) => Err(e),
    }
}

/// The locking path: reads under `FOR UPDATE` (rows locked in event-id order, so concurrent
/// batches cannot deadlock) and writes in the same transaction.
pub async fn apply_batch_locked(
    pool: &PgPool,
    commands: &[(Command, Source)],
    rules: Rules,
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    let auth_mode = rules.auth_mode;
    let mut tx = pool.begin().await?;
    // The grants and stored answers as on the common path; the views again, under row locks.
    let mut known = read_known(&mut tx, commands, auth_mode).await?;
    let mut uuids: Vec<Uuid> = commands
        .iter()
        .filter(|(c, _)| known.handled(c, auth_mode).is_none())
        .filter_map(|(c, _)| c.action.event_uuid_to_apply())
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    known.states = load_for_update(&mut tx, &uuids).await?;
    let (outcomes, writes) = decide_batch(commands, known, rules, now);
    writes.write(&mut tx, now).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// One statement, no locks: the grants of the batch's tokens, the stored answers of its request
/// ids and the views of its events.
async fn read_known(
    conn: &mut PgConnection,
    commands: &[(Command, Source)],
    auth_mode: AuthMode,
) -> Result<Known, StoreError> {
    // The (scope, request id) pairs to look up; a command without a scope (no usable
    // credentials) has nothing stored.
    let (scopes, ids): (Vec<&[u8]>, Vec<&str>) = commands
        .iter()
        .filter_map(|(c, _)| Some((c.scope(auth_mode)?, c.request_id.as_str())))
        .unzip();
    let mut uuids: Vec<Uuid> = commands
        .iter()
        .filter_map(|(c, _)| c.action.event_uuid_to_apply())
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    let hashes = match auth_mode {
        AuthMode::Required => token_hashes(commands),
        AuthMode::Disabled => Vec::new(),
    };
    let rows = sqlx::query(READ_KNOWN)
        .bind(&uuids)
        .bind(&scopes)
        .bind(&ids)
        .bind(&hashes)
        .fetch_all(&mut *conn)
        .await?;
    let mut known = Known::default();
    for r in &rows {
        match r.try_get::<i32, _>("kind")? {
            1 => {
                let s = view_from_row(r)?;
                known.states.insert(s.event_uuid, s);
            }
            2 => {
                let status: i16 = r.try_get("status")?;
                let scope: Vec<u8> = r.try_get("scope")?;
                known.handled.entry(scope).or_default().insert(
                    r.try_get("request_id")?,
                    Handled {
                        fingerprint: r.try_get("fingerprint")?,
                        status: u16::try_from(status).unwrap_or_default(),
                        reply: Arc::new(r.try_get("reply")?),
                    },
                );
            }
            _ => {
                let h: Vec<u8> = r.try_get("scope")?;
                if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
                    known.grants.insert(
                        h,
                        TokenGrant {
                            usable: r.try_get("usable")?,
                            can_change_event: r.try_get("can_change_event")?,
                        },
                    );
                }
            }
        }
    }
    Ok(known)
}

/// [`read_known`]'s statement: views (kind 1), stored answers by (scope, request id) (kind 2)
/// and tokens by hash (kind 3, the hash in `scope`), each a lookup by primary or unique key.
const READ_KNOWN: &str = r#"
SELECT 1 AS kind, event_uuid, version, "user"::text AS "user", action, app, context::text AS context,
       client_ip, created, expires, brand::text AS brand,
       NULL::text AS request_id, NULL::bytea AS fingerprint, NULL::int2 AS status, NULL::bytea AS reply,
       NULL::bytea AS scope, NULL::bool AS can_change_event, NULL::bool AS usable
FROM events WHERE event_uuid = ANY($1)
UNION ALL
SELECT 2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       c.request_id, c.fingerprint, c.status, c.reply, c.scope, NULL, NULL
FROM unnest($2::bytea[], $3::text[]) AS k(scope, request_id)
JOIN command_replies c ON c.scope = k.scope AND c.request_id = k.request_id
UNION ALL
SELECT 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       token_hash, can_change_event, revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
FROM api_tokens WHERE token_hash = ANY($4)
"#;

/// Decides every command of a batch, in order, against what the database knows; later commands
/// of the batch see the effects of earlier ones. Returns one outcome per command and the rows to
/// write. Pure. The order of checks:
/// 1. a redelivery (same scope, request id and content as a stored answer) gets the stored reply,
///    even when its token has been revoked or has expired since: its change is in the log, and
///    the reply was already given to that credential;
/// 2. authentication and permission (403, not stored), as the REST endpoint checks them first;
/// 3. a request id handled before in the same scope with other content: a 422;
/// 4. the command itself ([`decide`]): 409 against the version the batch has reached, else
///    201/200, or its 400/404;
/// 5. a reply longer than `rules.max_reply_bytes` could not be published: the command is not
///    applied and gets a 400 saying so instead (stored like any other answer).
pub fn decide_batch(
    commands: &[(Command, Source)],
    known: Known,
    rules: Rules,
    now: DateTime<Utc>,
) -> (Vec<Outcome>, Writes) {
    let auth_mode = rules.auth_mode;
    let Known {
        grants,
        mut handled,
        mut states,
    } = known;
    // The version each event was read at (0: absent): the view's write guard.
    let read_versions: HashMap<Uuid, i64> = states.iter().map(|(u, s)| (*u, s.version)).collect();
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut writes = Writes::default();
    let mut touched: Vec<Uuid> = Vec::new();
    for (cmd, source) in commands {
        let scope = cmd.scope(auth_mode);
        let stored = scope.and_then(|s| handled.get(s)?.get(&cmd.request_id));
        if let Some(h) = stored.filter(|h| h.fingerprint.as_slice() == cmd.fingerprint) {
            outcomes.push(Outcome {
                status: h.status,
                reply: h.reply.clone(),
                kind: OutcomeKind::Duplicate,
                refused: None,
            });
            continue;
        }
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
        // Past the 403, a command has a scope (its token's, or the one scope without auth).
        // (Only a bearer token passes the check where auth is required, so this is a 403 too.)
        let Some(scope) = scope else {
            let text = "Authentication credentials were not provided.";
            outcomes.push(unstored(cmd, 403, detail(text), OutcomeKind::Forbidden));
            continue;
        };
        if stored.is_some() {
            let text = format!(
                "request_id {:?} was already used for a different command.",
                cmd.request_id
            );
            outcomes.push(unstored(
                cmd,
                422,
                detail(text),
                OutcomeKind::ReusedRequestId,
            ));
            continue;
        }
        let current = cmd
            .action
            .event_uuid_to_apply()
            .and_then(|u| states.get(&u));
        let (mut reply, mut applied) = decide(cmd, current, now);
        let mut bytes = reply.to_bytes();
        let mut refused = cmd.refused;
        if bytes.len() > rules.max_reply_bytes {
            let text = format!(
                "The reply to this command would be {} bytes, over the limit of {} bytes; the command was not applied.",
                bytes.len(),
                rules.max_reply_bytes
            );
            reply = Reply {
                request_id: cmd.request_id.clone(),
                event_uuid: cmd.action.event_uuid(),
                status: 400,
                version: None,
                body: detail(text),
            };
            applied = None;
            refused = Some("reply_too_large");
            bytes = reply.to_bytes();
        }
        if let Some(applied) = applied {
            writes.applied(&applied, &cmd.request_id, source);
            let u = applied.state.event_uuid;
            if !touched.contains(&u) {
                touched.push(u);
            }
            states.insert(u, applied.state);
        }
        let bytes = Arc::new(bytes);
        writes.reply(cmd, scope, &reply, &bytes, source);
        handled.entry(scope.to_vec()).or_default().insert(
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
            refused: refused.filter(|_| reply.status == 400),
        });
    }
    for u in &touched {
        if let Some(s) = states.remove(u) {
            writes.view(&s, read_versions.get(u).copied().unwrap_or(0));
        }
    }
    (outcomes, writes)
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
    let event_uuid = cmd.action.event_uuid();
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
        refused: None,
    }
}

/// The distinct token hashes a batch's commands present.
fn token_hashes(commands: &[(Command, Source)]) -> Vec<Vec<u8>> {
    let mut hashes: Vec<Vec<u8>> = commands
        .iter()
        .filter_map(|(c, _)| match &c.credentials {
            Credentials::Bearer(h) => Some(h.to_vec()),
            _ => None,
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
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
        c.push(s);
    }
    upsert_columns(tx, &c, now).await
}

/// Inserts or replaces the view rows `c` (no version guard: for repairs and the benchmark's
/// limit, never for the processor's writes).
async fn upsert_columns(
    tx: &mut Transaction<'_, Postgres>,
    c: &ViewColumns,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
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

/// View rows as columns, for the multi-row statements.
#[derive(Debug, Default)]
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

impl ViewColumns {
    fn push(&mut self, s: &EventState) {
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

/// What one batch writes: log rows, the final view row of each event it touched (with the
/// version it was read at), and the stored replies; written by one call of the
/// `event_updater_write_batch` function (see `migrations/`), which fences the write.
#[derive(Debug, Default)]
pub struct Writes {
    log: LogRows,
    views: ViewRows,
    replies: ReplyRows,
}

impl Writes {
    /// An accepted command's log row.
    pub fn applied(&mut self, a: &projection::Applied, request_id: &str, source: &Source) {
        self.log.push(a, request_id, source);
    }

    /// A command's stored reply in `scope` (`bytes` is `reply` serialised).
    pub fn reply(
        &mut self,
        cmd: &Command,
        scope: &[u8],
        reply: &Reply,
        bytes: &[u8],
        source: &Source,
    ) {
        self.replies.push(cmd, scope, reply, bytes, source);
    }

    /// An event's view row after the batch (once per event); `read_version` is the version the
    /// batch read it at (0: it did not exist).
    pub fn view(&mut self, state: &EventState, read_version: i64) {
        self.views.push(state, read_version);
    }

    /// (log rows, view rows, stored replies).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.log.uuid.len(),
            self.views.columns.uuid.len(),
            self.replies.request_id.len(),
        )
    }

    /// Writes everything in one statement: atomically on its own, or as part of the caller's
    /// transaction. A tripped fence is [`StoreError::Conflict`].
    pub async fn write(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (l, v, r) = (&self.log, &self.views, &self.replies);
        if l.uuid.is_empty() && v.columns.uuid.is_empty() && r.request_id.is_empty() {
            return Ok(());
        }
        let q = sqlx::query(
            "SELECT event_updater_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)",
        );
        r.bind(v.bind(l.bind(q))).bind(now).execute(conn).await?;
        Ok(())
    }
}

impl Writes {
    /// The same rows by three plain `INSERT … SELECT FROM unnest` statements, unfenced (views
    /// upserted): what PostgreSQL ingests at best, for the benchmark's limit. Not for the
    /// processor, whose writes must be fenced.
    pub async fn write_unfenced(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO event_log (event_uuid, version, request_id, change, recorded_at, source_topic, source_partition, source_offset)
             SELECT u, v, r, c::jsonb, $8, t, p, o
             FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[]) AS x(u, v, r, c, t, p, o)",
        );
        self.log.bind(q).bind(now).execute(&mut **tx).await?;
        upsert_columns(tx, &self.views.columns, now).await?;
        let q = sqlx::query(
            "INSERT INTO command_replies (scope, request_id, fingerprint, event_uuid, status, version, reply, handled_at, source_topic, source_partition, source_offset)
             SELECT sc, r, f, u, s, v, b, $11, t, p, o
             FROM UNNEST($1::bytea[], $2::text[], $3::bytea[], $4::uuid[], $5::int2[], $6::int8[], $7::bytea[], $8::text[], $9::int4[], $10::int8[]) AS x(sc, r, f, u, s, v, b, t, p, o)",
        );
        self.replies.bind(q).bind(now).execute(&mut **tx).await?;
        Ok(())
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
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl LogRows {
    /// Binds the columns, in the function's order, as the next seven parameters.
    fn bind<'q>(&'q self, q: PgQuery<'q>) -> PgQuery<'q> {
        q.bind(&self.uuid)
            .bind(&self.version)
            .bind(&self.request_id)
            .bind(&self.change)
            .bind(&self.topic)
            .bind(&self.partition)
            .bind(&self.offset)
    }

    fn push(&mut self, a: &projection::Applied, request_id: &str, source: &Source) {
        self.uuid.push(a.state.event_uuid);
        self.version.push(a.state.version);
        self.request_id.push(request_id.to_string());
        self.change.push(a.change.to_string());
        self.topic.push(source.topic.clone());
        self.partition.push(source.partition);
        self.offset.push(source.offset);
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
        let c = &self.columns;
        q.bind(&c.uuid)
            .bind(&c.version)
            .bind(&self.read_version)
            .bind(&c.user)
            .bind(&c.action)
            .bind(&c.app)
            .bind(&c.context)
            .bind(&c.client_ip)
            .bind(&c.created)
            .bind(&c.expires)
            .bind(&c.brand)
    }

    fn push(&mut self, s: &EventState, read_version: i64) {
        self.columns.push(s);
        self.read_version.push(read_version);
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

    fn push(&mut self, cmd: &Command, scope: &[u8], reply: &Reply, bytes: &[u8], source: &Source) {
        self.scope.push(scope.to_vec());
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

#[cfg(test)]
mod tests {
    //! The order of checks in [`decide_batch`]: a redelivery in its scope gets its stored reply,
    //! then 403 (never stored), then a request id handled before in the scope with other content
    //! (422), then the command itself (409 against the version the batch has reached, else
    //! 201/200); later commands of a batch see the effects of earlier ones.
    use super::*;
    use crate::command::{decode, Incoming};
    use serde_json::json;

    const U: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    fn command(value: Value, token: Option<&str>) -> (Command, Source) {
        let headers = token
            .map(|t| {
                vec![(
                    "authorization".to_string(),
                    Some(format!("Bearer {t}").into_bytes()),
                )]
            })
            .unwrap_or_default();
        let m = Incoming {
            topic: "cmds".into(),
            key: value["event_uuid"].as_str().map(|u| u.as_bytes().to_vec()),
            payload: Some(value.to_string().into_bytes()),
            headers,
            ..Incoming::default()
        };
        (decode(&m, 1 << 20, AuthMode::Disabled), Source::default())
    }

    fn update(id: &str, expected: Option<i64>, token: Option<&str>) -> (Command, Source) {
        let mut v = json!({"request_id": id, "event_uuid": U,
                           "body": {"action": "login", "app": "a"}});
        if let Some(e) = expected {
            v["expected_version"] = json!(e);
        }
        command(v, token)
    }

    fn statuses(outcomes: &[Outcome]) -> Vec<(u16, OutcomeKind)> {
        outcomes.iter().map(|o| (o.status, o.kind)).collect()
    }

    fn body(o: &Outcome) -> Value {
        serde_json::from_slice::<Value>(&o.reply).unwrap()["body"].clone()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    fn rules(auth_mode: AuthMode) -> Rules {
        Rules {
            auth_mode,
            max_reply_bytes: 1_000_000,
        }
    }

    #[test]
    fn forbidden_comes_first_and_is_not_stored() {
        let mut known = Known::default();
        known.grants.insert(
            auth::hash("revoked"),
            TokenGrant {
                usable: false,
                can_change_event: true,
            },
        );
        known.grants.insert(
            auth::hash("read-only"),
            TokenGrant {
                usable: true,
                can_change_event: false,
            },
        );
        // A request id handled before for another credential does not help one without any.
        known.handled.entry(vec![]).or_default().insert(
            "r1".into(),
            Handled {
                fingerprint: update("r1", None, None).0.fingerprint.to_vec(),
                status: 201,
                reply: Arc::new(b"{}".to_vec()),
            },
        );
        let commands = [
            update("r1", None, None),
            update("r2", None, Some("unknown")),
            update("r3", None, Some("revoked")),
            update("r4", None, Some("read-only")),
        ];
        let (outcomes, writes) = decide_batch(&commands, known, rules(AuthMode::Required), now());
        assert!(outcomes
            .iter()
            .all(|o| (o.status, o.kind) == (403, OutcomeKind::Forbidden)));
        let texts: Vec<Value> = outcomes.iter().map(|o| body(o)["detail"].clone()).collect();
        assert_eq!(
            texts,
            [
                "Authentication credentials were not provided.",
                "Token invalid/expired",
                "Token invalid/expired",
                "You do not have permission to perform this action."
            ]
        );
        assert_eq!(writes.counts(), (0, 0, 0));
    }

    #[test]
    fn a_request_id_seen_before_gets_its_stored_reply_or_a_422() {
        let first = update("r1", None, None);
        let mut known = Known::default();
        known.handled.entry(vec![]).or_default().insert(
            "r1".into(),
            Handled {
                fingerprint: first.0.fingerprint.to_vec(),
                status: 201,
                reply: Arc::new(b"stored bytes".to_vec()),
            },
        );
        let reused = command(
            json!({"request_id": "r1", "event_uuid": U, "body": {"action": "logout", "app": "a"}}),
            None,
        );
        let (outcomes, writes) =
            decide_batch(&[first, reused], known, rules(AuthMode::Disabled), now());
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::Duplicate),
                (422, OutcomeKind::ReusedRequestId)
            ]
        );
        assert_eq!(outcomes[0].reply.as_slice(), b"stored bytes");
        assert_eq!(writes.counts(), (0, 0, 0));
    }

    #[test]
    fn request_ids_are_scoped_by_credential_and_outlive_its_revocation() {
        let mut known = Known::default();
        for (token, usable) in [("alice", true), ("bob", true), ("revoked", false)] {
            known.grants.insert(
                auth::hash(token),
                TokenGrant {
                    usable,
                    can_change_event: true,
                },
            );
        }
        // `revoked` applied r1 just before a crash, then its token was revoked.
        let applied = update("r1", None, Some("revoked"));
        known
            .handled
            .entry(auth::hash("revoked").to_vec())
            .or_default()
            .insert(
                "r1".into(),
                Handled {
                    fingerprint: applied.0.fingerprint.to_vec(),
                    status: 201,
                    reply: Arc::new(b"stored for revoked".to_vec()),
                },
            );
        let commands = [
            // The redelivery: its stored reply, although the token no longer works.
            applied,
            // The same id with other content from the revoked token: a 403, not a 422.
            update("r1", Some(5), Some("revoked")),
            // The same id from other credentials: other requests, applied.
            update("r1", None, Some("alice")),
            update("r1", None, Some("bob")),
            // Within alice's scope the id is now taken.
            update("r1", Some(9), Some("alice")),
            update("r1", None, Some("alice")),
        ];
        let (outcomes, writes) = decide_batch(&commands, known, rules(AuthMode::Required), now());
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::Duplicate),
                (403, OutcomeKind::Forbidden),
                (201, OutcomeKind::New),
                (200, OutcomeKind::New),
                (422, OutcomeKind::ReusedRequestId),
                (201, OutcomeKind::Duplicate)
            ]
        );
        assert_eq!(outcomes[0].reply.as_slice(), b"stored for revoked");
        assert_eq!(outcomes[5].reply, outcomes[2].reply);
        assert_eq!(
            writes.replies.scope,
            [auth::hash("alice").to_vec(), auth::hash("bob").to_vec()]
        );
    }

    #[test]
    fn later_commands_see_earlier_ones_and_versions_follow_on() {
        let commands = [
            update("r1", Some(0), None),
            update("r2", Some(1), None),
            update("r3", Some(1), None),
            update("r2", Some(1), None),
            update("r4", None, None),
        ];
        let (outcomes, writes) = decide_batch(
            &commands,
            Known::default(),
            rules(AuthMode::Disabled),
            now(),
        );
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::New),
                (200, OutcomeKind::New),
                (409, OutcomeKind::New),
                (200, OutcomeKind::Duplicate),
                (200, OutcomeKind::New)
            ]
        );
        assert_eq!(body(&outcomes[2])["current_version"], json!(2));
        // Three changes, one view row (read at version 0: a create), four stored replies.
        assert_eq!(writes.counts(), (3, 1, 4));
        assert_eq!(writes.views.read_version, [0]);
        assert_eq!(writes.views.columns.version, [3]);
        assert_eq!(writes.log.version, [1, 2, 3]);
    }

    #[test]
    fn a_reply_over_the_limit_is_a_400_and_the_command_is_not_applied() {
        let big = |id: &str| {
            command(
                json!({"request_id": id, "event_uuid": U,
                       "body": {"action": "login", "app": "a", "context": {"pad": "x".repeat(5000)}}}),
                None,
            )
        };
        // The size of the reply at no limit, then the limit at exactly that size and one less.
        let (free, _) = decide_batch(
            &[big("r1")],
            Known::default(),
            rules(AuthMode::Disabled),
            now(),
        );
        let exact = free[0].reply.len();
        let at = |max_reply_bytes| {
            decide_batch(
                &[big("r1"), update("r2", Some(1), None)],
                Known::default(),
                Rules {
                    auth_mode: AuthMode::Disabled,
                    max_reply_bytes,
                },
                now(),
            )
        };
        let (fits, writes) = at(exact);
        assert_eq!(
            statuses(&fits),
            [(201, OutcomeKind::New), (200, OutcomeKind::New)]
        );
        assert_eq!(fits[0].reply, free[0].reply);
        assert_eq!(writes.counts(), (2, 1, 2));
        let (over, writes) = at(exact - 1);
        // Not applied: the next command finds no event at version 1.
        assert_eq!(
            statuses(&over),
            [(400, OutcomeKind::New), (409, OutcomeKind::New)]
        );
        assert_eq!(over[0].refused, Some("reply_too_large"));
        assert_eq!(
            body(&over[0])["detail"],
            format!(
                "The reply to this command would be {exact} bytes, over the limit of {} bytes; the command was not applied.",
                exact - 1
            )
        );
        // Both answers are stored, so a redelivery gets the same 400.
        assert_eq!(writes.counts(), (0, 0, 2));
    }

    #[test]
    fn a_view_is_written_with_the_version_it_was_read_at() {
        let (created, _) = decide_batch(
            &[update("r1", None, None)],
            Known::default(),
            rules(AuthMode::Disabled),
            now(),
        );
        assert_eq!(created[0].status, 201);
        let event: Uuid = U.parse().unwrap();
        let mut known = Known::default();
        let state = projection::apply(
            event,
            None,
            &crate::validate::validate_body(Some(&json!({"action": "login", "app": "a"}))).unwrap(),
            now(),
        )
        .state;
        known.states.insert(
            event,
            EventState {
                version: 7,
                ..state
            },
        );
        let (outcomes, writes) = decide_batch(
            &[update("r2", None, None), update("r3", Some(8), None)],
            known,
            rules(AuthMode::Disabled),
            now(),
        );
        assert_eq!(
            statuses(&outcomes),
            [(200, OutcomeKind::New), (200, OutcomeKind::New)]
        );
        assert_eq!(writes.views.read_version, [7]);
        assert_eq!(writes.views.columns.version, [9]);
        assert_eq!(writes.log.version, [8, 9]);
    }
}
