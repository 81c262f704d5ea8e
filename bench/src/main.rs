//! `event-updater-bench`: the processor's throughput, latency and memory against this machine's
//! broker and PostgreSQL, beside the baselines that bound them, in one run. A crate of its own
//! (`bench/`: the service carries none of it); it starts the `event-updater` binary beside it
//! as the processor under test. This file holds its command line and the order the phases run
//! in; each phase, and what they share, is a module of its own.
//!
//! It only ever writes to what it made: a database and topics named `…bench…<random id>`,
//! created fresh (it refuses to go on when one of them exists already) and removed afterwards.
//! The database and topics named by the configuration are never touched.
//!
//! What it measures, each phase on a fresh database and fresh topics that it removes afterwards:
//! - **Backlog drain, empty log** ([`drain`]). N commands over M events (a share of them invalid)
//!   are produced first; then the processor (`event-updater serve`, started as a child process so
//!   that its peak RSS is its own) drains them. Throughput is read off the replies' record
//!   timestamps (CreateTime, set by the processor's producer when it publishes): the replies
//!   published after the first one, divided by the time from the first reply to the last. Every
//!   request id must be answered exactly once; duplicates and gaps are reported. The processor
//!   publishes the change feed, as it does by default: its changes and view topics are the phase's
//!   own (each where `CHANGES_TOPIC` / `VIEW_TOPIC` is not empty). The drain then ends at the last
//!   record it published, reply or feed record (the feed's record timestamps are the processor's
//!   producer's too), and afterwards the changes topic must hold a record per applied command (its
//!   end offsets), so that the figure is never that of a drain that published no feed.
//! - **Backlog drain, empty log, feed off.** The same drain on a fresh database and fresh topics,
//!   with `CHANGES_TOPIC` and `VIEW_TOPIC` empty: the feed's cost is the share of this rate the
//!   drain with the feed loses. `--feed-rounds` repeats both drains, alternating which goes first,
//!   and takes each side's median; each drain also reports the processor's CPU time per command.
//! - **(b) Broker pass-through** ([`echo`]). The same backlog topic consumed and produced to a
//!   scratch topic with the processor's producer settings, no database: the Kafka-only ceiling.
//! - **(a) Naive baseline.** The first K commands of the same data, drained with MAX_BATCH=1 and
//!   one lane.
//! - **(c) PostgreSQL limit** ([`ingest`]). The rows the processor writes for the same N commands
//!   (log rows, views, stored replies), computed in memory with the processor's own decoding and
//!   decisions, written by plain `INSERT … SELECT FROM unnest` statements in transactions of
//!   [`ingest::INGEST_CHUNK`] commands, unfenced; only the database time is counted.
//! - **Drain with a full log** ([`full_log`]). As the first drain, after `--preload-changes`
//!   changes (and their stored replies and views) for other events were put in the log.
//! - **Latency against load** ([`curve`], [`echo`], [`scrape`]). Commands produced at 10%, 25%,
//!   50%, 75% and 90% of the measured drain rate for `--latency-seconds` each, timed from being
//!   handed to the producer to the reply being read; at each rate the same commands also go through
//!   an echo with the processor's client settings and no database (the broker's own round trip, the
//!   floor); the processor's own latency and per-stage histograms are read from its `/metrics`
//!   around each point.
//! - **Start-up.** A processor started on a warm database (migrated, and served by an earlier
//!   processor of the same phase) with one command waiting: process spawn to its reply read, five
//!   times ([`startup`]).
//! - **Cost per command** ([`cost`]): the CPU time of the processor, PostgreSQL and Kafka
//!   ([`procstat`], from `/proc`) and the WAL bytes ([`wal`]) of the drain, of each point of the
//!   curve and of the set-based ingest, each divided by its window's commands.
//!
//! `--phases` runs a subset ([`phases::Phase`]); a figure whose inputs were not measured is
//! reported as "not measured" (`null` in the JSON).
//!
//! Before each measured phase a `CHECKPOINT` gives every phase the same starting point. The
//! command data is a pure function of the command's index (a seeded splitmix64), so every phase
//! sees the same commands. Librdkafka clients are always dropped (and the child stopped) before
//! topics are deleted: deleting a topic under a live client crashes it with this broker.
//!
//! The child process, its peak RSS, the reply readers and the `/metrics` scrape are the
//! integration tests' own harness (`tests/harness`): both drive the processor the same way.
//!
//! Progress goes to stderr; the table and a `BENCH_JSON {…}` line go to stdout.

