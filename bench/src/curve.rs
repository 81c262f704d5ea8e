//! The latency-load curve: commands produced at shares of the drain rate (`--loads`), each timed
//! from being handed to the producer to its reply being read, through the processor and, at the
//! same rate, through the broker's echo (the floor); the processor's own histograms are read
//! around each point ([`crate::scrape`]).

use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use event_updater_harness::replies::Collector;

use crate::child::ChildProcessor;
use crate::child::Feed;
use crate::clients::{create_topics, latency_producer, reader, Pipeline};
use crate::cost::{show_cost, Cost, Mark};
use crate::echo::Echo;
use crate::percentiles::{percentile, Percentiles};
use crate::run::{Bench, Scope};
use crate::scrape::{scrape_histograms, series_percentiles, stage_names, stage_series};
use crate::units::fmt_count;
use crate::workload::{command_headers, with_request_id, Workload, REQUEST_PREFIX, WARMUP_PREFIX};

/// The curve's points, as shares of the drain rate.
const LOADS: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 0.90];

/// One point of the latency–load curve: the processor and, at the same rate, the floor.
#[derive(Debug, Clone)]
pub struct LoadPoint {
    /// Share of the measured drain rate.
    pub load: f64,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub sent: u64,
    pub answered: u64,
    /// Handed to the producer → reply read, through the processor.
    pub end_to_end: Percentiles,
    /// Inside the processor: command record timestamp → reply acknowledged, from the
    /// processor's own histogram (interpolated within buckets, as Prometheus does; `max` is the
    /// upper bound of the highest bucket reached).
    pub inside: Percentiles,
    /// The broker's own round trip at the same rate (consume → produce, no database, the
    /// processor's client settings), handed to the producer → echo read.
    pub floor: Percentiles,
    pub floor_answered: u64,
    /// Per batch, inside the processor: every stage of its `event_updater_stage_seconds`
    /// histogram, in the order the stages run ([`crate::scrape::stage_rank`]).
    pub stages: Vec<(String, Percentiles)>,
    /// The processor's window (its commands produced and answered): CPU and WAL per command.
    pub cost: Cost,
}

/// What one timed run measured.
#[derive(Debug, Clone)]
struct TimedRun {
    pub achieved_rate: f64,
    pub answered: u64,
    pub percentiles: Percentiles,
}

/// The latency–load curve's points, and the processor's peak RSS over all of them.
#[derive(Debug, Clone)]
pub struct Curve {
    pub points: Vec<LoadPoint>,
    pub peak_rss: u64,
}

impl Bench {
    /// The latency–load curve: commands at `--loads` (by default [`LOADS`]) of the drain rate,
    /// each timed from being handed to the producer to its reply being read, through the
    /// processor and, at the same rate, through the broker's own echo (the floor). One processor
    /// and one echo serve every point, each warmed up first; the points use distinct commands.
    pub async fn curve(&self, scope: Scope, drain_rate: f64) -> anyhow::Result<Curve> {
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
                "latency at {:.0}% (p50 / p99 / p99.9): end to end {}; \
                inside {}; floor {}; {} of {} answered",
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

    /// How long a point of the curve waits for replies: its own length, plus twice that (at
    /// least a minute) for a processor that fell behind to catch up.
    fn latency_wait(&self) -> Duration {
        let run = self.args.latency_seconds;
        Duration::from_secs(run + (2 * run).max(60))
    }
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
