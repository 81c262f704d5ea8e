//! The backlog drains: N commands produced first, then drained by a processor started as a child
//! process, with the feed on or off (`--feed-rounds` pairs of them), and the naive baseline (a),
//! the same drain with MAX_BATCH=1 and one lane. Throughput is read off the replies' (and the
//! feed's) record timestamps.

use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::producer::FutureRecord;

use event_updater_harness::replies::Collector;

use crate::child::{ChildProcessor, Feed, Stopped};
use crate::clients::{backlog_producer, create_topics, reader, Pipeline};
use crate::cost::{self, show_cost, Cost, Mark};
use crate::echo::PassThrough;
use crate::run::{Bench, Scope};
use crate::tally::{topic_tally, FeedTally, ReplyTally};
use crate::units::{fmt_count, fmt_mib};
use crate::workload::command_headers;

/// The drains' names in the progress lines and the tables.
pub const DRAIN_LABEL: &str = "drain, empty log";

pub const DRAIN_FEED_OFF_LABEL: &str = "drain, empty log, feed off";

pub const NAIVE_LABEL: &str = "naive baseline (a)";

/// One backlog drain.
#[derive(Debug, Clone)]
pub struct Drain {
    pub commands: u64,
    pub max_batch: u32,
    pub produce_rate: f64,
    pub throughput: Option<f64>,
    /// From the first reply to the last record the drain published (reply or feed record).
    pub span_ms: i64,
    pub replies: ReplyTally,
    /// What the processor left on the feed's topics (`None`: the feed was off).
    pub feed: Option<FeedTally>,
    pub peak_rss: u64,
    /// The processor's CPU time (user and system), from its start to its stop.
    pub cpu_seconds: f64,
    /// Per command, from the processor's spawn (the backlog waiting) to the last command
    /// answered: each process's CPU and the WAL.
    pub cost: Cost,
}

impl Drain {
    /// The processor's CPU time per command, in microseconds: a figure the machine's other
    /// load moves less than the rate.
    pub fn cpu_us_per_command(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.commands.max(1) as f64
    }
}

impl Bench {
    /// The first drain, then (`with_pass_through`) the pass-through of its backlog.
    pub async fn drain_and_pass_through(
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

    /// `--feed-rounds` pairs of drains on an empty log, (feed on, feed off), the first on
    /// being `first`; each round after the first drains in the other order than the one
    /// before, so that neither side always runs first.
    pub async fn feed_rounds(&self, first: Drain) -> anyhow::Result<Vec<(Drain, Drain)>> {
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
    pub async fn naive(&self, scope: Scope) -> anyhow::Result<Drain> {
        let k = self.args.naive_commands;
        self.drain(&scope, k, 1, Feed::On, NAIVE_LABEL, None).await
    }

    /// Produces `n` commands, then lets a processor drain them, publishing its feed or not;
    /// `prepared`: the database was made (and filled) already, with this authorization header.
    /// With the feed on, the drain ends at the last record published, reply or feed record, and
    /// the feed's topics are counted once the processor has stopped.
    pub async fn drain(
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
            "{label}: backlog of {n} produced at {} cmd/s; \
            starting the processor (MAX_BATCH {max_batch})",
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
            "{label}: {} cmd/s, {} answered, {} duplicates, {} missing, \
            peak RSS {}, CPU {:.1} s; per command: {}",
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

    pub async fn produce_backlog(
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
}

/// The drain of median throughput (of an even number, the lower of the middle two; a drain too
/// short to measure counts as the slowest). `drains` is not empty: `--feed-rounds` is at least 1.
pub fn median_drain<'d>(drains: impl Iterator<Item = &'d Drain>) -> Drain {
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
pub fn throughput(t: &ReplyTally, span_ms: i64) -> Option<f64> {
    (span_ms > 0).then(|| t.after_first as f64 * 1000.0 / span_ms as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percentiles::percentile;
    use crate::tally::reply_status;
    use crate::units::fmt_ms;

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
