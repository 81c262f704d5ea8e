//! `event-updater-bench`: the processor's throughput, latency and memory against this machine's
//! broker and PostgreSQL, beside the baselines that bound them, in one run. A binary of its own
//! (the serving binary carries none of it); it starts the `event-updater` binary beside it as
//! the processor under test.
//!
//! It only ever writes to what it made: a database and topics named `…bench…<random id>`,
//! created fresh (it refuses to go on when one of them exists already) and removed afterwards.
//! The database and topics named by the configuration are never touched.
//!
//! What it measures, each phase on a fresh database and fresh topics that it removes afterwards:
//! - **Backlog drain, empty log.** N commands over M events (a share of them invalid) are
//!   produced first; then the processor (`event-updater serve`, started as a child process so
//!   that its peak RSS is its own) drains them. Throughput is read off the replies' record
//!   timestamps (CreateTime, set by the processor's producer when it publishes): the replies
//!   published after the first one, divided by the time from the first reply to the last.
//!   Every request id must be answered exactly once; duplicates and gaps are reported.
//!   The processor publishes the change feed, as it does by default: its changes and view
//!   topics are the phase's own (each where `CHANGES_TOPIC` / `VIEW_TOPIC` is not empty). The
//!   drain then ends at the last record it published, reply or feed record (the feed's record
//!   timestamps are the processor's producer's too), and afterwards the changes topic must hold
//!   a record per applied command (its end offsets), so that the figure is never that of a
//!   drain that published no feed.
//! - **Backlog drain, empty log, feed off.** The same drain on a fresh database and fresh
//!   topics, with `CHANGES_TOPIC` and `VIEW_TOPIC` empty: the feed's cost is the share of this
//!   rate the drain with the feed loses. `--feed-rounds` repeats both drains, alternating which
//!   goes first, and takes each side's median; each drain also reports the processor's CPU
//!   time per command.
//! - **(b) Broker pass-through.** The same backlog topic consumed and produced to a scratch
//!   topic with the processor's producer settings, no database: the Kafka-only ceiling.
//! - **(a) Naive baseline.** The first K commands of the same data, drained with MAX_BATCH=1
//!   and one lane.
//! - **(c) PostgreSQL limit.** The rows the processor writes for the same N commands (log rows,
//!   views, stored replies), computed in memory with the processor's own decoding and
//!   decisions, written by plain `INSERT … SELECT FROM unnest` statements in transactions of
//!   [`INGEST_CHUNK`] commands, unfenced; only the database time is counted.
//! - **Drain with a full log.** As the first drain, after `--preload-changes` changes (and their
//!   stored replies and views) for other events were put in the log.
//! - **Latency against load.** Commands produced at 10%, 25%, 50%, 75% and 90% of the measured
//!   drain rate for `--latency-seconds` each, timed from being handed to the producer to the
//!   reply being read; at each rate the same commands also go through an echo with the
//!   processor's client settings and no database (the broker's own round trip, the floor); the
//!   processor's own latency and per-stage histograms are read from its `/metrics` around each
//!   point.
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

