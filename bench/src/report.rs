//! The run's report: the targets (each met, missed or "not measured" where a phase it needs was
//! skipped), the Markdown tables (figures, costs, latency curve, stages) and the JSON figures
//! (`null` where not measured). Nothing here measures; it only reads the [`Report`].

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::cost::{self, met, or_not_measured, show_cost, Cost};
use crate::curve::{Curve, LoadPoint};
use crate::drain::{Drain, DRAIN_FEED_OFF_LABEL, DRAIN_LABEL, NAIVE_LABEL};
use crate::echo::PassThrough;
use crate::full_log::Preloaded;
use crate::ingest::{Ingest, INGEST_CHUNK};
use crate::percentiles::Percentiles;
use crate::phases::Phase;
use crate::procstat::Probe;
use crate::scrape::stage_rank;
use crate::startup;
use crate::startup::Startup;
use crate::tally::TopicTally;
use crate::units::{fmt_count, fmt_mib, fmt_ms, MIB};
use crate::BenchArgs;

/// The most the processor may add to the floor's p50 and p99 from 10% to 50% load, in ms.
const OVER_FLOOR_P50_MS: f64 = 5.0;
const OVER_FLOOR_P99_MS: f64 = 10.0;
/// The highest load the over-the-floor targets hold for.
const OVER_FLOOR_UP_TO: f64 = 0.5;
/// The p99 allowed at 50% load, in ms.
const P99_AT_50PCT_MS: f64 = 25.0;
/// The drain's share of min(pass-through, ingest) at least.
const DRAIN_TO_MIN_B_C: f64 = 0.6;
/// The full log's drain's share of the empty log's at least.
const FULL_LOG_TO_EMPTY: f64 = 0.8;
/// The processor's peak RSS allowed.
const PEAK_RSS_MIB: f64 = 150.0;
/// The feed's cost the drain may bear: the drain with the feed on is at least this share of
/// the drain with it off, less one.
const FEED_COST_BOUND: f64 = 0.20;

/// Everything the run measured (`None`: its phase was not run), read by the tables and the
/// JSON.
#[derive(Debug, Clone)]
pub struct Report {
    pub args: BenchArgs,
    pub max_batch: u32,
    pub partitions: i32,
    pub auth: bool,
    pub settings: BTreeMap<String, String>,
    /// The machine's 1-minute load average when the run started and when it ended: the
    /// benchmark alone keeps it at about the core count; much more says something else ran.
    pub load_average: (Option<f64>, Option<f64>),
    /// The phases run.
    pub phases: Vec<Phase>,
    /// The processes whose CPU was read (the processor's pid is each phase's).
    pub probe: Probe,
    /// The drain on an empty log, the feed on (the processor's default).
    pub drain: Option<Drain>,
    /// The same drain with the feed off.
    pub drain_feed_off: Option<Drain>,
    /// Every round's drains (feed on, feed off); `drain` and `drain_feed_off` are the medians.
    pub feed_rounds: Vec<(Drain, Drain)>,
    /// Whether the drains with the feed on had a changes topic and a view topic
    /// (`CHANGES_TOPIC`, `VIEW_TOPIC` not empty).
    pub config_feed: (bool, bool),
    pub pass_through: Option<PassThrough>,
    pub naive: Option<Drain>,
    pub ingest: Option<Ingest>,
    pub preloaded: Option<Preloaded>,
    /// The rate the curve's loads are shares of: the drain's, else `--drain-rate`.
    pub curve_base_rate: Option<f64>,
    pub curve: Option<Curve>,
    pub startup: Option<Startup>,
}

/// A rate in cmd/s, or "not measured".
fn show_rate(x: Option<f64>) -> String {
    or_not_measured(x, |x| format!("{} cmd/s", fmt_count(x)))
}

/// A share in percent, or "not measured".
fn show_share(x: Option<f64>) -> String {
    or_not_measured(x.filter(|x| x.is_finite()), |x| {
        format!("{:.0}%", 100.0 * x)
    })
}