mod child;
mod clients;
mod cost;
mod curve;
mod drain;
mod echo;
mod full_log;
mod ingest;
mod percentiles;
mod phases;
mod procstat;
mod report;
mod run;
mod scrape;
mod startup;
mod tally;
mod units;
mod wal;
mod workload;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{value_parser, Args, Parser};

use event_updater::config::Config;
use event_updater::domain::auth::AuthMode;

use crate::drain::median_drain;
use crate::phases::Phase;
use crate::procstat::load_average;
use crate::report::Report;
use crate::run::Bench;

/// The benchmark's own options (the processor's, such as `--max-batch`, are its configuration's).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Commands in each backlog drain and in the PostgreSQL ingest.
    #[arg(long, default_value_t = 200_000, value_parser = value_parser!(u64).range(1..))]
    pub commands: u64,
    /// Distinct events the commands update (commands are keyed by event UUID).
    #[arg(long, default_value_t = 10_000, value_parser = value_parser!(u64).range(1..))]
    pub events: u64,
    /// Share of invalid commands (each answered 400), in percent.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(0..=100))]
    pub invalid_percent: u64,
    /// Commands of the naive baseline (MAX_BATCH=1): the first K commands of the same data.
    #[arg(long, default_value_t = 10_000, value_parser = value_parser!(u64).range(1..))]
    pub naive_commands: u64,
    /// Length of each point of the latency–load curve (10%, 25%, 50% and 75% of the measured
    /// drain rate), for the processor and again for the broker's own echo.
    #[arg(long, default_value_t = 15, value_parser = value_parser!(u64).range(1..))]
    pub latency_seconds: u64,
    /// Rounds of the drain with the feed on and with it off (on an empty log), each drain on a
    /// fresh database and fresh topics, the order alternating (on then off, off then on, …);
    /// the figures are each side's median. More than one steadies the feed's cost on a
    /// machine that is doing other work.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..=9))]
    pub feed_rounds: u64,
    /// Changes put in the log before the second drain (0 skips that drain).
    #[arg(long, default_value_t = 1_000_000)]
    pub preload_changes: u64,
    /// Also write the JSON figures (one line) to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// The phases to run, comma-separated (none named: all of them). A figure whose inputs
    /// were skipped is reported as "not measured".
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<Phase>,
    /// The drain rate (cmd/s) the latency curve's loads are shares of, where the drain phase
    /// is not run (with it, the drain's measured rate is used and this is ignored).
    #[arg(long)]
    pub drain_rate: Option<f64>,
    /// The latency curve's loads, as shares of the drain rate, comma-separated (by default
    /// 0.1, 0.25, 0.5, 0.75 and 0.9, the points the targets and the picture are read at).
    #[arg(long, value_delimiter = ',', value_parser = load_share)]
    pub loads: Vec<f64>,
}

/// A load of the curve: a share of the drain rate above 0 and at most 2.
pub fn load_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 2.0 => Ok(v),
        _ => Err(format!(
            "{s}: a share of the drain rate, above 0 and at most 2"
        )),
    }
}

/// The same allocator as the serving binary, so that the in-process baselines (the echo, the
/// pass-through) run as the processor would.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `event-updater-bench [configuration] [benchmark options]`: the configuration flags and
/// environment of `event-updater` (broker, PostgreSQL, the processor's settings), plus the
/// benchmark's own.
#[derive(Debug, Parser)]
#[command(name = "event-updater-bench", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(flatten)]
    pub bench: BenchArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Decoding recurses as deep as the parser accepts, as in the processor.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(event_updater::drf::pyjson::STACK_BYTES)
        .build()?
        .block_on(run(cli.config, cli.bench))
}