mod cost;
mod phases;
mod procstat;
mod report;
mod startup;
mod wal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use clap::{value_parser, Args, Parser, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::domain::auth::AuthMode;
use event_updater::domain::command::{self, Command, Incoming};
use event_updater::domain::decide::{decide_batch, Known, Rules, Source};
use event_updater::domain::projection::EventState;
use event_updater::pipeline::consumer::{self, Budget, Health};
use event_updater::pipeline::kafka;
use event_updater::store::{self, tokens};
use event_updater_harness::process::{Log, Processor};
use event_updater_harness::replies::{self, Collector, Replies};

use cost::{or_not_measured, Cost, Mark};
use phases::Phase;
use procstat::{cpu_seconds, Probe};
use startup::Startup;

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
fn load_share(s: &str) -> Result<f64, String> {
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
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    bench: BenchArgs,
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

// ---------------------------------------------------------------------------------------------
// The data

const SEED: u64 = 0x0e7e_47a7_e5ee_d004;
/// Commands per transaction of the PostgreSQL limit (c).
const INGEST_CHUNK: u64 = 20_000;
const REQUEST_PREFIX: &str = "bench-";
/// The drains' names in the progress lines and the tables.
const DRAIN_LABEL: &str = "drain, empty log";
const DRAIN_FEED_OFF_LABEL: &str = "drain, empty log, feed off";
const NAIVE_LABEL: &str = "naive baseline (a)";
/// The feed's cost the drain may bear: the drain with the feed on is at least this share of
/// the drain with it off, less one.
const FEED_COST_BOUND: f64 = 0.20;
const WARMUP_PREFIX: &str = "warmup-";
const VALID_ACTIONS: [&str; 3] = ["login", "logout", "model_updated"];

/// splitmix64 of `z`: the `z`-th draw of a seeded counter-based generator.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The benchmark's commands: command `i` is a pure function of `i`.
#[derive(Debug, Clone)]
struct Workload {
    events: u64,
    invalid_percent: u64,
}

/// One command record: key (the event UUID) and value.
#[derive(Debug)]
struct BenchCommand {
    key: String,
    value: String,
}

impl Workload {
    fn event_uuid(&self, e: u64) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&mix(SEED ^ e.wrapping_mul(2)).to_be_bytes());
        bytes[8..].copy_from_slice(&mix(SEED ^ e.wrapping_mul(2).wrapping_add(1)).to_be_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn is_valid(&self, i: u64) -> bool {
        mix(SEED.rotate_left(17) ^ i) % 100 >= self.invalid_percent
    }

    fn event_of(&self, i: u64) -> Uuid {
        self.event_uuid(mix(SEED.rotate_left(41) ^ i) % self.events)
    }

    fn command(&self, i: u64) -> BenchCommand {
        let action = if self.is_valid(i) {
            VALID_ACTIONS[(i % 3) as usize]
        } else {
            "LOGIN"
        };
        envelope(&format!("{REQUEST_PREFIX}{i}"), self.event_of(i), action, i)
    }

    /// A valid command outside the benchmark's data, to warm the processor up.
    fn warmup(&self, j: u64) -> BenchCommand {
        envelope(
            &format!("{WARMUP_PREFIX}{j}"),
            self.event_uuid(j % self.events),
            "login",
            j,
        )
    }
}

fn envelope(request_id: &str, event: Uuid, action: &str, n: u64) -> BenchCommand {
    let value = format!(
        r#"{{"request_id": "{request_id}", "event_uuid": "{event}", "body": {{"action": "{action}", "app": "authentik.core", "user": {{"pk": 1}}, "context": {{"n": {n}}}, "client_ip": "10.0.0.1"}}}}"#
    );
    BenchCommand {
        key: event.to_string(),
        value,
    }
}

/// The index of a benchmark request id (`bench-<i>`).
fn request_index(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id.strip_prefix(REQUEST_PREFIX.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

/// Headers of every command: the bearer token where the processor requires one.
fn command_headers(authorization: Option<&str>) -> OwnedHeaders {
    match authorization {
        Some(a) => OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "authorization",
            value: Some(a),
        }),
        None => OwnedHeaders::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// One backlog drain.
#[derive(Debug, Clone)]
struct Drain {
    commands: u64,
    max_batch: u32,
    produce_rate: f64,
    throughput: Option<f64>,
    /// From the first reply to the last record the drain published (reply or feed record).
    span_ms: i64,
    replies: ReplyTally,
    /// What the processor left on the feed's topics (`None`: the feed was off).
    feed: Option<FeedTally>,
    peak_rss: u64,
    /// The processor's CPU time (user and system), from its start to its stop.
    cpu_seconds: f64,
    /// Per command, from the processor's spawn (the backlog waiting) to the last command
    /// answered: each process's CPU and the WAL.
    cost: Cost,
}

impl Drain {
    /// The processor's CPU time per command, in microseconds: a figure the machine's other
    /// load moves less than the rate.
    fn cpu_us_per_command(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.commands.max(1) as f64
    }
}

/// Whether a drain's processor publishes the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// As the processor is configured (on by default), on the phase's own topics: a changes
    /// topic where `CHANGES_TOPIC` is not empty, a view topic where `VIEW_TOPIC` is not empty.
    On,
    /// `CHANGES_TOPIC` and `VIEW_TOPIC` empty: no feed at all.
    Off,
}

impl Feed {
    /// The processor's `CHANGES_TOPIC` and `VIEW_TOPIC` in `scope` (empty: off).
    fn topics(self, cfg: &Config, scope: &Scope) -> (String, String) {
        let own = |configured: &str, ours: &str| match self {
            Feed::On if !configured.is_empty() => ours.to_string(),
            _ => String::new(),
        };
        (
            own(&cfg.changes_topic, &scope.changes),
            own(&cfg.view_topic, &scope.views),
        )
    }
}

/// What a drain with the feed on left on the feed's topics.
#[derive(Debug, Clone, Copy, Default)]
struct FeedTally {
    /// Commands applied (answered 200 or 201).
    applied: u64,
    /// The changes topic (`None`: `CHANGES_TOPIC` is empty).
    changes: Option<TopicTally>,
    /// The view topic (`None`: `VIEW_TOPIC` is empty).
    views: Option<TopicTally>,
}

/// A topic's records (the sum of its partitions' end offsets: the topic is new and its producer
/// idempotent, not transactional, so every offset is a record) and the latest CreateTime among
/// its partitions' last records.
#[derive(Debug, Clone, Copy, Default)]
struct TopicTally {
    records: u64,
    last_ms: Option<i64>,
}

impl FeedTally {
    /// When the last feed record was published.
    fn last_ms(&self) -> Option<i64> {
        [self.changes, self.views]
            .iter()
            .flatten()
            .filter_map(|t| t.last_ms)
            .max()
    }

    /// The drain published its feed: a change record (at least) per applied command, and a view
    /// record where anything was applied; each where its topic is on.
    fn complete(&self) -> bool {
        self.changes.is_none_or(|c| c.records >= self.applied)
            && self
                .views
                .is_none_or(|v| self.applied == 0 || v.records > 0)
    }

    /// `changes: 180,142 records for 180,142 applied commands; views: 83,000 records`.
    fn show(&self) -> String {
        let topic = |t: Option<TopicTally>| {
            t.map_or("off".to_string(), |t| {
                format!("{} records", fmt_count(t.records as f64))
            })
        };
        format!(
            "changes topic: {} for {} applied commands; view topic: {}",
            topic(self.changes),
            fmt_count(self.applied as f64),
            topic(self.views)
        )
    }
}

/// What came back on the reply topic of a drain.
#[derive(Debug, Clone, Default)]
struct ReplyTally {
    records: u64,
    answered: u64,
    duplicates: u64,
    missing: u64,
    foreign: u64,
    statuses: BTreeMap<u16, u64>,
    span_ms: i64,
    after_first: u64,
    /// CreateTime of the first and of the last reply.
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Ingest {
    commands: u64,
    rate: f64,
    transactions: u64,
    log_rows: u64,
    view_upserts: u64,
    reply_rows: u64,
    /// PostgreSQL's CPU and WAL per command over the ingest (no processor, no Kafka).
    cost: Cost,
}

/// The broker pass-through (b).
#[derive(Debug, Clone, Copy)]
struct PassThrough {
    rate: f64,
    /// The broker's CPU per record, and the benchmark's own (the client) as `bench_us`.
    cost: Cost,
}

#[derive(Debug, Clone)]
struct Preloaded {
    changes: u64,
    fill_seconds: f64,
    drain: Drain,
}

/// Latency percentiles of one run, in milliseconds (an unanswered command counts as
/// infinitely late, so that it cannot improve a percentile).
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    /// `p50 / p99 / p99.9`.
    fn show(&self) -> String {
        format!(
            "{} / {} / {}",
            fmt_ms(self.p50),
            fmt_ms(self.p99),
            fmt_ms(self.p999)
        )
    }

    /// `p50 / p99`.
    fn show_p50_p99(&self) -> String {
        format!("{} / {}", fmt_ms(self.p50), fmt_ms(self.p99))
    }
}

/// One point of the latency–load curve: the processor and, at the same rate, the floor.
#[derive(Debug, Clone)]
struct LoadPoint {
    /// Share of the measured drain rate.
    load: f64,
    target_rate: f64,
    achieved_rate: f64,
    sent: u64,
    answered: u64,
    /// Handed to the producer → reply read, through the processor.
    end_to_end: Percentiles,
    /// Inside the processor: command record timestamp → reply acknowledged, from the
    /// processor's own histogram (interpolated within buckets, as Prometheus does; `max` is the
    /// upper bound of the highest bucket reached).
    inside: Percentiles,
    /// The broker's own round trip at the same rate (consume → produce, no database, the
    /// processor's client settings), handed to the producer → echo read.
    floor: Percentiles,
    floor_answered: u64,
    /// Per batch, inside the processor: every stage of its `event_updater_stage_seconds`
    /// histogram, in the order the stages run ([`stage_rank`]).
    stages: Vec<(String, Percentiles)>,
    /// The processor's window (its commands produced and answered): CPU and WAL per command.
    cost: Cost,
}

/// What one timed run measured.
#[derive(Debug, Clone)]
struct TimedRun {
    achieved_rate: f64,
    answered: u64,
    percentiles: Percentiles,
}

#[derive(Debug, Clone)]
struct Curve {
    points: Vec<LoadPoint>,
    peak_rss: u64,
}

#[derive(Debug, Clone)]
struct Report {
    args: BenchArgs,
    max_batch: u32,
    partitions: i32,
    auth: bool,
    settings: BTreeMap<String, String>,
    /// The machine's 1-minute load average when the run started and when it ended: the
    /// benchmark alone keeps it at about the core count; much more says something else ran.
    load_average: (Option<f64>, Option<f64>),
    /// The phases run.
    phases: Vec<Phase>,
    /// The processes whose CPU was read (the processor's pid is each phase's).
    probe: Probe,
    /// The drain on an empty log, the feed on (the processor's default).
    drain: Option<Drain>,
    /// The same drain with the feed off.
    drain_feed_off: Option<Drain>,
    /// Every round's drains (feed on, feed off); `drain` and `drain_feed_off` are the medians.
    feed_rounds: Vec<(Drain, Drain)>,
    /// Whether the drains with the feed on had a changes topic and a view topic
    /// (`CHANGES_TOPIC`, `VIEW_TOPIC` not empty).
    config_feed: (bool, bool),
    pass_through: Option<PassThrough>,
    naive: Option<Drain>,
    ingest: Option<Ingest>,
    preloaded: Option<Preloaded>,
    /// The rate the curve's loads are shares of: the drain's, else `--drain-rate`.
    curve_base_rate: Option<f64>,
    curve: Option<Curve>,
    startup: Option<Startup>,
}

// ---------------------------------------------------------------------------------------------
// The run

/// A phase's database and topics.
#[derive(Debug, Clone)]
struct Scope {
    db: String,
    db_url: String,
    commands: String,
    replies: String,
    dlq: String,
    scratch: String,
    echo_replies: String,
    /// The feed's topics, created by the processor where its feed is on.
    changes: String,
    views: String,
    group: String,
}

impl Scope {
    fn topics(&self) -> Vec<String> {
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

#[derive(Debug)]
struct Bench {
    cfg: Config,
    args: BenchArgs,
    max_batch: u32,
    partitions: i32,
    workload: Workload,
    admin_url: String,
    started: Instant,
    /// Scopes not released yet, removed at the end whatever happens.
    leftovers: Mutex<Vec<Scope>>,
    /// PostgreSQL's and Kafka's processes, found when the run starts.
    probe: std::sync::OnceLock<Probe>,
}

impl Bench {
    fn new(cfg: Config, args: BenchArgs) -> anyhow::Result<Bench> {
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

    fn progress(&self, text: impl std::fmt::Display) {
        eprintln!(
            "[bench {:>6.1}s] {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

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

    /// Runs `phase` on a fresh scope and removes the scope afterwards, whatever the outcome.
    async fn in_scope<T, F, Fut>(&self, phase: F) -> anyhow::Result<T>
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

    fn new_scope(&self) -> anyhow::Result<Scope> {
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

    async fn release_all(&self) {
        let left: Vec<Scope> = match self.leftovers.lock() {
            Ok(l) => l.clone(),
            Err(_) => return,
        };
        for scope in left {
            self.release(&scope).await;
        }
    }

    // -- phases --------------------------------------------------------------------------------

    /// The first drain, then (`with_pass_through`) the pass-through of its backlog.
    async fn drain_and_pass_through(
        &self,
        scope: Scope,
        with_pass_through: bool,
    ) -> anyhow::Result<(Drain, Option<PassThrough>)> {
        let n = self.args.commands;
        let drain = self
            .drain(&scope, n, self.max_batch, Feed::On, DRAIN_LABEL, None)
            .await?;
        let pass_through = match with_pass_through {
            true => Some(self.pass_through(&scope, n).await?),
            false => None,
        };
        Ok((drain, pass_through))
    }

    /// The pass-through without a drain before it: its backlog is produced first.
    async fn pass_through_alone(&self, scope: Scope) -> anyhow::Result<PassThrough> {
        let n = self.args.commands;
        create_topics(&self.cfg, &[&scope.commands], self.partitions).await?;
        self.progress(format_args!("pass-through (b): producing {n} commands"));
        self.produce_backlog(&scope.commands, n, None).await?;
        self.pass_through(&scope, n).await
    }

    /// PostgreSQL's postmaster (the parent of a session's backend) and the broker's JVM (the
    /// `kafka.Kafka` process listening on the bootstrap server's port), where they run on this
    /// machine; what is not found is "not measured".
    async fn find_processes(&self) -> Probe {
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
    fn probe(&self) -> Probe {
        self.probe.get().copied().unwrap_or_default()
    }

    /// `--feed-rounds` pairs of drains on an empty log, (feed on, feed off), the first on
    /// being `first`; each round after the first drains in the other order than the one
    /// before, so that neither side always runs first.
    async fn feed_rounds(&self, first: Drain) -> anyhow::Result<Vec<(Drain, Drain)>> {
        let rounds = self.args.feed_rounds;
        let mut out = Vec::new();
        let mut first = Some(first);
        for round in 1..=rounds {
            let label = |base: &str| match rounds {
                1 => base.to_string(),
                _ => format!("{base} (round {round} of {rounds})"),
            };
            let (on_label, off_label) = (label(DRAIN_LABEL), label(DRAIN_FEED_OFF_LABEL));
            let on = |first: Option<Drain>| async {
                match first {
                    Some(d) => Ok(d),
                    None => {
                        self.in_scope(|s| self.empty_log_drain(s, Feed::On, &on_label))
                            .await
                    }
                }
            };
            let off = || self.in_scope(|s| self.empty_log_drain(s, Feed::Off, &off_label));
            let pair = if round % 2 == 1 {
                let on = on(first.take()).await?;
                (on, off().await?)
            } else {
                let off = off().await?;
                (on(first.take()).await?, off)
            };
            out.push(pair);
        }
        Ok(out)
    }

    /// The drain of the `--commands` commands on an empty log, the feed on or off.
    async fn empty_log_drain(
        &self,
        scope: Scope,
        feed: Feed,
        label: &str,
    ) -> anyhow::Result<Drain> {
        let n = self.args.commands;
        self.drain(&scope, n, self.max_batch, feed, label, None)
            .await
    }

    /// (a): the first K commands of the same data, one command per transaction.
    async fn naive(&self, scope: Scope) -> anyhow::Result<Drain> {
        let k = self.args.naive_commands;
        self.drain(&scope, k, 1, Feed::On, NAIVE_LABEL, None).await
    }

    /// Produces `n` commands, then lets a processor drain them, publishing its feed or not;
    /// `prepared`: the database was made (and filled) already, with this authorization header.
    /// With the feed on, the drain ends at the last record published, reply or feed record, and
    /// the feed's topics are counted once the processor has stopped.
    async fn drain(
        &self,
        scope: &Scope,
        n: u64,
        max_batch: u32,
        feed: Feed,
        label: &str,
        prepared: Option<Option<String>>,
    ) -> anyhow::Result<Drain> {
        let authorization = match prepared {
            Some(a) => a,
            None => self.prepare_database(scope).await?.1,
        };
        create_topics(
            &self.cfg,
            &[&scope.commands, &scope.replies, &scope.dlq],
            self.partitions,
        )
        .await?;
        self.progress(format_args!("{label}: producing {n} commands"));
        let produce_rate = self
            .produce_backlog(&scope.commands, n, authorization.as_deref())
            .await?;
        self.progress(format_args!(
            "{label}: backlog of {n} produced at {} cmd/s; starting the processor (MAX_BATCH {max_batch})",
            fmt_count(produce_rate)
        ));
        self.checkpoint().await;
        let collector = Collector::start(reader(&self.cfg, &scope.replies, self.partitions)?);
        // The window: the WAL position before the spawn, every process's CPU right after it
        // (the processor's is nil then), to the last command answered.
        let wal = cost::wal_position(&self.admin_url).await;
        let mut child = ChildProcessor::spawn(&self.cfg, scope, max_batch, feed)?;
        let probe = self.probe().with_processor(Some(child.child.pid()));
        let mark = Mark::with_wal(&probe, wal);
        self.await_answers(&mut child, &collector, n, label).await?;
        let cost = mark.cost(&probe, &self.admin_url, n).await;
        let Stopped {
            peak_rss,
            cpu_seconds,
        } = child.stop().await?;
        // Anything published after the last command was answered (a duplicate) is counted too.
        collector.settle(Duration::from_secs(2)).await;
        let replies = ReplyTally::of(&collector.stop().await, n);
        let feed = match feed {
            Feed::On => {
                let tally = self.feed_tally(scope, replies.applied()).await?;
                self.progress(format_args!("{label}: {}", tally.show()));
                Some(tally)
            }
            Feed::Off => None,
        };
        let span_ms = drain_span(&replies, feed.and_then(|f| f.last_ms()));
        let throughput = throughput(&replies, span_ms);
        self.progress(format_args!(
            "{label}: {} cmd/s, {} answered, {} duplicates, {} missing, peak RSS {}, CPU {:.1} s; per command: {}",
            throughput.map_or("-".into(), fmt_count),
            replies.answered,
            replies.duplicates,
            replies.missing,
            fmt_mib(peak_rss),
            cpu_seconds,
            show_cost(&cost)
        ));
        Ok(Drain {
            commands: n,
            max_batch,
            produce_rate,
            throughput,
            span_ms,
            replies,
            feed,
            peak_rss,
            cpu_seconds,
            cost,
        })
    }

    /// Counts what the drain's processor (stopped by now) left on `scope`'s feed topics, for
    /// `applied` applied commands.
    async fn feed_tally(&self, scope: &Scope, applied: u64) -> anyhow::Result<FeedTally> {
        let (changes, views) = Feed::On.topics(&self.cfg, scope);
        let cfg = self.cfg.clone();
        // librdkafka's metadata, watermark and poll calls block.
        tokio::task::spawn_blocking(move || {
            let tally = |topic: &str| {
                (!topic.is_empty())
                    .then(|| topic_tally(&cfg, topic))
                    .transpose()
            };
            Ok(FeedTally {
                applied,
                changes: tally(&changes)?,
                views: tally(&views)?,
            })
        })
        .await?
    }

    /// (b): consume the backlog topic and produce every record to a scratch topic.
    async fn pass_through(&self, scope: &Scope, n: u64) -> anyhow::Result<PassThrough> {
        create_topics(&self.cfg, &[&scope.scratch], self.partitions).await?;
        self.progress("pass-through (b): consuming the backlog, producing it again");
        let consumer = reader(&self.cfg, &scope.commands, self.partitions)?;
        let producer = kafka::producer(&self.cfg)?;
        let mut pipe = Pipeline::new(&producer);
        let mut started = None;
        // Kafka and its client (this process); PostgreSQL has no part in it.
        let probe = Probe {
            this: true,
            kafka: self.probe().kafka,
            ..Probe::default()
        };
        let mark = Mark::with_wal(&probe, None);
        for _ in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .context("no record within 30 s")??;
            started.get_or_insert_with(Instant::now);
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&scope.scratch).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(h) = m.headers() {
                record = record.headers(h.detach());
            }
            pipe.send(record).await?;
        }
        pipe.finish().await?;
        let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let cost = mark.cost(&probe, &self.admin_url, n).await;
        let rate = n as f64 / seconds.max(1e-9);
        self.progress(format_args!(
            "pass-through (b): {} cmd/s; Kafka's CPU per record {}, the benchmark's (the client) {}",
            fmt_count(rate),
            or_not_measured(cost.kafka_us, |us| format!("{us:.1} µs")),
            or_not_measured(cost.bench_us, |us| format!("{us:.1} µs"))
        ));
        Ok(PassThrough { rate, cost })
    }

    /// (c): PostgreSQL's limit for the same rows: the log rows, views and stored replies of the
    /// N commands, computed in memory with the processor's own decoding and decisions, then
    /// written by plain `INSERT … SELECT FROM unnest` statements in large transactions
    /// ([`INGEST_CHUNK`] commands each, one view row per event touched in a chunk), without
    /// Kafka and without the processor's fences; only the database time is counted.
    async fn pg_ingest(&self, scope: Scope) -> anyhow::Result<Ingest> {
        let n = self.args.commands;
        self.progress(format_args!(
            "PostgreSQL ingest (c): the rows of {n} commands, {INGEST_CHUNK} per transaction"
        ));
        let pool = store::connect(&scope.db_url, 1).await?;
        self.checkpoint().await;
        let mut states: HashMap<Uuid, EventState> = HashMap::new();
        let mut db_time = Duration::ZERO;
        let mut out = Ingest {
            commands: n,
            rate: 0.0,
            transactions: 0,
            log_rows: 0,
            view_upserts: 0,
            reply_rows: 0,
            cost: Cost::default(),
        };
        // PostgreSQL alone: no processor, and Kafka has no part in it.
        let probe = Probe {
            postmaster: self.probe().postmaster,
            ..Probe::default()
        };
        let mark = Mark::now(&probe, &self.admin_url, true).await;
        let mut i = 0;
        while i < n {
            let end = n.min(i + INGEST_CHUNK);
            let now = Utc::now();
            let rows = self.ingest_rows(i..end, &mut states, now);
            let t = Instant::now();
            let mut tx = pool.begin().await?;
            rows.write_unfenced(&mut tx, now).await?;
            tx.commit().await?;
            db_time += t.elapsed();
            out.transactions += 1;
            let (log, views, replies) = rows.counts();
            out.log_rows += log as u64;
            out.view_upserts += views as u64;
            out.reply_rows += replies as u64;
            i = end;
        }
        out.cost = mark.cost(&probe, &self.admin_url, n).await;
        pool.close().await;
        out.rate = n as f64 / db_time.as_secs_f64().max(1e-9);
        self.progress(format_args!(
            "PostgreSQL ingest (c): {} cmd/s ({} log rows, {} view upserts, {} replies); per command: {}",
            fmt_count(out.rate),
            out.log_rows,
            out.view_upserts,
            out.reply_rows,
            show_cost(&out.cost)
        ));
        Ok(out)
    }

    /// Decodes and decides commands `range` in memory with the processor's own functions
    /// ([`command::decode`], [`decide_batch`]), against `states` (the events as the log has them
    /// so far, updated here). Tokens are not part of the limit: its records carry none, and the
    /// rows are those of authorized commands (one scope).
    fn ingest_rows(
        &self,
        range: std::ops::Range<u64>,
        states: &mut HashMap<Uuid, EventState>,
        now: DateTime<Utc>,
    ) -> store::Writes {
        let commands: Vec<(Command, Source)> = range
            .map(|i| {
                let c = self.workload.command(i);
                let source = Source {
                    topic: "bench".into(),
                    partition: (i % self.partitions.max(1) as u64) as i32,
                    offset: i64::try_from(i).unwrap_or(i64::MAX),
                };
                let incoming = Incoming {
                    topic: source.topic.clone(),
                    partition: source.partition,
                    offset: source.offset,
                    key: Some(c.key.into_bytes()),
                    payload: Some(c.value.into_bytes()),
                    ..Incoming::default()
                };
                let cmd =
                    command::decode(&incoming, self.cfg.max_message_bytes, AuthMode::Disabled);
                (cmd, source)
            })
            .collect();
        // What the database would know: the current state of every event the commands name.
        let mut known = Known::default();
        for (c, _) in &commands {
            if let Some(u) = c.action.event_uuid_to_apply() {
                if let Some(s) = states.get(&u) {
                    known.states.entry(u).or_insert_with(|| s.clone());
                }
            }
        }
        let rules = Rules {
            auth_mode: AuthMode::Disabled,
            max_reply_bytes: self.cfg.max_reply_bytes,
        };
        let (_, effects) = decide_batch(&commands, known, rules, now);
        let writes = store::Writes::of(&effects);
        for v in effects.views {
            states.insert(v.state.event_uuid, v.state);
        }
        writes
    }

    /// The drain again, after filling the log with `changes` changes of other events.
    async fn preloaded_drain(&self, scope: Scope, changes: u64) -> anyhow::Result<Preloaded> {
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

    async fn preload(&self, pool: &PgPool, changes: u64) -> anyhow::Result<()> {
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

    /// The latency–load curve: commands at `--loads` (by default [`LOADS`]) of the drain rate,
    /// each timed from being handed to the producer to its reply being read, through the
    /// processor and, at the same rate, through the broker's own echo (the floor). One processor and one
    /// echo serve every point, each warmed up first; the points use distinct commands.
    async fn curve(&self, scope: Scope, drain_rate: f64) -> anyhow::Result<Curve> {
        let (pool, authorization) = self.prepare_database(&scope).await?;
        pool.close().await;
        create_topics(
            &self.cfg,
            &[
                &scope.commands,
                &scope.replies,
                &scope.dlq,
                &scope.scratch,
                &scope.echo_replies,
            ],
            self.partitions,
        )
        .await?;
        self.checkpoint().await;
        let mut child = ChildProcessor::spawn(&self.cfg, &scope, self.max_batch, Feed::On)?;
        let echo = Echo::start(
            &self.cfg,
            &scope.scratch,
            &scope.echo_replies,
            &format!("{}-echo", scope.group),
        )?;
        let replies = Collector::start(reader(&self.cfg, &scope.replies, self.partitions)?);
        let echoes = Collector::start(reader(&self.cfg, &scope.echo_replies, self.partitions)?);
        let producer = latency_producer(&self.cfg)?;
        let headers = command_headers(authorization.as_deref());
        self.progress("latency: warming the processor and the echo up");
        warm_up(
            &self.workload,
            &producer,
            &replies,
            &scope.commands,
            &headers,
            || child.ensure_running(),
        )
        .await?;
        warm_up(
            &self.workload,
            &producer,
            &echoes,
            &scope.scratch,
            &headers,
            || Ok(()),
        )
        .await?;

        let mut points = Vec::new();
        let mut base = 0;
        let loads = match self.args.loads.is_empty() {
            true => LOADS.to_vec(),
            false => self.args.loads.clone(),
        };
        for load in loads {
            let rate = drain_rate * load;
            let total = ((rate * self.args.latency_seconds as f64).round() as u64).max(1);
            self.progress(format_args!(
                "latency at {:.0}% ({} cmd/s, {total} commands): the processor",
                load * 100.0,
                fmt_count(rate),
            ));
            let before = scrape_histograms(child.http_addr).await?;
            let probe = self.probe().with_processor(Some(child.child.pid()));
            let mark = Mark::now(&probe, &self.admin_url, true).await;
            let run = self
                .timed_run(
                    &producer,
                    &replies,
                    &scope.commands,
                    &headers,
                    rate,
                    base,
                    total,
                )
                .await?;
            let cost = mark.cost(&probe, &self.admin_url, total).await;
            let after = scrape_histograms(child.http_addr).await?;
            child.ensure_running()?;
            base += total;
            self.progress(format_args!(
                "latency at {:.0}%: the broker's echo",
                load * 100.0
            ));
            let floor = self
                .timed_run(
                    &producer,
                    &echoes,
                    &scope.scratch,
                    &headers,
                    rate,
                    base,
                    total,
                )
                .await?;
            base += total;
            let inside =
                series_percentiles(&before, &after, event_updater::metrics::COMMAND_LATENCY);
            let stages = stage_names(&after)
                .into_iter()
                .map(|stage| {
                    let series = stage_series(&stage);
                    let p = series_percentiles(&before, &after, &series);
                    (stage, p)
                })
                .collect();
            let point = LoadPoint {
                load,
                target_rate: rate,
                achieved_rate: run.achieved_rate,
                sent: total,
                answered: run.answered,
                end_to_end: run.percentiles,
                inside,
                floor: floor.percentiles,
                floor_answered: floor.answered,
                stages,
                cost,
            };
            self.progress(format_args!(
                "latency at {:.0}%: per command {}",
                load * 100.0,
                show_cost(&point.cost)
            ));
            self.progress(format_args!(
                "latency at {:.0}% (p50 / p99 / p99.9): end to end {}; inside {}; floor {}; {} of {} answered",
                load * 100.0,
                point.end_to_end.show(),
                point.inside.show_p50_p99(),
                point.floor.show(),
                point.answered,
                point.sent,
            ));
            let stages: Vec<String> = point
                .stages
                .iter()
                .map(|(name, p)| format!("{name} {}", p.show_p50_p99()))
                .collect();
            self.progress(format_args!(
                "latency at {:.0}%: per batch {}",
                load * 100.0,
                stages.join("; ")
            ));
            points.push(point);
        }
        let peak_rss = child.stop().await?.peak_rss;
        drop(echo);
        Ok(Curve { points, peak_rss })
    }

    /// Produces commands `base..base + total` to `topic` at `rate` and times each from being
    /// handed to the producer to its reply being read by `replies`. Gives up at the point's
    /// deadline, or 30 s after the last reply.
    #[allow(clippy::too_many_arguments)]
    async fn timed_run(
        &self,
        producer: &FutureProducer,
        replies: &Collector,
        topic: &str,
        headers: &OwnedHeaders,
        rate: f64,
        base: u64,
        total: u64,
    ) -> anyhow::Result<TimedRun> {
        let ids: Vec<String> = (base..base + total)
            .map(|i| format!("{REQUEST_PREFIX}{i}"))
            .collect();
        let ((sent_at, produced), _) = tokio::join!(
            produce_paced(&self.workload, producer, topic, headers, rate, base, total),
            replies.wait_while_arriving(&ids, self.latency_wait(), Duration::from_secs(30)),
        );
        let achieved_rate = produced?;
        // Each command's first reply, as the collector read it; the rest of the point's
        // replies (and any late ones of earlier points) go with it.
        let read = replies.take();
        let received: Vec<Option<Instant>> = ids
            .iter()
            .map(|id| read.get(id).and_then(|r| r.first()).map(|r| r.read_at))
            .collect();
        let mut ms: Vec<f64> = sent_at
            .iter()
            .zip(&received)
            .map(|(s, r)| {
                r.map_or(f64::INFINITY, |r| {
                    r.saturating_duration_since(*s).as_secs_f64() * 1e3
                })
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        Ok(TimedRun {
            achieved_rate,
            answered: received.iter().flatten().count() as u64,
            percentiles: Percentiles {
                p50: percentile(&ms, 0.50),
                p99: percentile(&ms, 0.99),
                p999: percentile(&ms, 0.999),
                max: ms.last().copied().unwrap_or(f64::NAN),
            },
        })
    }

    // -- helpers -------------------------------------------------------------------------------

    /// How long a point of the curve waits for replies: its own length, plus twice that (at
    /// least a minute) for a processor that fell behind to catch up.
    fn latency_wait(&self) -> Duration {
        let run = self.args.latency_seconds;
        Duration::from_secs(run + (2 * run).max(60))
    }

    /// Creates and migrates the scope's database; where the processor requires tokens, creates
    /// one and returns its `authorization` header value.
    async fn prepare_database(&self, scope: &Scope) -> anyhow::Result<(PgPool, Option<String>)> {
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

    async fn produce_backlog(
        &self,
        topic: &str,
        n: u64,
        authorization: Option<&str>,
    ) -> anyhow::Result<f64> {
        let producer = backlog_producer(&self.cfg)?;
        let headers = command_headers(authorization);
        let started = Instant::now();
        let mut pipe = Pipeline::new(&producer);
        for i in 0..n {
            let c = self.workload.command(i);
            let record = FutureRecord::to(topic)
                .key(c.key.as_str())
                .payload(c.value.as_str())
                .headers(headers.clone());
            pipe.send(record).await?;
        }
        pipe.finish().await?;
        Ok(n as f64 / started.elapsed().as_secs_f64().max(1e-9))
    }

    /// Waits while the processor drains, until every command is answered; fails when the
    /// processor exits or nothing is answered for three minutes.
    async fn await_answers(
        &self,
        child: &mut ChildProcessor,
        collector: &Collector,
        n: u64,
        label: &str,
    ) -> anyhow::Result<()> {
        const STALL: Duration = Duration::from_secs(180);
        let started = Instant::now();
        let mut printed = Instant::now();
        while (collector.answered() as u64) < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
            child.ensure_running()?;
            if collector.last_read().unwrap_or(started).elapsed() > STALL {
                bail!(
                    "{label}: no reply for {STALL:?}, {} of {n} commands answered",
                    collector.answered()
                );
            }
            if printed.elapsed() >= Duration::from_secs(5) {
                self.progress(format_args!(
                    "{label}: {} of {n} answered",
                    collector.answered()
                ));
                printed = Instant::now();
            }
        }
        Ok(())
    }

    async fn admin_connection(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.admin_url)
            .await
            .context("connecting to PostgreSQL")
    }

    /// Flushes dirty pages so that no phase pays for an earlier phase's writes.
    async fn checkpoint(&self) {
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

    async fn postgres_settings(&self) -> anyhow::Result<BTreeMap<String, String>> {
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

// ---------------------------------------------------------------------------------------------
// Kafka

/// A consumer assigned every partition of `topic` from the beginning, outside any group.
fn reader(cfg: &Config, topic: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
    let group = format!("bench-reader-{}", Uuid::new_v4().simple());
    Ok(replies::reader(
        kafka::client_config(cfg),
        &group,
        topic,
        partitions,
    )?)
}

fn producer_with(cfg: &Config, tweaks: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
    let mut c: ClientConfig = kafka::client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    for (k, v) in tweaks {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    Ok(c.create()?)
}

/// Batches as large as the broker takes: the backlog is produced as fast as possible.
fn backlog_producer(cfg: &Config) -> anyhow::Result<FutureProducer> {
    producer_with(cfg, &[("linger.ms", "20"), ("batch.size", "1000000")])
}

/// Little lingering: produce time is where each command's latency starts.
fn latency_producer(cfg: &Config) -> anyhow::Result<FutureProducer> {
    producer_with(cfg, &[("linger.ms", "1")])
}

async fn create_topics(cfg: &Config, names: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(cfg).create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                partitions,
                TopicReplication::Fixed(cfg.topic_replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&topics, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("could not create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Best effort: the topics of a scope, some of which may never have been created.
async fn delete_topics(cfg: &Config, names: &[String]) {
    let Ok(admin) = kafka::client_config(cfg).create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(Duration::from_secs(20), admin.delete_topics(&names, &opts)).await;
}

/// The records of `topic` (its partitions' end offsets; a topic that does not exist has none)
/// and the CreateTime of the latest of its partitions' last records. Blocks.
fn topic_tally(cfg: &Config, topic: &str) -> anyhow::Result<TopicTally> {
    const BOUND: Duration = Duration::from_secs(30);
    let consumer: BaseConsumer = kafka::client_config(cfg)
        .set(
            "group.id",
            format!("bench-tally-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Timeout::After(BOUND))?;
    let Some(t) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return Ok(TopicTally::default());
    };
    let mut tally = TopicTally::default();
    let mut last = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Timeout::After(BOUND))?;
        tally.records += u64::try_from(high).unwrap_or(0);
        if high > low {
            last.add_partition_offset(topic, p.id(), Offset::Offset(high - 1))?;
        }
    }
    let mut waiting = last.count();
    consumer.assign(&last)?;
    let deadline = Instant::now() + BOUND;
    while waiting > 0 {
        if Instant::now() > deadline {
            bail!("{topic}: the last record of {waiting} partitions not read within {BOUND:?}");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let ts = m?.timestamp().to_millis();
            tally.last_ms = tally.last_ms.max(ts);
            waiting -= 1;
        }
    }
    Ok(tally)
}

/// Produces without waiting for each record: at most `WINDOW` unacknowledged at a time.
struct Pipeline<'p> {
    producer: &'p FutureProducer,
    pending: VecDeque<DeliveryFuture>,
}

impl<'p> Pipeline<'p> {
    const WINDOW: usize = 100_000;

    fn new(producer: &'p FutureProducer) -> Self {
        Pipeline {
            producer,
            pending: VecDeque::new(),
        }
    }

    async fn send<K, P>(&mut self, mut record: FutureRecord<'_, K, P>) -> anyhow::Result<()>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        loop {
            if self.pending.len() >= Self::WINDOW {
                self.settle_one().await?;
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.pending.push_back(f);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if self.pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.settle_one().await?;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    async fn settle_one(&mut self) -> anyhow::Result<()> {
        let Some(f) = self.pending.pop_front() else {
            return Ok(());
        };
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(anyhow!("a record was not delivered: {e}")),
            Err(_) => Err(anyhow!("the producer went away")),
        }
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

impl ReplyTally {
    /// What a drain of commands `bench-0..bench-<n>` got back: each command's replies, the
    /// statuses, and the span of the replies' record timestamps.
    fn of(replies: &Replies, n: u64) -> ReplyTally {
        let mut t = ReplyTally::default();
        let mut stamps = Vec::new();
        for (id, copies) in replies {
            let copies_n = copies.len() as u64;
            t.records += copies_n;
            match request_index(id.as_bytes()).filter(|i| *i < n) {
                Some(_) => {
                    t.answered += 1;
                    t.duplicates += copies_n - 1;
                }
                None => t.foreign += copies_n,
            }
            for c in copies {
                *t.statuses.entry(reply_status(&c.value)).or_default() += 1;
                stamps.extend(c.timestamp_ms);
            }
        }
        t.missing = n - t.answered;
        if let (Some(first), Some(last)) = (stamps.iter().min(), stamps.iter().max()) {
            t.span_ms = last - first;
            t.after_first = stamps.iter().filter(|ts| *ts > first).count() as u64;
            (t.first_ms, t.last_ms) = (Some(*first), Some(*last));
        }
        t
    }

    /// Commands applied: answered 200 (updated) or 201 (created).
    fn applied(&self) -> u64 {
        APPLIED_STATUSES
            .iter()
            .map(|s| self.statuses.get(s).copied().unwrap_or(0))
            .sum()
    }
}

/// The reply statuses of an applied command (each appends one change).
const APPLIED_STATUSES: [u16; 2] = [200, 201];

/// The `status` of a reply value, found without parsing the whole reply (0: none).
fn reply_status(value: &[u8]) -> u16 {
    const KEY: &[u8] = b"\"status\":";
    let Some(at) = value.windows(KEY.len()).position(|w| w == KEY) else {
        return 0;
    };
    let digits: Vec<u8> = value[at + KEY.len()..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// The drain of median throughput (of an even number, the lower of the middle two; a drain too
/// short to measure counts as the slowest). `drains` is not empty: `--feed-rounds` is at least 1.
fn median_drain<'d>(drains: impl Iterator<Item = &'d Drain>) -> Drain {
    let mut d: Vec<&Drain> = drains.collect();
    d.sort_by(|a, b| {
        let rate = |x: &Drain| x.throughput.unwrap_or(f64::NEG_INFINITY);
        rate(a).total_cmp(&rate(b))
    });
    d[(d.len() - 1) / 2].clone()
}

/// From the first reply to the last record the drain published: the last reply, or a feed
/// record published after it (`feed_last_ms`).
fn drain_span(t: &ReplyTally, feed_last_ms: Option<i64>) -> i64 {
    match (t.first_ms, t.last_ms.max(feed_last_ms)) {
        (Some(first), Some(last)) => last - first,
        _ => 0,
    }
}

/// Replies published after the first reply, per second of the drain's span (`span_ms`).
fn throughput(t: &ReplyTally, span_ms: i64) -> Option<f64> {
    (span_ms > 0).then(|| t.after_first as f64 * 1000.0 / span_ms as f64)
}

/// Sends warm-up commands to `topic` one at a time until each is answered on `replies`: the
/// service behind them has joined its group, connected, and is consuming. `alive` fails when
/// that service is gone. The warm-up replies are then discarded.
async fn warm_up(
    workload: &Workload,
    producer: &FutureProducer,
    replies: &Collector,
    topic: &str,
    headers: &OwnedHeaders,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for j in 0..20 {
        let c = workload.warmup(j);
        let want = [format!("{WARMUP_PREFIX}{j}")];
        producer
            .send(
                FutureRecord::to(topic)
                    .key(c.key.as_str())
                    .payload(c.value.as_str())
                    .headers(with_request_id(headers, &want[0])),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !replies
            .wait_for_all_or_missing(&want, Duration::from_secs(1))
            .await
            .is_empty()
        {
            alive()?;
            if Instant::now() > deadline {
                bail!("no reply to a warm-up command within 120 s");
            }
        }
    }
    replies.take();
    Ok(())
}

/// `headers` plus `request-id: id` (the processor reads the id from the value; the echo
/// copies headers, so the reply reader finds it either way).
fn with_request_id(headers: &OwnedHeaders, id: &str) -> OwnedHeaders {
    headers.clone().insert(Header {
        key: "request-id",
        value: Some(id),
    })
}

/// Produces commands `base..base + total` at `rate` per second; returns when each was handed
/// to the producer, and the rate achieved.
async fn produce_paced(
    workload: &Workload,
    producer: &FutureProducer,
    topic: &str,
    headers: &OwnedHeaders,
    rate: f64,
    base: u64,
    total: u64,
) -> (Vec<Instant>, anyhow::Result<f64>) {
    let mut sent_at = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut pipe = Pipeline::new(producer);
    let start = Instant::now();
    let mut i = 0;
    while i < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while i < due {
            let c = workload.command(base + i);
            let id = format!("{REQUEST_PREFIX}{}", base + i);
            sent_at.push(Instant::now());
            let record = FutureRecord::to(topic)
                .key(c.key.as_str())
                .payload(c.value.as_str())
                .headers(with_request_id(headers, &id));
            if let Err(e) = pipe.send(record).await {
                return (sent_at, Err(e));
            }
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let result = pipe
        .finish()
        .await
        .map(|()| total as f64 / seconds.max(1e-9));
    (sent_at, result)
}

/// The broker's own round trip: consumes `from` and produces each record (key, value,
/// headers) to `to`, with the processor's consumer and producer settings and no database.
/// Runs on a thread of its own, as the processor's fetch loop does.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo").finish_non_exhaustive()
    }
}

impl Echo {
    fn start(cfg: &Config, from: &str, to: &str, group: &str) -> anyhow::Result<Echo> {
        let mut c = cfg.clone();
        c.kafka_group_id = group.to_string();
        let consumer = consumer::create_consumer(
            &c,
            Arc::new(Health::default()),
            Arc::new(Budget::new(c.max_in_flight_bytes)),
        )?;
        consumer.subscribe(&[from])?;
        let producer = kafka::producer(&c)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, to) = (stop.clone(), to.to_string());
        let thread = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let mut record: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(&to).payload(m.payload().unwrap_or_default());
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    if let Some(h) = m.headers() {
                        record = record.headers(h.detach());
                    }
                    // The delivery is not awaited: the producer's own thread handles it.
                    while let Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) =
                        producer.send_result(record)
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })?;
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    /// Stops the loop and waits for its thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The curve's points, as shares of the drain rate.
const LOADS: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 0.90];

/// The series of stage `stage` in the processor's stage histogram.
fn stage_series(stage: &str) -> String {
    format!("{}{{stage=\"{stage}\"}}", event_updater::metrics::STAGE)
}

/// Where a stage comes in a batch's life, for the tables' order: the processor's own order
/// ([`event_updater::metrics::Stage::ALL`]); a stage it does not name there comes after, by name.
fn stage_rank(stage: &str) -> (usize, String) {
    let all = event_updater::metrics::Stage::ALL;
    let rank = all
        .iter()
        .position(|s| s.as_str() == stage)
        .unwrap_or(all.len());
    (rank, stage.to_string())
}

/// Every stage of the processor's stage histogram in a scrape, in [`stage_rank`] order.
fn stage_names(scrape: &Histograms) -> Vec<String> {
    let prefix = format!("{}{{stage=\"", event_updater::metrics::STAGE);
    let mut names: Vec<String> = scrape
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix("\"}"))
        .map(str::to_string)
        .collect();
    names.sort_by_key(|s| stage_rank(s));
    names.dedup();
    names
}

/// The processor's histograms, read from its `/metrics`: for each series (the metric's name
/// with its labels but `le`, e.g. `event_updater_stage_seconds{stage="apply"}`), its buckets as
/// (upper bound in seconds, cumulative count).
type Histograms = HashMap<String, Vec<(f64, f64)>>;

async fn scrape_histograms(addr: SocketAddr) -> anyhow::Result<Histograms> {
    let (status, text) = event_updater_harness::http::get(addr, "/metrics").await?;
    if status != 200 {
        bail!("GET /metrics from the processor at {addr}: status {status}");
    }
    let mut out: Histograms = HashMap::new();
    for line in text.lines() {
        let Some((series, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let mut le = None;
        let mut rest = Vec::new();
        for l in labels.split(',') {
            match l.strip_prefix("le=") {
                Some(v) => le = Some(v.trim_matches('"')),
                None => rest.push(l),
            }
        }
        let Some(le) = le else { continue };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        let key = if rest.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", rest.join(","))
        };
        out.entry(key)
            .or_default()
            .push((le, count.trim().parse()?));
    }
    for buckets in out.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

/// [`histogram_percentiles`] of one series between two scrapes.
fn series_percentiles(before: &Histograms, after: &Histograms, series: &str) -> Percentiles {
    let empty = Vec::new();
    histogram_percentiles(
        before.get(series).unwrap_or(&empty),
        after.get(series).unwrap_or(&empty),
    )
}

/// p50, p99 (interpolated within buckets, as Prometheus' `histogram_quantile`) and the upper
/// bound of the highest bucket reached, of what was recorded between two scrapes, in ms.
fn histogram_percentiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Percentiles {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let quantile = |q: f64| -> f64 {
        let Some(total) = diff.last().map(|(_, n)| *n).filter(|n| *n > 0.0) else {
            return f64::NAN;
        };
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for (le, n) in &diff {
            if *n >= rank {
                if le.is_infinite() {
                    return prev.0 * 1e3;
                }
                let share = if n - prev.1 > 0.0 {
                    (rank - prev.1) / (n - prev.1)
                } else {
                    1.0
                };
                return (prev.0 + (le - prev.0) * share) * 1e3;
            }
            prev = (*le, *n);
        }
        f64::NAN
    };
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    let max = diff
        .iter()
        .find(|(_, n)| *n >= total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| le * 1e3);
    Percentiles {
        p50: quantile(0.50),
        p99: quantile(0.99),
        p999: quantile(0.999),
        max,
    }
}

// ---------------------------------------------------------------------------------------------
// The processor under test, as a child process

/// `event-updater serve` in a child process, configured through its environment.
#[derive(Debug)]
struct ChildProcessor {
    child: Processor,
    /// Where its `/metrics` is served.
    http_addr: SocketAddr,
}

impl ChildProcessor {
    /// The naive baseline (`max_batch` 1) also runs a single lane: one command per
    /// transaction, one transaction at a time. With `feed` on, the processor publishes its
    /// change feed to `scope`'s own topics (never to the configured ones).
    fn spawn(cfg: &Config, scope: &Scope, max_batch: u32, feed: Feed) -> anyhow::Result<Self> {
        let lanes = if max_batch == 1 {
            1
        } else {
            cfg.apply_concurrency
        };
        // The serving binary, built beside this one.
        let exe = std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("event-updater");
        // A port free now; the child binds it a moment later.
        let http_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let auth_mode = cfg
            .auth_mode
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let (changes_topic, view_topic) = feed.topics(cfg, scope);
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("serve")
            .env("DATABASE_URL", &scope.db_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &cfg.kafka_bootstrap_servers)
            .env("COMMAND_TOPIC", &scope.commands)
            .env("REPLY_TOPIC", &scope.replies)
            .env("DLQ_TOPIC", &scope.dlq)
            .env("CHANGES_TOPIC", &changes_topic)
            .env("VIEW_TOPIC", &view_topic)
            .env("KAFKA_GROUP_ID", &scope.group)
            .env("HTTP_ADDR", http_addr.to_string())
            .env("MAX_BATCH", max_batch.to_string())
            .env("TOPIC_PARTITIONS", cfg.topic_partitions.to_string())
            .env(
                "TOPIC_REPLICATION_FACTOR",
                cfg.topic_replication_factor.to_string(),
            )
            .env("BATCH_LINGER_MS", cfg.batch_linger_ms.to_string())
            .env("MAX_BATCH_BYTES", cfg.max_batch_bytes.to_string())
            .env("MAX_IN_FLIGHT_BYTES", cfg.max_in_flight_bytes.to_string())
            .env("APPLY_CONCURRENCY", lanes.to_string())
            .env(
                "DATABASE_MAX_CONNECTIONS",
                cfg.database_max_connections.to_string(),
            )
            .env("MAX_MESSAGE_BYTES", cfg.max_message_bytes.to_string())
            .env("MAX_REPLY_BYTES", cfg.max_reply_bytes.to_string())
            .env(
                "SHUTDOWN_TIMEOUT_SECS",
                cfg.shutdown_timeout_secs.to_string(),
            )
            .env("AUTH_MODE", auth_mode)
            .env("RUST_LOG", "warn")
            .env_remove("LOG_FORMAT");
        if cfg.kafka_properties.is_empty() {
            command.env_remove("KAFKA_PROPERTIES");
        } else {
            let joined: Vec<String> = cfg
                .kafka_properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            command.env("KAFKA_PROPERTIES", joined.join(";"));
        }
        // Its warnings and errors go to the benchmark's stderr, among the progress lines.
        let child = Processor::start(command, Log::Inherit).context("starting the processor")?;
        Ok(ChildProcessor { child, http_addr })
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        Ok(self.child.ensure_running()?)
    }

    /// Reads the peak RSS and the CPU time used, then stops the processor with SIGTERM and
    /// waits for it.
    async fn stop(mut self) -> anyhow::Result<Stopped> {
        self.ensure_running()?;
        let peak_rss = self.child.peak_rss()?;
        let cpu_seconds = cpu_seconds(self.child.pid())?;
        let (status, _) = self.child.terminate(Duration::from_secs(60)).await?;
        if !status.success() {
            eprintln!("[bench] the processor exited with {status} after SIGTERM");
        }
        Ok(Stopped {
            peak_rss,
            cpu_seconds,
        })
    }
}

/// What a processor used in its life, read just before it was stopped.
#[derive(Debug, Clone, Copy)]
struct Stopped {
    peak_rss: u64,
    /// User and system CPU time, every thread.
    cpu_seconds: f64,
}

/// The machine's 1-minute load average (`/proc/loadavg`), where it can be read.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Output

const MIB: f64 = 1024.0 * 1024.0;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_count(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds, one decimal; "unanswered" for a command that got no reply in time.
fn fmt_ms(ms: f64) -> String {
    if ms.is_infinite() {
        "unanswered".into()
    } else {
        format!("{ms:.1} ms")
    }
}

fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// A cost's figures on one line, "not measured" where not.
fn show_cost(c: &Cost) -> String {
    let us = |x: Option<f64>| or_not_measured(x, |v| format!("{v:.1} µs"));
    format!(
        "event-updater CPU {}, PostgreSQL CPU {}, Kafka CPU {}, WAL {}",
        us(c.processor_us),
        us(c.postgres_us),
        us(c.kafka_us),
        or_not_measured(c.wal_bytes, |v| format!("{v:.0} B"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_updater::domain::command::Action;

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
    fn a_feed_is_complete_with_a_change_per_applied_command() {
        let mut replies = ReplyTally::default();
        replies.statuses.extend([(200, 7), (201, 3), (400, 5)]);
        assert_eq!(replies.applied(), 10);
        let topic = |records| {
            Some(TopicTally {
                records,
                last_ms: Some(records as i64),
            })
        };
        let feed = |changes, views| FeedTally {
            applied: replies.applied(),
            changes,
            views,
        };
        assert!(feed(topic(10), topic(4)).complete());
        assert!(feed(topic(11), topic(4)).complete(), "a repeat is allowed");
        assert!(!feed(topic(9), topic(4)).complete(), "a change missing");
        assert!(!feed(topic(10), topic(0)).complete(), "no view published");
        assert!(!feed(topic(0), None).complete(), "nothing published");
        assert!(feed(None, None).complete(), "both topics off");
        assert_eq!(feed(topic(10), topic(4)).last_ms(), Some(10));
        assert_eq!(feed(None, None).last_ms(), None);
    }

    #[test]
    fn the_load_average_is_read() {
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }

    #[test]
    fn histogram_percentiles_reach_p99_9_and_stages_come_in_running_order() {
        // 1000 observations: 990 up to 10 ms, 9 more up to 20 ms, the last up to 40 ms.
        let before = [(0.01, 0.0), (0.02, 0.0), (0.04, 0.0), (f64::INFINITY, 0.0)];
        let after = [
            (0.01, 990.0),
            (0.02, 999.0),
            (0.04, 1000.0),
            (f64::INFINITY, 1000.0),
        ];
        let p = histogram_percentiles(&before, &after);
        assert!((p.p99 - 10.0).abs() < 1e-9, "{p:?}");
        assert!((p.p999 - 20.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.max, 40.0);
        let series = |stage: &str| (stage_series(stage), after.to_vec());
        let scrape: Histograms = [
            "publish", "zeta", "queue", "write", "read", "alpha", "apply",
        ]
        .into_iter()
        .map(series)
        .chain([("event_updater_command_latency_seconds".to_string(), vec![])])
        .collect();
        assert_eq!(
            stage_names(&scrape),
            ["queue", "apply", "read", "write", "publish", "alpha", "zeta"]
        );
    }

    #[test]
    fn the_median_drain_is_the_middle_one_by_rate() {
        let drain = |rate: Option<f64>| Drain {
            commands: 1,
            max_batch: 1,
            produce_rate: 0.0,
            throughput: rate,
            span_ms: 0,
            replies: ReplyTally::default(),
            feed: None,
            peak_rss: 0,
            cpu_seconds: 0.0,
            cost: Cost::default(),
        };
        let rates = |d: Drain| d.throughput;
        let three = [drain(Some(3.0)), drain(None), drain(Some(1.0))];
        assert_eq!(rates(median_drain(three.iter())), Some(1.0));
        let four = [
            drain(Some(4.0)),
            drain(Some(2.0)),
            drain(Some(1.0)),
            drain(Some(3.0)),
        ];
        assert_eq!(rates(median_drain(four.iter())), Some(2.0));
        assert_eq!(rates(median_drain([drain(Some(5.0))].iter())), Some(5.0));
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

    #[test]
    fn the_data_is_deterministic_and_about_as_invalid_as_asked() {
        let w = Workload {
            events: 100,
            invalid_percent: 10,
        };
        assert_eq!(w.command(7).value, w.command(7).value);
        assert_eq!(w.command(7).key, w.event_of(7).to_string());
        let invalid = (0..10_000).filter(|i| !w.is_valid(*i)).count();
        assert!((900..1100).contains(&invalid), "{invalid}");
        let events: std::collections::HashSet<Uuid> = (0..10_000).map(|i| w.event_of(i)).collect();
        assert_eq!(events.len(), 100);
        assert_eq!(request_index(b"bench-42"), Some(42));
        assert_eq!(request_index(b"warmup-1"), None);
    }

    #[test]
    fn commands_decode_as_valid_or_invalid_as_generated() {
        let w = Workload {
            events: 10,
            invalid_percent: 50,
        };
        for i in 0..200 {
            let c = w.command(i);
            let m = Incoming {
                key: Some(c.key.into_bytes()),
                payload: Some(c.value.into_bytes()),
                ..Incoming::default()
            };
            let cmd = command::decode(&m, 1 << 20, AuthMode::Disabled);
            assert_eq!(cmd.request_id, format!("bench-{i}"));
            match cmd.action {
                Action::Apply { .. } => assert!(w.is_valid(i)),
                Action::Reject { status, .. } => assert!(!w.is_valid(i) && status == 400),
            }
        }
    }

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

    #[test]
    fn throughput_leaves_the_first_batch_out() {
        let t = ReplyTally {
            span_ms: 1000,
            after_first: 500,
            first_ms: Some(10_000),
            last_ms: Some(11_000),
            ..ReplyTally::default()
        };
        assert_eq!(throughput(&t, drain_span(&t, None)), Some(500.0));
        assert_eq!(throughput(&ReplyTally::default(), 0), None);
        // A feed record published after the last reply ends the drain; one before does not.
        assert_eq!(drain_span(&t, Some(12_000)), 2000);
        assert_eq!(drain_span(&t, Some(10_500)), 1000);
        assert_eq!(drain_span(&ReplyTally::default(), Some(12_000)), 0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&thousand, 0.99), 990.0);
        assert_eq!(percentile(&thousand, 0.999), 999.0);
        assert_eq!(percentile(&thousand[..100], 0.999), 100.0);
        assert!(percentile(&[1.0, f64::INFINITY], 0.99).is_infinite());
        assert_eq!(fmt_ms(f64::INFINITY), "unanswered");
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(
            reply_status(br#"{"request_id":"bench-1","event_uuid":null,"status":400,"body":{}}"#),
            400
        );
        assert_eq!(reply_status(b"{}"), 0);
    }
}
