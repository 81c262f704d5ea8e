//! `Application::build`: everything the service needs, started in order, on ports that tests
//! can choose (`HTTP_ADDR=127.0.0.1:0`); [`serve`]: the service as the binary runs it, until
//! SIGTERM or Ctrl-C ([`Application::run_until_signal`]), with its logging ([`init_tracing`]).
//!
//! Start-up order: the Prometheus recorder, the database (created if missing, migrated), the
//! topics (created if missing), the HTTP server, then the processor and the pruner of stored
//! replies ([`retention`]). A failure in any step is an error from `build`; nothing is left
//! running.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics;
use crate::pipeline::consumer::{self, Budget, Processor};
use crate::pipeline::health::Health;
use crate::pipeline::http;
use crate::pipeline::kafka::{self, Publisher};
use crate::store::retention::{self, Retention};
use crate::store::{self, StoreError};

/// How long shutdown waits for the pruner of stored replies to end its batch.
const PRUNER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database")]
    Store(#[from] StoreError),
    #[error("kafka")]
    Kafka(#[from] KafkaError),
    #[error("consumer")]
    Consumer(#[from] consumer::ConsumerError),
    #[error("processor")]
    Processor(#[from] consumer::ProcessorError),
    #[error("http server")]
    Http(#[from] std::io::Error),
    #[error("configuration")]
    Config(#[from] crate::config::ConfigError),
    #[error("a task panicked")]
    Join(#[from] tokio::task::JoinError),
}

/// Why [`serve`] ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("start-up failed")]
    Start(#[source] StartupError),
    #[error("the processor stopped")]
    Stopped(#[source] StartupError),
    #[error("the processor stopped without being asked to")]
    StoppedUnasked,
    #[error("error while stopping")]
    Stopping(#[source] StartupError),
    #[error("did not stop within {0:?}; uncommitted commands will be redelivered")]
    StopTimeout(Duration),
}

/// The service as the binary runs it: logs the configuration, starts it, and runs it until
/// SIGTERM or Ctrl-C ([`Application::run_until_signal`]).
pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    cfg.log();
    let bound = cfg.shutdown_timeout;
    let app = Application::build(cfg).await.map_err(ServeError::Start)?;
    app.run_until_signal(bound).await
}

/// Logs go to stderr: readable by default, JSON with `LOG_FORMAT=json`; `RUST_LOG` filters.
/// Colours only on a terminal (not in `docker logs` or a log file).
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A running service.
#[derive(Debug)]
pub struct Application {
    http_addr: SocketAddr,
    pool: PgPool,
    health: Arc<Health>,
    shutdown: watch::Sender<bool>,
    processor: JoinHandle<Result<(), consumer::ProcessorError>>,
    http: JoinHandle<std::io::Result<()>>,
    /// Deletes stored replies past the retention window; ends on shutdown.
    pruner: JoinHandle<()>,
}

impl Application {
    /// Starts the service described by `cfg`.
    pub async fn build(cfg: Config) -> Result<Application, StartupError> {
        let metrics = match metrics::install() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder unavailable; /metrics will be empty");
                None
            }
        };
        if cfg.auth_mode == crate::domain::auth::AuthMode::Disabled {
            tracing::warn!(
                "AUTH_MODE=disabled: commands are NOT authenticated; any producer may \
                change events. For local development only."
            );
        }
        // A configuration that contradicts itself is refused before anything connects.
        cfg.group_settings()
            .map_err(consumer::ConsumerError::from)?;
        cfg.check_producer_properties()?;
        let health = Arc::new(Health::default());
        let pool = store::connect_for_processing(
            &cfg.database_url,
            cfg.database_max_connections.max(cfg.apply_concurrency),
            store::SessionTimeouts::from_config(&cfg),
        )
        .await?;
        health.migrated.store(true, Ordering::Relaxed);
        health.database_ok.store(true, Ordering::Relaxed);
        kafka::ensure_topics(&cfg).await?;

        let listener = TcpListener::bind(cfg.http_addr).await?;
        let http_addr = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let http = tokio::spawn(http::serve(
            listener,
            health.clone(),
            metrics,
            Some(pool.clone()),
            rx.clone(),
        ));

        let budget = Arc::new(Budget::new(cfg.max_in_flight_bytes));
        let processor = Processor {
            consumer: consumer::create_consumer(&cfg, health.clone(), budget.clone())?,
            budget,
            publisher: Publisher::new(
                kafka::reply_producer(&cfg, health.clone())?,
                kafka::feed_producer(&cfg, health.clone())?,
                &cfg,
                health.clone(),
            ),
            pool: pool.clone(),
            cfg,
            health: health.clone(),
        };
        let pruner = tokio::spawn(retention::run(
            retention::pool_beside(&pool),
            Retention::from_config(&processor.cfg),
            rx.clone(),
        ));
        let processor = tokio::spawn(processor.run(rx));
        tracing::info!(%http_addr, "event-updater started");
        Ok(Application {
            http_addr,
            pool,
            health,
            shutdown,
            processor,
            http,
            pruner,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The service's database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Health flags, as `/healthz` and `/readyz` see them.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// A handle that asks the service to stop (finish the batch in hand, commit, exit).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Waits until the processor has stopped (after a shutdown request, or on a fatal error).
    pub async fn run_until_stopped(mut self) -> Result<(), StartupError> {
        let result = self.processor.await;
        let _ = self.shutdown.send(true);
        self.http.await??;
        // The pruner stops between two batches; one that hangs on an unresponsive database is
        // not waited for longer than a batch should ever take.
        match tokio::time::timeout(PRUNER_STOP_TIMEOUT, &mut self.pruner).await {
            Ok(joined) => joined?,
            Err(_) => {
                tracing::warn!("the pruner of stored replies did not stop in time; aborted");
                self.pruner.abort();
            }
        }
        self.pool.close().await;
        result??;
        Ok(())
    }

    /// Runs until SIGTERM or Ctrl-C, then lets the processor finish its batch within `bound`.
    pub async fn run_until_signal(self, bound: Duration) -> Result<(), ServeError> {
        let handle = self.shutdown_handle();
        let stopped = self.run_until_stopped();
        tokio::pin!(stopped);
        tokio::select! {
            r = &mut stopped => {
                r.map_err(ServeError::Stopped)?;
                return Err(ServeError::StoppedUnasked);
            }
            _ = shutdown_signal() => {
                tracing::info!(bound = ?bound, "stop requested; finishing the batch in hand");
                handle.shutdown();
            }
        }
        match tokio::time::timeout(bound, stopped).await {
            Ok(r) => r.map_err(ServeError::Stopping)?,
            Err(_) => return Err(ServeError::StopTimeout(bound)),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM (where there is one) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Asks a running [`Application`] to stop.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}