/// Runs every phase, prints the table and the JSON line; removes what it made, even on
/// failure or Ctrl-C.
async fn run(cfg: Config, args: BenchArgs) -> anyhow::Result<()> {
    let bench = Bench::new(cfg, args)?;
    let outcome = tokio::select! {
        r = bench.run_phases() => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    bench.release_all().await;
    let report = outcome?;
    let json = report.to_json();
    println!("{}", report.table());
    println!("BENCH_JSON {json}");
    if let Some(path) = &bench.args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl Bench {
    /// The phases asked for, each on a scope of its own, in their running order
    /// ([`Phase::ALL`]); the curve's loads are shares of the drain's measured rate (or of
    /// `--drain-rate` without the drain).
    async fn run_phases(&self) -> anyhow::Result<Report> {
        let a = &self.args;
        self.progress(format_args!(
            "{} commands over {} events, {}% invalid, MAX_BATCH {}, {} partitions, broker {}",
            a.commands,
            a.events,
            a.invalid_percent,
            self.max_batch,
            self.partitions,
            self.cfg.kafka_bootstrap_servers
        ));
        let phases = phases::selected(&a.phases);
        let has = |p: Phase| phases.contains(&p);
        if has(Phase::Curve) && !has(Phase::Drain) && a.drain_rate.is_none() {
            bail!("the curve's loads are shares of the drain rate: run the drain phase too, or give --drain-rate");
        }
        if a.drain_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            bail!("--drain-rate must be a positive number of commands per second");
        }
        let names: Vec<String> = phases.iter().map(|p| p.name()).collect();
        self.progress(format_args!("phases: {}", names.join(", ")));
        let settings = self.postgres_settings().await?;
        let probe = self.find_processes().await;
        let _ = self.probe.set(probe);
        let load_at_start = load_average();
        let (feed_rounds, pass_through) = if has(Phase::Drain) {
            let with_pass_through = has(Phase::PassThrough);
            let (first, pass_through) = self
                .in_scope(|s| self.drain_and_pass_through(s, with_pass_through))
                .await?;
            (self.feed_rounds(first).await?, pass_through)
        } else if has(Phase::PassThrough) {
            let alone = self.in_scope(|s| self.pass_through_alone(s)).await?;
            (Vec::new(), Some(alone))
        } else {
            (Vec::new(), None)
        };
        let drain =
            (!feed_rounds.is_empty()).then(|| median_drain(feed_rounds.iter().map(|(on, _)| on)));
        let drain_feed_off =
            (!feed_rounds.is_empty()).then(|| median_drain(feed_rounds.iter().map(|(_, off)| off)));
        let naive = match has(Phase::Naive) {
            true => Some(self.in_scope(|s| self.naive(s)).await?),
            false => None,
        };
        let ingest = match has(Phase::Ingest) {
            true => Some(self.in_scope(|s| self.pg_ingest(s)).await?),
            false => None,
        };
        let preloaded = match (has(Phase::FullLog), a.preload_changes) {
            (true, n) if n > 0 => Some(self.in_scope(|s| self.preloaded_drain(s, n)).await?),
            _ => None,
        };
        let curve_base_rate = match &drain {
            Some(d) => Some(
                d.throughput
                    .context("the drain was too short to measure a throughput")?,
            ),
            None => a.drain_rate,
        };
        let curve = match (has(Phase::Curve), curve_base_rate) {
            (true, Some(rate)) => Some(self.in_scope(|s| self.curve(s, rate)).await?),
            _ => None,
        };
        let startup = match has(Phase::Startup) {
            true => Some(self.in_scope(|s| self.startup(s)).await?),
            false => None,
        };
        Ok(Report {
            phases,
            probe,
            curve_base_rate,
            startup,
            args: self.args.clone(),
            max_batch: self.max_batch,
            partitions: self.partitions,
            auth: self.cfg.auth_mode == AuthMode::Required,
            settings,
            load_average: (load_at_start, load_average()),
            drain,
            drain_feed_off,
            feed_rounds,
            config_feed: (
                !self.cfg.changes_topic.is_empty(),
                !self.cfg.view_topic.is_empty(),
            ),
            pass_through,
            naive,
            ingest,
            preloaded,
            curve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::Feed;

    #[test]
    fn the_feed_is_on_by_default_on_the_scopes_own_topics_and_off_entirely() {
        let cli = Cli::try_parse_from([
            "event-updater-bench",
            "--changes-topic",
            "event-changes",
            "--view-topic",
            "event-views",
        ])
        .unwrap();
        let bench = Bench::new(cli.config.clone(), cli.bench).unwrap();
        let scope = bench.new_scope().unwrap();
        assert_eq!(
            Feed::On.topics(&cli.config, &scope),
            (scope.changes.clone(), scope.views.clone())
        );
        assert_eq!(
            Feed::Off.topics(&cli.config, &scope),
            (String::new(), String::new())
        );
        // An empty configured topic stays off, so that the feed's parts can be measured apart.
        let cli = Cli::try_parse_from(["event-updater-bench", "--view-topic", ""]).unwrap();
        assert_eq!(
            Feed::On.topics(&cli.config, &scope),
            (scope.changes.clone(), String::new())
        );
        assert!(scope.topics().contains(&scope.changes) && scope.topics().contains(&scope.views));
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["event-updater-bench", "--max-batch", "7", "--commands", "9"])
                .unwrap();
        assert_eq!((cli.config.max_batch, cli.bench.commands), (7, 9));
    }
}
