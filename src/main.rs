//! The `event-updater` binary: reads the configuration, sets up logging, and dispatches to a
//! subcommand: `serve` here, the operator's commands in [`ops`].
//!
//! This is the edge of the program, so errors are `anyhow` here and typed everywhere else.

mod ops;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use event_updater::config::Config;
use event_updater::pipeline::kafka;
use event_updater::store;
use event_updater::Application;

/// mimalloc instead of glibc's malloc: commands are decoded on the fetch thread and freed on
/// the runtime's workers, and glibc's per-thread arenas make such cross-thread frees costly
/// (`_int_free` and `malloc_consolidate` were the hottest symbols of the processor's workers).
/// Without transparent huge pages (`no_thp`), which would keep whole 2 MiB pages resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The `event-updater` command line.
#[derive(Debug, Parser)]
#[command(name = "event-updater", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

/// What to do; `serve` when none is given.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Consume update commands, apply them, publish replies (the default).
    Serve,
    /// Create the database if missing and run the migrations, then exit.
    Migrate,
    /// Print an event's current view and its history of versions.
    Show {
        /// The event UUID (any form Python's uuid.UUID accepts).
        event_uuid: String,
    },
    /// Serve with a demonstration: when no broker answers at KAFKA_BOOTSTRAP_SERVERS, start an
    /// embedded Kafka-protocol broker (librdkafka's mock cluster) on a local port; send a handful
    /// of commands, print their replies, and keep serving.
    Demo,
    /// Manage the API tokens that commands present in `authorization: Bearer <token>`.
    Token {
        #[command(subcommand)]
        action: ops::TokenCommand,
    },
    /// Rebuild the events view from event_log and compare it with the current one (exit code 1
    /// when they differ); --write repairs the rows that differ.
    RebuildProjection(ops::tools::RebuildArgs),
    /// Dead letters: `dlq replay` re-publishes them to the command topic.
    Dlq {
        #[command(subcommand)]
        action: ops::tools::DlqCommand,
    },
    /// Publish one command, wait for its reply and print it (exit code 0 for 2xx, 1 otherwise).
    Send(ops::tools::SendArgs),
    /// The highest offset applied per command partition: `offsets list`, and `offsets reset
    /// --topic T` after the command topic was deleted and created again.
    Offsets {
        #[command(subcommand)]
        action: ops::offsets::OffsetsCommand,
    },
    /// The change feed: `feed backfill` republishes the event log's changes to CHANGES_TOPIC
    /// (and the events' views to VIEW_TOPIC), resumably.
    Feed {
        #[command(subcommand)]
        action: ops::feed::FeedCommand,
    },
}

fn main() -> anyhow::Result<()> {
    // Deeply nested values (up to pyjson::MAX_DEPTH levels) are cloned, serialised and dropped
    // recursively on these threads: give them the stack for it.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(event_updater::drf::pyjson::STACK_BYTES)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let cfg = cli.config;
    match cli.command.unwrap_or(CliCommand::Serve) {
        CliCommand::Serve => serve(cfg).await,
        CliCommand::Migrate => {
            store::connect(&cfg.database_url, 1).await?;
            println!("database {} is migrated", cfg.database_url_masked());
            Ok(())
        }
        CliCommand::Show { event_uuid } => ops::show(&cfg, &event_uuid).await,
        CliCommand::Demo => ops::demo::run(cfg).await,
        CliCommand::Token { action } => ops::token(&cfg, action).await,
        CliCommand::RebuildProjection(args) => ops::tools::rebuild_projection(&cfg, args).await,
        CliCommand::Dlq { action } => ops::tools::dlq(&cfg, action).await,
        CliCommand::Send(args) => ops::tools::send(&cfg, args).await,
        CliCommand::Offsets { action } => ops::offsets::run(&cfg, action).await,
        CliCommand::Feed { action } => ops::feed::run(&cfg, action).await,
    }
}

/// Logs go to stderr: readable by default, JSON with `LOG_FORMAT=json`; `RUST_LOG` filters.
/// Colours only on a terminal (not in `docker logs` or a log file).
fn init_tracing() {
    use std::io::IsTerminal;
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

/// Logs the effective configuration, secrets masked.
pub(crate) fn log_config(cfg: &Config) {
    tracing::info!(
        database_url = %cfg.database_url_masked(),
        kafka_bootstrap_servers = %cfg.kafka_bootstrap_servers,
        command_topic = %cfg.command_topic,
        reply_topic = %cfg.reply_topic,
        dlq_topic = %cfg.dlq_topic,
        kafka_group_id = %cfg.kafka_group_id,
        kafka_group_protocol = %cfg.kafka_group_protocol,
        topic_partitions = cfg.topic_partitions,
        http_addr = %cfg.http_addr,
        max_batch = cfg.max_batch,
        batch_linger_ms = cfg.batch_linger_ms,
        max_batch_bytes = cfg.max_batch_bytes,
        max_in_flight_bytes = cfg.max_in_flight_bytes,
        apply_concurrency = cfg.apply_concurrency,
        max_message_bytes = cfg.max_message_bytes,
        auth_mode = ?cfg.auth_mode,
        reply_to_allow = ?cfg.reply_to_allow,
        kafka_properties = ?kafka::masked_properties(cfg),
        "configuration"
    );
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    log_config(&cfg);
    let bound = cfg.shutdown_timeout();
    let app = Application::build(cfg).await.context("start-up failed")?;
    run_until_signal(app, bound).await
}

/// Runs `app` until SIGTERM or Ctrl-C, then lets it finish its batch within `bound`.
pub(crate) async fn run_until_signal(app: Application, bound: Duration) -> anyhow::Result<()> {
    let handle = app.shutdown_handle();
    let stopped = app.run_until_stopped();
    tokio::pin!(stopped);
    tokio::select! {
        r = &mut stopped => {
            r.context("the processor stopped")?;
            bail!("the processor stopped without being asked to");
        }
        _ = shutdown_signal() => {
            tracing::info!(bound = ?bound, "stop requested; finishing the batch in hand");
            handle.shutdown();
        }
    }
    match tokio::time::timeout(bound, stopped).await {
        Ok(r) => r.context("error while stopping")?,
        Err(_) => bail!("did not stop within {bound:?}; uncommitted commands will be redelivered"),
    }
    tracing::info!("stopped");
    Ok(())
}

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