/// All met (every one measured and met), one missed, or else not measured.
fn all_met(ts: &[Option<bool>]) -> Option<bool> {
    if ts.contains(&Some(false)) {
        Some(false)
    } else if ts.iter().all(|t| *t == Some(true)) {
        Some(true)
    } else {
        None
    }
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    cost::ratio(a, b)
}

impl LoadPoint {
    /// End to end over the floor, p50 and p99, in ms.
    fn over_floor(&self) -> (f64, f64) {
        (
            self.end_to_end.p50 - self.floor.p50,
            self.end_to_end.p99 - self.floor.p99,
        )
    }
}

impl Percentiles {
    fn to_json(self) -> Value {
        json!({"p50_ms": self.p50, "p99_ms": self.p99, "p99_9_ms": self.p999, "max_ms": self.max})
    }
}

impl Report {
    pub(super) fn rate(&self) -> Option<f64> {
        self.drain.as_ref()?.throughput
    }
    fn naive_rate(&self) -> Option<f64> {
        self.naive.as_ref()?.throughput
    }
    fn pass_through_rate(&self) -> Option<f64> {
        self.pass_through.map(|p| p.rate)
    }
    fn ingest_rate(&self) -> Option<f64> {
        self.ingest.as_ref().map(|i| i.rate)
    }
    /// min(pass-through, ingest).
    fn floor(&self) -> Option<f64> {
        Some(self.pass_through_rate()?.min(self.ingest_rate()?))
    }
    /// The processor's peak RSS over the drains and the curve.
    fn peak_rss(&self) -> Option<u64> {
        let drains = self.drains().into_iter().filter(|(n, _)| n != NAIVE_LABEL);
        drains
            .map(|(_, d)| d.peak_rss)
            .chain(self.curve.as_ref().map(|c| c.peak_rss))
            .max()
    }
    /// The share of the drain's rate (empty log) the feed costs: 1 - on / off.
    fn feed_cost(&self) -> Option<f64> {
        let on = self.drain.as_ref()?.throughput?;
        Some(1.0 - on / self.drain_feed_off.as_ref()?.throughput?)
    }
    /// Which feed topics the drains with the feed on published to.
    fn feed_topics(&self) -> &'static str {
        match (self.config_feed.0, self.config_feed.1) {
            (true, true) => "changes and view topics",
            (true, false) => "changes topic only (VIEW_TOPIC empty)",
            (false, true) => "view topic only (CHANGES_TOPIC empty)",
            (false, false) => "off (CHANGES_TOPIC and VIEW_TOPIC empty)",
        }
    }
    fn preload_ratio(&self) -> Option<f64> {
        let p = self.preloaded.as_ref()?;
        Some(p.drain.throughput? / self.rate()?)
    }
    /// Every command of every drain answered exactly once (`None`: no drain ran).
    fn replies_ok(&self) -> Option<bool> {
        let d = self.drains();
        (!d.is_empty()).then(|| {
            d.iter().all(|(_, d)| {
                d.replies.missing == 0 && d.replies.duplicates == 0 && d.replies.foreign == 0
            })
        })
    }
    /// Every drain with the feed on published a change per applied command.
    fn feeds_ok(&self) -> Option<bool> {
        let d = self.drains();
        (!d.is_empty()).then(|| d.iter().all(|(_, d)| d.feed.is_none_or(|f| f.complete())))
    }

    /// The curve's point at `load` (a share of the drain rate).
    fn point(&self, load: f64) -> Option<&LoadPoint> {
        self.curve
            .as_ref()?
            .points
            .iter()
            .find(|p| (p.load - load).abs() < 1e-9)
    }

    /// The curve's points from 10% to 50% load (`None`: no curve).
    fn low_points(&self) -> Option<Vec<&LoadPoint>> {
        let points: Vec<&LoadPoint> = self
            .curve
            .as_ref()?
            .points
            .iter()
            .filter(|p| p.load <= OVER_FLOOR_UP_TO + 1e-9)
            .collect();
        (!points.is_empty()).then_some(points)
    }

    /// The 50% point's cost.
    fn cost_at_50(&self) -> Option<&Cost> {
        self.point(0.5).map(|p| &p.cost)
    }

    /// Every target: met, missed, or `None` where an input was not measured.
    pub(super) fn targets(&self) -> BTreeMap<&'static str, Option<bool>> {
        let mut t = BTreeMap::new();
        t.insert(
            "ten_times_naive",
            (|| Some(self.rate()? >= 10.0 * self.naive_rate()?))(),
        );
        t.insert(
            "drain_at_least_60pct_of_min_b_c",
            (|| Some(self.rate()? >= DRAIN_TO_MIN_B_C * self.floor()?))(),
        );
        t.insert(
            "p50_within_floor_plus_5ms_10_to_50pct",
            self.low_points().map(|ps| {
                ps.iter()
                    .all(|p| p.end_to_end.p50 <= p.floor.p50 + OVER_FLOOR_P50_MS)
            }),
        );
        t.insert(
            "p99_within_floor_plus_10ms_10_to_50pct",
            self.low_points().map(|ps| {
                ps.iter()
                    .all(|p| p.end_to_end.p99 <= p.floor.p99 + OVER_FLOOR_P99_MS)
            }),
        );
        t.insert(
            "p99_below_25ms_at_50pct",
            self.point(0.5).map(|p| p.end_to_end.p99 < P99_AT_50PCT_MS),
        );
        t.insert(
            "peak_rss_below_150mib",
            self.peak_rss().map(|r| (r as f64) < PEAK_RSS_MIB * MIB),
        );
        t.insert(
            "full_log_at_least_80pct_of_empty_log",
            self.preload_ratio().map(|r| r >= FULL_LOG_TO_EMPTY),
        );
        t.insert("every_drained_command_answered_once", self.replies_ok());
        t.insert(
            "feed_costs_at_most_20pct",
            self.feed_cost().map(|c| c <= FEED_COST_BOUND),
        );
        t.insert("feed_has_a_change_per_applied_command", self.feeds_ok());
        for (name, ok) in cost::targets(
            self.drain.as_ref().map(|d| &d.cost),
            self.ingest.as_ref().map(|i| &i.cost),
        ) {
            t.insert(name, ok);
        }
        t.insert(
            "startup_below_1s",
            self.startup.as_ref().and_then(|s| s.met()),
        );
        t
    }

    /// Every drain of the run, named.
    fn drains(&self) -> Vec<(String, &Drain)> {
        let rounds = self.feed_rounds.len();
        let mut d = Vec::new();
        for (i, (on, off)) in self.feed_rounds.iter().enumerate() {
            let name = |base: &str| match rounds {
                1 => base.to_string(),
                _ => format!("{base} (round {} of {rounds})", i + 1),
            };
            d.push((name(DRAIN_LABEL), on));
            d.push((name(DRAIN_FEED_OFF_LABEL), off));
        }
        if let Some(n) = &self.naive {
            d.push((NAIVE_LABEL.to_string(), n));
        }
        if let Some(p) = &self.preloaded {
            d.push(("drain, full log".to_string(), &p.drain));
        }
        d
    }

    /// Every stage any point of the curve measured, in the order they run.
    fn stage_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .curve
            .iter()
            .flat_map(|c| c.points.iter())
            .flat_map(|p| p.stages.iter().map(|(n, _)| n.clone()))
            .collect();
        names.sort_by_key(|s| stage_rank(s));
        names.dedup();
        names
    }

    /// The latency–load curve, its per-stage times and its costs, as Markdown tables.
    fn curve_table(&self) -> String {
        let Some(curve) = &self.curve else {
            return "The latency curve: not measured.".to_string();
        };
        let mut rows = vec![
            "| Load | Rate (achieved) | End to end p50 / p99 / p99.9 | Floor: broker echo p50 / p99 / p99.9 | p50 over the floor | p99 over the floor | Inside the processor p50 / p99 | Answered (floor) |".to_string(),
            "|---|---|---|---|---|---|---|---|".to_string(),
        ];
        for p in &curve.points {
            let (over50, over99) = p.over_floor();
            rows.push(format!(
                "| {:.0}% | {} cmd/s ({}) | {} | {} | {} | {} | {} | {} of {} ({}) |",
                p.load * 100.0,
                fmt_count(p.target_rate),
                fmt_count(p.achieved_rate),
                p.end_to_end.show(),
                p.floor.show(),
                fmt_ms(over50),
                fmt_ms(over99),
                p.inside.show_p50_p99(),
                p.answered,
                p.sent,
                p.floor_answered,
            ));
        }
        let stages = self.stage_names();
        rows.push(String::new());
        rows.push(
            "Per batch, inside the processor (each stage of its `event_updater_stage_seconds` histogram), p50 / p99:".into(),
        );
        rows.push(String::new());
        let header: Vec<String> = stages.iter().map(|s| s.to_string()).collect();
        rows.push(format!("| Load | {} |", header.join(" | ")));
        rows.push(format!("|---|{}", "---|".repeat(stages.len())));
        for p in &curve.points {
            let cells: Vec<String> = stages
                .iter()
                .map(|s| {
                    p.stages
                        .iter()
                        .find(|(n, _)| n == s)
                        .map_or("not measured".into(), |(_, q)| q.show_p50_p99())
                })
                .collect();
            rows.push(format!(
                "| {:.0}% | {} |",
                p.load * 100.0,
                cells.join(" | ")
            ));
        }
        rows.push(String::new());
        rows.push("Cost per command at each point (over the processor's run of the point):".into());
        rows.push(String::new());
        rows.push(
            "| Load | event-updater CPU | PostgreSQL CPU | Kafka CPU | PostgreSQL WAL |".into(),
        );
        rows.push("|---|---|---|---|---|".into());
        let us = |x: Option<f64>| or_not_measured(x, |v| format!("{v:.1} µs"));
        for p in &curve.points {
            let c = &p.cost;
            rows.push(format!(
                "| {:.0}% | {} | {} | {} | {} |",
                p.load * 100.0,
                us(c.processor_us),
                us(c.postgres_us),
                us(c.kafka_us),
                or_not_measured(c.wal_bytes, |v| format!("{v:.0} B")),
            ));
        }
        rows.join("\n")
    }

    /// The whole report, Markdown.
    pub(super) fn table(&self) -> String {
        let targets = self.targets();
        let target = |name: &str| targets.get(name).copied().flatten();
        let (a, b, c) = (
            self.naive_rate(),
            self.pass_through_rate(),
            self.ingest_rate(),
        );
        let ratios = |x: Option<f64>| {
            format!(
                "{} | {} | {}",
                or_not_measured(div(x, a), |r| format!("{r:.1}x")),
                show_share(div(x, b)),
                show_share(div(x, c))
            )
        };
        let mut rows = vec![
            "| Figure | Value | vs (a) naive | vs (b) broker | vs (c) PostgreSQL | Target | Met |".to_string(),
            "|---|---|---|---|---|---|---|".to_string(),
            format!(
                "| Throughput, backlog drain, empty log (feed on) | {} | {} | >= 10x (a); >= 60% of min(b, c) (is {}) | {} |",
                show_rate(self.rate()),
                ratios(self.rate()),
                show_share(div(self.rate(), self.floor())),
                met(all_met(&[target("ten_times_naive"), target("drain_at_least_60pct_of_min_b_c")]))
            ),
        ];
        let off = self.drain_feed_off.as_ref().and_then(|d| d.throughput);
        rows.push(format!(
            "| Throughput, backlog drain, empty log, feed off (no changes or view topic) | {} | {} | | |",
            show_rate(off),
            ratios(off),
        ));
        rows.push(format!(
            "| The feed's cost: the drain's rate it takes (1 - on / off) | {} | | | | at most {:.0}% | {} |",
            or_not_measured(self.feed_cost(), |c| format!("{:.1}%", 100.0 * c)),
            100.0 * FEED_COST_BOUND,
            met(target("feed_costs_at_most_20pct"))
        ));
        if let (Some(on), Some(off)) = (&self.drain, &self.drain_feed_off) {
            let (cpu_on, cpu_off) = (on.cpu_us_per_command(), off.cpu_us_per_command());
            rows.push(format!(
                "| The feed's cost in the processor's CPU time per command over its life (on against off) | {:+.0}% ({:.0} µs against {:.0} µs) | | | | | |",
                100.0 * (cpu_on / cpu_off - 1.0),
                cpu_on,
                cpu_off
            ));
        }
        let full = self.preloaded.as_ref().and_then(|p| p.drain.throughput);
        rows.push(format!(
            "| Throughput, backlog drain, {} changes already in the log | {} | {} | at least 80% of the empty log's (is {}) | {} |",
            self.preloaded
                .as_ref()
                .map_or(fmt_count(self.args.preload_changes as f64), |p| fmt_count(p.changes as f64)),
            show_rate(full),
            ratios(full),
            show_share(self.preload_ratio()),
            met(target("full_log_at_least_80pct_of_empty_log"))
        ));
        let worst_over = |f: fn(&LoadPoint) -> f64| {
            self.low_points()
                .and_then(|ps| ps.iter().map(|p| f(p)).max_by(f64::total_cmp))
        };
        rows.push(format!(
            "| Latency: p50 end to end over the floor's p50, 10% to 50% load (the most) | {} | | | | at most {OVER_FLOOR_P50_MS:.0} ms | {} |",
            or_not_measured(worst_over(|p| p.over_floor().0), fmt_ms),
            met(target("p50_within_floor_plus_5ms_10_to_50pct"))
        ));
        rows.push(format!(
            "| Latency: p99 end to end over the floor's p99, 10% to 50% load (the most) | {} | | | | at most {OVER_FLOOR_P99_MS:.0} ms | {} |",
            or_not_measured(worst_over(|p| p.over_floor().1), fmt_ms),
            met(target("p99_within_floor_plus_10ms_10_to_50pct"))
        ));
        rows.push(format!(
            "| Latency p50 / p99 / p99.9 end to end at 50% load{} | {} | | | | p99 < {P99_AT_50PCT_MS:.0} ms | {} |",
            self.point(0.5)
                .map_or(String::new(), |p| format!(" ({} cmd/s)", fmt_count(p.target_rate))),
            or_not_measured(self.point(0.5), |p| p.end_to_end.show()),
            met(target("p99_below_25ms_at_50pct"))
        ));
        rows.push(format!(
            "| Start-up: process start to first reply, warm database, min / median / max of {} | {} | | | | < {:.0} s | {} |",
            startup::RUNS,
            or_not_measured(self.startup.as_ref().filter(|s| s.max().is_some()), |s| {
                format!(
                    "{} / {} / {}",
                    fmt_ms(s.min().unwrap_or(f64::NAN)),
                    fmt_ms(s.median().unwrap_or(f64::NAN)),
                    fmt_ms(s.max().unwrap_or(f64::NAN))
                )
            }),
            startup::TARGET_MS / 1000.0,
            met(target("startup_below_1s"))
        ));
        rows.push(format!(
            "| Peak RSS of the processor (drains and curve) | {} | | | | < {PEAK_RSS_MIB:.0} MiB | {} |",
            or_not_measured(self.peak_rss(), fmt_mib),
            met(target("peak_rss_below_150mib"))
        ));
        rows.push(format!(
            "| (a) Naive baseline: MAX_BATCH=1, first {} commands | {} | 1.0x | | | | |",
            fmt_count(self.args.naive_commands as f64),
            show_rate(a)
        ));
        rows.push(format!(
            "| (b) Broker pass-through: consume N, produce N, no database | {} | | 100% | | | |",
            show_rate(b)
        ));
        rows.push(format!(
            "| (c) PostgreSQL limit: the same rows by unnest, {} commands per transaction, no Kafka | {} | | | 100% | | |",
            fmt_count(INGEST_CHUNK as f64),
            show_rate(c)
        ));

        let s = &self.settings;
        let setting = |k: &str| s.get(k).map_or("?", String::as_str);
        let names: Vec<String> = self.phases.iter().map(|p| p.name()).collect();
        let mut out = format!(
            "\nevent-updater bench: {} commands over {} events, {}% invalid; MAX_BATCH {}; {} partitions; auth {}; feed {}; phases {}\n\n",
            fmt_count(self.args.commands as f64),
            fmt_count(self.args.events as f64),
            self.args.invalid_percent,
            self.max_batch,
            self.partitions,
            if self.auth { "required (bearer token on every command)" } else { "disabled" },
            self.feed_topics(),
            names.join(", ")
        );
        out.push_str(&rows.join("\n"));
        out.push_str("\n\n");
        out.push_str(&cost::table(
            self.drain.as_ref().map(|d| &d.cost),
            self.cost_at_50(),
            self.ingest.as_ref().map(|i| &i.cost),
        ));
        out.push_str(&format!(
            "\n\nCost per command: each process's CPU time (utime + stime from /proc, USER_HZ 100) and the WAL bytes (pg_current_wal_lsn) over the window, divided by the window's commands. At drain: from the processor's spawn (the backlog waiting) to the last command answered; at 50% load: the point's processor run; the ingest: its transactions (no processor, no Kafka: \"—\"). PostgreSQL is every process of its server (the postmaster, {}, its live children and those reaped meanwhile); Kafka is the broker's JVM ({}), which also serves the benchmark's own clients (its command producer and reply readers; during the curve also the idle echo and its reader). CPU is counted in ticks of 10 ms: a figure moves by 1e4 / commands µs per tick. The server, the cluster's WAL and the broker are shared: nothing else may use them during the run.\n",
            self.probe.postmaster.map_or("not found: not measured".into(), |p| format!("pid {p}")),
            self.probe.kafka.map_or("not found on this machine: not measured".into(), |p| format!("pid {p}")),
        ));
        if let Some(p) = &self.pass_through {
            out.push_str(&format!(
                "Kafka's CPU in the pass-through (b): {} per record; the benchmark's own process, the client there: {} per record\n",
                or_not_measured(p.cost.kafka_us, |us| format!("{us:.1} µs")),
                or_not_measured(p.cost.bench_us, |us| format!("{us:.1} µs")),
            ));
        }
        out.push_str(&format!(
            "\nPostgreSQL {}: synchronous_commit={}, fsync={}, full_page_writes={}, wal_level={}, shared_buffers={}, max_wal_size={}, checkpoint_timeout={}, wal_compression={}, autovacuum={}, plan_cache_mode={}\n",
            setting("server_version"),
            setting("synchronous_commit"),
            setting("fsync"),
            setting("full_page_writes"),
            setting("wal_level"),
            setting("shared_buffers"),
            setting("max_wal_size"),
            setting("checkpoint_timeout"),
            setting("wal_compression"),
            setting("autovacuum"),
            setting("plan_cache_mode"),
        ));
        if self.feed_rounds.len() > 1 {
            let rounds: Vec<String> = self
                .feed_rounds
                .iter()
                .map(|(on, off)| {
                    let (on, off) = (
                        on.throughput.unwrap_or(f64::NAN),
                        off.throughput.unwrap_or(f64::NAN),
                    );
                    format!(
                        "{} / {} ({:.1}%)",
                        fmt_count(on),
                        fmt_count(off),
                        100.0 * (1.0 - on / off)
                    )
                })
                .collect();
            out.push_str(&format!(
                "The feed's rounds, drain with the feed on / off in cmd/s (its cost); the table has the medians: {}\n",
                rounds.join("; ")
            ));
        }
        let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.2}"));
        out.push_str(&format!(
            "The machine's 1-minute load average: {} at the start, {} at the end ({} cores)\n",
            load(self.load_average.0),
            load(self.load_average.1),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        for (name, d) in self.drains() {
            let r = &d.replies;
            let statuses: Vec<String> = r
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let feed = d.feed.map_or("feed off".to_string(), |f| f.show());
            out.push_str(&format!(
                "{name}: {} of {} commands answered, {} duplicates, {} missing, {} foreign; statuses {{{}}}; {feed}; backlog produced at {}; the processor's CPU {:.1} s over its life ({:.0} µs per command), per command over the drain: {}\n",
                r.answered,
                d.commands,
                r.duplicates,
                r.missing,
                r.foreign,
                statuses.join(", "),
                show_rate(Some(d.produce_rate)),
                d.cpu_seconds,
                d.cpu_us_per_command(),
                show_cost(&d.cost)
            ));
        }
        out.push_str(&format!(
            "\nLatency against load (each point {} s, the processor and then the broker's echo at the same rate; loads are shares of {}):\n\n{}\n\n",
            self.args.latency_seconds,
            show_rate(self.curve_base_rate),
            self.curve_table()
        ));
        out.push_str(&format!(
            "every command of the drains answered exactly once: {}\nevery drain with the feed on published a change per applied command: {}",
            met(target("every_drained_command_answered_once")),
            met(target("feed_has_a_change_per_applied_command"))
        ));
        out
    }

    /// The JSON figures: every figure, `null` where not measured.
    pub(super) fn to_json(&self) -> Value {
        let drain = |d: &Drain| {
            let r = &d.replies;
            json!({
                "commands": d.commands,
                "max_batch": d.max_batch,
                "throughput_per_s": d.throughput,
                "backlog_produce_per_s": d.produce_rate,
                "reply_records": r.records,
                "answered": r.answered,
                "duplicates": r.duplicates,
                "missing": r.missing,
                "foreign": r.foreign,
                "statuses": r.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "reply_span_ms": r.span_ms,
                "drain_span_ms": d.span_ms,
                "feed": d.feed.map(|f| {
                    let topic = |t: Option<TopicTally>| t.map(|t| json!({"records": t.records, "last_record_ms": t.last_ms}));
                    json!({
                        "applied": f.applied,
                        "changes": topic(f.changes),
                        "views": topic(f.views),
                        "complete": f.complete(),
                    })
                }),
                "peak_rss_bytes": d.peak_rss,
                "cpu_seconds": d.cpu_seconds,
                "cpu_us_per_command": d.cpu_us_per_command(),
                "cost": d.cost.to_json(),
            })
        };
        let curve = self.curve.as_ref().map(|c| {
            let points: Vec<Value> = c
                .points
                .iter()
                .map(|p| {
                    let (over50, over99) = p.over_floor();
                    json!({
                        "load": p.load,
                        "target_rate_per_s": p.target_rate,
                        "achieved_rate_per_s": p.achieved_rate,
                        "sent": p.sent,
                        "answered": p.answered,
                        "end_to_end": p.end_to_end.to_json(),
                        "inside": p.inside.to_json(),
                        "floor": p.floor.to_json(),
                        "floor_answered": p.floor_answered,
                        "over_floor_p50_ms": over50,
                        "over_floor_p99_ms": over99,
                        "stages": p.stages.iter().map(|(n, s)| (n.clone(), s.to_json())).collect::<serde_json::Map<_, _>>(),
                        "cost": p.cost.to_json(),
                    })
                })
                .collect();
            json!({
                "seconds_per_point": self.args.latency_seconds,
                "base_rate_per_s": self.curve_base_rate,
                "stages": self.stage_names(),
                "points": points,
                "peak_rss_bytes": c.peak_rss,
            })
        });
        let rate = self.rate();
        let cpu_per_command = |d: &Option<Drain>| d.as_ref().map(|d| d.cpu_us_per_command());
        json!({
            "phases": self.phases.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "commands": self.args.commands,
            "events": self.args.events,
            "invalid_percent": self.args.invalid_percent,
            "max_batch": self.max_batch,
            "partitions": self.partitions,
            "auth_required": self.auth,
            "postgres": self.settings,
            "processes": {"postgres_postmaster_pid": self.probe.postmaster, "kafka_broker_pid": self.probe.kafka},
            "load_average_1m": {"start": self.load_average.0, "end": self.load_average.1},
            "throughput_per_s": rate,
            "throughput_feed_off_per_s": self.drain_feed_off.as_ref().and_then(|d| d.throughput),
            "feed_cost_percent": self.feed_cost().map(|c| 100.0 * c),
            "feed": {"changes_topic": self.config_feed.0, "view_topic": self.config_feed.1},
            "throughput_full_log_per_s": self.preloaded.as_ref().and_then(|p| p.drain.throughput),
            "peak_rss_bytes": self.peak_rss(),
            "naive_per_s": self.naive_rate(),
            "pass_through_per_s": self.pass_through_rate(),
            "pg_ingest_per_s": self.ingest_rate(),
            "ratios": {
                "to_naive": div(rate, self.naive_rate()),
                "to_pass_through": div(rate, self.pass_through_rate()),
                "to_pg_ingest": div(rate, self.ingest_rate()),
                "to_min_b_c": div(rate, self.floor()),
                "full_log_to_empty_log": self.preload_ratio(),
                "feed_on_to_feed_off": self.feed_cost().map(|c| 1.0 - c),
                "feed_on_to_feed_off_cpu_per_command": div(cpu_per_command(&self.drain), cpu_per_command(&self.drain_feed_off)),
            },
            "targets_met": self.targets(),
            "cost": {
                "drain": self.drain.as_ref().map(|d| d.cost.to_json()),
                "load_50pct": self.cost_at_50().map(|c| c.to_json()),
                "pg_ingest": self.ingest.as_ref().map(|i| i.cost.to_json()),
                "pass_through": self.pass_through.map(|p| p.cost.to_json()),
                "postgres_cpu_drain_to_ingest": div(self.drain.as_ref().and_then(|d| d.cost.postgres_us), self.ingest.as_ref().and_then(|i| i.cost.postgres_us)),
                "postgres_wal_drain_to_ingest": div(self.drain.as_ref().and_then(|d| d.cost.wal_bytes), self.ingest.as_ref().and_then(|i| i.cost.wal_bytes)),
            },
            "startup": self.startup.as_ref().map(|s| json!({
                "runs_ms": s.sorted_ms,
                "min_ms": s.min(),
                "median_ms": s.median(),
                "max_ms": s.max(),
            })),
            "drain": self.drain.as_ref().map(drain),
            "drain_feed_off": self.drain_feed_off.as_ref().map(drain),
            "feed_rounds": self.feed_rounds.iter().map(|(on, off)| json!({
                "on_per_s": on.throughput,
                "off_per_s": off.throughput,
                "on_cpu_us_per_command": on.cpu_us_per_command(),
                "off_cpu_us_per_command": off.cpu_us_per_command(),
            })).collect::<Vec<_>>(),
            "naive": self.naive.as_ref().map(drain),
            "full_log": self.preloaded.as_ref().map(|p| json!({
                "preload_changes": p.changes,
                "preload_seconds": p.fill_seconds,
                "drain": drain(&p.drain),
            })),
            "latency_curve": curve,
            "pg_ingest": self.ingest.as_ref().map(|i| json!({
                "commands": i.commands,
                "per_s": i.rate,
                "transactions": i.transactions,
                "log_rows": i.log_rows,
                "view_upserts": i.view_upserts,
                "reply_rows": i.reply_rows,
                "cost": i.cost.to_json(),
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_combine_missed_over_unmeasured_over_met() {
        assert_eq!(all_met(&[Some(true), Some(true)]), Some(true));
        assert_eq!(all_met(&[Some(true), None]), None);
        assert_eq!(all_met(&[None, Some(false)]), Some(false));
        assert_eq!(show_share(None), "not measured");
        assert_eq!(show_share(Some(0.8)), "80%");
        assert_eq!(show_rate(None), "not measured");
    }
}
