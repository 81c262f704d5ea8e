//! Connecting: the database created where missing, the migrations run (tolerating a newer
//! release's), and the processor's pool with its session settings and timeouts.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use super::StoreError;
use crate::config::Config;

/// Creates the database named in `url` when it does not exist, connects a pool, and runs the
/// migrations. For tools; the processor's pool is [`connect_for_processing`].
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, None).await
}

/// Bounds on what one of the processor's sessions may wait for or hold, set on every connection
/// of its pool (and of the pools made beside it from the same options), so that no frozen or
/// runaway session can hold a partition up for good:
/// - `statement`: PostgreSQL's `statement_timeout`; a statement running longer is cancelled
///   (57014);
/// - `lock`: `lock_timeout`; a statement waiting longer for a row lock (a frozen session that
///   holds `FOR UPDATE` on an event's row) fails (55P03);
/// - `idle_in_transaction`: `idle_in_transaction_session_timeout`; a session of ours that stops
///   inside a transaction (a frozen or partitioned processor) is ended by the server, which
///   releases its locks for the partition's new owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    pub statement: std::time::Duration,
    pub lock: std::time::Duration,
    pub idle_in_transaction: std::time::Duration,
}

impl SessionTimeouts {
    /// The timeouts `DATABASE_STATEMENT_TIMEOUT`, `DATABASE_LOCK_TIMEOUT` and
    /// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT` configure.
    pub fn from_config(cfg: &Config) -> SessionTimeouts {
        SessionTimeouts {
            statement: cfg.database_statement_timeout,
            lock: cfg.database_lock_timeout,
            idle_in_transaction: cfg.database_idle_in_transaction_timeout,
        }
    }

    /// The session parameters, in milliseconds (PostgreSQL's unit for these).
    fn parameters(&self) -> [(&'static str, String); 3] {
        let ms = |d: std::time::Duration| d.as_millis().max(1).to_string();
        [
            ("statement_timeout", ms(self.statement)),
            ("lock_timeout", ms(self.lock)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction),
            ),
        ]
    }
}

/// As [`connect`], for the processor's hot path:
/// - Every statement the processor runs is a lookup or write by key, so its sessions set
///   `enable_seqscan = off`: a cached generic plan, made while a table was tiny, can then never
///   be a sequential scan that keeps being used once the table is large. And they set
///   `plan_cache_mode = force_generic_plan`: prepared statements (and the write function's
///   statements) are planned once per connection, not again for every batch. (Under `auto`,
///   PostgreSQL plans a statement taking arrays anew for each call while the arrays' lengths
///   move its estimates: planning the batch's read and the write function's five statements
///   cost about as much as running them for a batch of a few commands.)
/// - Every session has the [`SessionTimeouts`]. The migrations run before, on a connection
///   without them (a migration may rightly take longer than a batch).
/// - No ping before each use of a pooled connection: a broken connection fails the statement,
///   and the batch is retried like any unavailable database.
pub async fn connect_for_processing(
    url: &str,
    max_connections: u32,
    timeouts: SessionTimeouts,
) -> Result<PgPool, StoreError> {
    connect_with(url, max_connections, Some(timeouts)).await
}

async fn connect_with(
    url: &str,
    max_connections: u32,
    processing: Option<SessionTimeouts>,
) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
    create_database_if_missing(&options).await?;
    let Some(timeouts) = processing else {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        return Ok(pool);
    };
    let migrator = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.clone())
        .await?;
    let migrated = migrate(&migrator).await;
    migrator.close().await;
    migrated?;
    let parameters = timeouts.parameters();
    let options = options.options(
        [
            ("enable_seqscan", "off"),
            ("plan_cache_mode", "force_generic_plan"),
        ]
        .into_iter()
        .chain(parameters.iter().map(|(k, v)| (*k, v.as_str()))),
    );
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Runs the migrations under `migrations/` (embedded in the binary), see [`migrate_with`].
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    migrate_with(pool, sqlx::migrate!("./migrations")).await
}

/// Runs `migrator`'s migrations that the database has not applied, tolerating migrations the
/// database has that `migrator` does not know: those of a newer release, which keep this
/// release's write path working (expand/contract, `migrations/README.md`), so a rolling deploy
/// runs both releases side by side and a rollback starts. A known migration whose text changed
/// since it was applied is still refused ([`sqlx::migrate::MigrateError::VersionMismatch`]).
pub async fn migrate_with(
    pool: &PgPool,
    mut migrator: sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    migrator.set_ignore_missing(true);
    let mut conn = pool.acquire().await?;
    // `run_direct` is what `run` does on the connection it acquires; `run(&mut *conn)` would
    // make this future fail a higher-ranked `Send` bound.
    match migrator.run_direct(&mut *conn).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // sqlx leaves its advisory lock held by the session when a migration fails or is
            // refused: close the session rather than return it, locked, to the pool (where it
            // would hold every other replica's migrator back).
            let _ = conn.detach().close().await;
            Err(e.into())
        }
    }
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
