//! The `event-updater` binary: parses the command line and dispatches to a subcommand: `serve`
//! to the library's [`startup::serve`], the operator's commands to [`ops`].
//!
//! This is the edge of the program, so errors are `anyhow` here and typed everywhere else.

mod ops;

use clap::{Parser, Subcommand};

use event_updater::config::Config;
use event_updater::startup;

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
    Show(ops::show::ShowArgs),
    /// Serve with a demonstration: when no broker answers at KAFKA_BOOTSTRAP_SERVERS, start an
    /// embedded Kafka-protocol broker (librdkafka's mock cluster) on a local port; send a handful
    /// of commands, print their replies, and keep serving.
    Demo,
    /// Manage the API tokens that commands present in `authorization: Bearer <token>`.
    Token {
        #[command(subcommand)]
        action: ops::token::TokenCommand,
    },
    /// Rebuild the events view from event_log and compare it with the current one (exit code 1
    /// when they differ); --write repairs the rows that differ.
    RebuildProjection(ops::rebuild::RebuildArgs),
    /// Dead letters: `dlq replay` re-publishes them to the command topic.
    Dlq {
        #[command(subcommand)]
        action: ops::dlq::DlqCommand,
    },
    /// Publish one command, wait for its reply and print it (exit code 0 for 2xx, 1 otherwise).
    Send(ops::send::SendArgs),
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
    startup::init_tracing();
    let cfg = cli.config;
    match cli.command.unwrap_or(CliCommand::Serve) {
        CliCommand::Serve => Ok(startup::serve(cfg).await?),
        CliCommand::Migrate => ops::migrate::run(&cfg).await,
        CliCommand::Show(args) => ops::show::run(&cfg, args).await,
        CliCommand::Demo => ops::demo::run(cfg).await,
        CliCommand::Token { action } => ops::token::run(&cfg, action).await,
        CliCommand::RebuildProjection(args) => ops::rebuild::run(&cfg, args).await,
        CliCommand::Dlq { action } => ops::dlq::run(&cfg, action).await,
        CliCommand::Send(args) => ops::send::run(&cfg, args).await,
        CliCommand::Offsets { action } => ops::offsets::run(&cfg, action).await,
        CliCommand::Feed { action } => ops::feed::run(&cfg, action).await,
    }
}
