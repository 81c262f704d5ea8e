//! The run's state ([`Bench`]) and each phase's [`Scope`]: a fresh database and fresh topics,
//! refused when they exist already and removed afterwards whatever happens; and what every phase
//! shares (progress lines, the PostgreSQL admin connection, checkpoints, the processes probed).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::util::Timeout;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::domain::auth::AuthMode;
use event_updater::pipeline::kafka;
use event_updater::store::{self, tokens};

use crate::clients::delete_topics;
use crate::procstat::{self, Probe};
use crate::workload::Workload;
use crate::BenchArgs;

/// A phase's database and topics.
#[derive(Debug, Clone)]
pub struct Scope {
    pub db: String,
    pub db_url: String,
    pub commands: String,
    pub replies: String,
    pub dlq: String,
    pub scratch: String,
    pub echo_replies: String,
    /// The feed's topics, created by the processor where its feed is on.
    pub changes: String,
    pub views: String,
    pub group: String,
}

impl Scope {
    pub fn topics(&self) -> Vec<String> {
        vec![
            self.commands.clone(),
            self.replies.clone(),
            self.dlq.clone(),
            self.scratch.clone(),
            self.echo_replies.clone(),
            self.changes.clone(),
            self.views.clone(),
        ]
    }
}

/// The run: the configuration and the benchmark's options, the workload, and the scopes not
/// removed yet.
#[derive(Debug)]
pub struct Bench {
    pub cfg: Config,
    pub args: BenchArgs,
    pub max_batch: u32,
    pub partitions: i32,
    pub workload: Workload,
    pub admin_url: String,
    pub started: Instant,
    /// Scopes not released yet, removed at the end whatever happens.
    pub leftovers: Mutex<Vec<Scope>>,
    /// PostgreSQL's and Kafka's processes, found when the run starts.
    pub probe: std::sync::OnceLock<Probe>,
}

impl Bench {
    pub fn new(cfg: Config, args: BenchArgs) -> anyhow::Result<Bench> {
        let admin_url = with_database(&cfg.database_url, "postgres")?;
        Ok(Bench {
            max_batch: cfg.max_batch,
            partitions: cfg.topic_partitions,
            workload: Workload {
                events: args.events,
                invalid_percent: args.invalid_percent,
            },
            admin_url,
            started: Instant::now(),
            leftovers: Mutex::new(Vec::new()),
            probe: std::sync::OnceLock::new(),
            cfg,
            args,
        })
    }

    pub fn progress(&self, text: impl std::fmt::Display) {
        eprintln!(
            "[bench {:>6.1}s] {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs `phase` on a fresh scope and removes the scope afterwards, whatever the outcome.
    pub async fn in_scope<T, F, Fut>(&self, phase: F) -> anyhow::Result<T>
    where
        F: FnOnce(Scope) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let scope = self.new_scope()?;
        if let Err(e) = self.refuse_existing(&scope).await {
            // Not ours: never released (dropped or deleted).
            self.forget(&scope);
            return Err(e);
        }
        let result = phase(scope.clone()).await;
        self.release(&scope).await;
        result
    }

    /// Fails when the scope's database or one of its topics exists already: the benchmark only
    /// removes what it created itself.
    async fn refuse_existing(&self, scope: &Scope) -> anyhow::Result<()> {
        let mut c = self.admin_connection().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&scope.db)
                .fetch_one(&mut c)
                .await?;
        if exists {
            bail!(
                "database {} exists already; the benchmark only uses databases it creates",
                scope.db
            );
        }
        let admin: AdminClient<DefaultClientContext> = kafka::client_config(&self.cfg).create()?;
        let metadata = admin
            .inner()
            .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))?;
        let names = scope.topics();
        if let Some(t) = metadata
            .topics()
            .iter()
            .find(|t| t.error().is_none() && names.iter().any(|n| n == t.name()))
        {
            bail!(
                "topic {} exists already; the benchmark only uses topics it creates",
                t.name()
            );
        }
        Ok(())
    }

    fn forget(&self, scope: &Scope) {
        if let Ok(mut l) = self.leftovers.lock() {
            l.retain(|s| s.db != scope.db);
        }
    }

    pub fn new_scope(&self) -> anyhow::Result<Scope> {
        let id = Uuid::new_v4().simple().to_string();
        let db = format!("event_updater_bench_{id}");
        let scope = Scope {
            db_url: with_database(&self.cfg.database_url, &db)?,
            db,
            commands: format!("bench-{id}-commands"),
            replies: format!("bench-{id}-replies"),
            dlq: format!("bench-{id}-dlq"),
            scratch: format!("bench-{id}-scratch"),
            echo_replies: format!("bench-{id}-echo-replies"),
            changes: format!("bench-{id}-changes"),
            views: format!("bench-{id}-views"),
            group: format!("bench-{id}"),
        };
        self.leftovers
            .lock()
            .map_err(|_| anyhow!("lock poisoned"))?
            .push(scope.clone());
        Ok(scope)
    }

    /// Drops the scope's database and deletes its topics (its clients are gone by now).
    async fn release(&self, scope: &Scope) {
        if let Err(e) = self.drop_database(&scope.db).await {
            self.progress(format_args!("could not drop database {}: {e:#}", scope.db));
        }
        delete_topics(&self.cfg, &scope.topics()).await;
        if let Ok(mut l) = self.leftovers.lock() {
            l.retain(|s| s.db != scope.db);
        }
    }

    pub async fn release_all(&self) {
        let left: Vec<Scope> = match self.leftovers.lock() {
            Ok(l) => l.clone(),
            Err(_) => return,
        };
        for scope in left {
            self.release(&scope).await;
        }
    }

    /// PostgreSQL's postmaster (the parent of a session's backend) and the broker's JVM (the
    /// `kafka.Kafka` process listening on the bootstrap server's port), where they run on this
    /// machine; what is not found is "not measured".
    pub async fn find_processes(&self) -> Probe {
        let postmaster = match self.admin_connection().await {
            Ok(mut c) => sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&mut c)
                .await
                .ok()
                .and_then(|pid| u32::try_from(pid).ok())
                .and_then(procstat::postmaster_of),
            Err(_) => None,
        };
        let kafka = procstat::local_port(&self.cfg.kafka_bootstrap_servers)
            .and_then(procstat::kafka_broker);
        let show =
            |p: Option<u32>| p.map_or("not found: not measured".into(), |p| format!("pid {p}"));
        self.progress(format_args!(
            "CPU read from /proc: PostgreSQL's postmaster {}, Kafka's broker {}",
            show(postmaster),
            show(kafka)
        ));
        Probe {
            processor: None,
            postmaster,
            kafka,
            this: false,
        }
    }

    /// The processes found when the run started.
    pub fn probe(&self) -> Probe {
        self.probe.get().copied().unwrap_or_default()
    }

    /// Creates and migrates the scope's database; where the processor requires tokens, creates
    /// one and returns its `authorization` header value.
    pub async fn prepare_database(
        &self,
        scope: &Scope,
    ) -> anyhow::Result<(PgPool, Option<String>)> {
        let pool = store::connect(&scope.db_url, 2).await?;
        let authorization = match self.cfg.auth_mode {
            AuthMode::Required => {
                let secret = tokens::create_token(&pool, "bench", None, true).await?;
                Some(format!("Bearer {secret}"))
            }
            AuthMode::Disabled => None,
        };
        Ok((pool, authorization))
    }

    async fn admin_connection(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.admin_url)
            .await
            .context("connecting to PostgreSQL")
    }

    /// Flushes dirty pages so that no phase pays for an earlier phase's writes.
    pub async fn checkpoint(&self) {
        let done = match self.admin_connection().await {
            Ok(mut c) => sqlx::query("CHECKPOINT")
                .execute(&mut c)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            self.progress(format_args!("CHECKPOINT failed (continuing): {e:#}"));
        }
    }

    async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let mut c = self.admin_connection().await?;
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        );
        sqlx::query(&sql).execute(&mut c).await?;
        Ok(())
    }

    pub async fn postgres_settings(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut c = self.admin_connection().await?;
        let mut out = BTreeMap::new();
        for name in [
            "server_version",
            "synchronous_commit",
            "fsync",
            "full_page_writes",
            "wal_level",
            "shared_buffers",
            "max_wal_size",
            "checkpoint_timeout",
            "wal_compression",
            "autovacuum",
            "plan_cache_mode",
        ] {
            let v: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(&mut c)
                .await?;
            out.insert(name.to_string(), v);
        }
        Ok(out)
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("DATABASE_URL is not a URL")?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/event_updater?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "x").unwrap(),
            "postgres://h/x"
        );
    }
}
