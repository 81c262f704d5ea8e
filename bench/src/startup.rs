//! Start-up: from the processor's process start (spawn) to its first reply, on a warm
//! database. The phase's database is migrated and served once by a processor that is not timed
//! (the "earlier run"), so that each timed start finds the schema, its group's offsets and the
//! feed's topics in place; then, [`RUNS`] times, one command is produced, a processor spawned,
//! and the time taken from the spawn to the moment the benchmark's reply reader (assigned to
//! the reply topic and positioned before the spawn: it read the earlier run's reply) reads the
//! command's reply. Each processor is stopped (SIGTERM, leaving its group) before the next.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use crate::child::ChildProcessor;
use crate::child::Feed;
use crate::clients::{create_topics, latency_producer, reader};
use crate::run::{Bench, Scope};
use crate::workload::{command_headers, envelope};
use event_updater_harness::replies::Collector;

/// Timed starts.
pub const RUNS: usize = 5;
/// The start-up the issue allows, in ms.
pub const TARGET_MS: f64 = 1000.0;
/// Request ids of the start-up's commands.
const PREFIX: &str = "startup-";
/// How long a start may take before the phase gives up.
const BOUND: Duration = Duration::from_secs(120);

/// The timed starts, in ms from spawn to reply read, in increasing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Startup {
    pub sorted_ms: Vec<f64>,
}

impl Startup {
    pub fn min(&self) -> Option<f64> {
        self.sorted_ms.first().copied()
    }
    /// The middle start (of an even number, the lower of the middle two).
    pub fn median(&self) -> Option<f64> {
        let n = self.sorted_ms.len();
        (n > 0).then(|| self.sorted_ms[(n - 1) / 2])
    }
    pub fn max(&self) -> Option<f64> {
        self.sorted_ms.last().copied()
    }
    /// Every start below [`TARGET_MS`] (`None`: none timed).
    pub fn met(&self) -> Option<bool> {
        self.max().map(|m| m < TARGET_MS)
    }
}

impl Bench {
    /// The start-up phase on `scope` (see the module's documentation).
    pub async fn startup(&self, scope: Scope) -> anyhow::Result<Startup> {
        let (pool, authorization) = self.prepare_database(&scope).await?;
        pool.close().await;
        create_topics(
            &self.cfg,
            &[&scope.commands, &scope.replies, &scope.dlq],
            self.partitions,
        )
        .await?;
        let collector = Collector::start(reader(&self.cfg, &scope.replies, self.partitions)?);
        let producer = latency_producer(&self.cfg)?;
        let headers = command_headers(authorization.as_deref());
        let mut sorted_ms = Vec::new();
        // Start 0 is the earlier run that warms the database; 1..=RUNS are timed.
        for run in 0..=RUNS {
            let id = format!("{PREFIX}{run}");
            let n = run as u64;
            let c = envelope(
                &id,
                self.workload.event_uuid(n % self.workload.events),
                "login",
                n,
            );
            producer
                .send(
                    FutureRecord::to(&scope.commands)
                        .key(c.key.as_str())
                        .payload(c.value.as_str())
                        .headers(headers.clone()),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .map_err(|(e, _)| e)?;
            let spawned = Instant::now();
            let mut child = ChildProcessor::spawn(&self.cfg, &scope, self.max_batch, Feed::On)?;
            let read_at = loop {
                if let Some(r) = collector.get(&id).and_then(|r| r.first().cloned()) {
                    break r.read_at;
                }
                child.ensure_running()?;
                if spawned.elapsed() > BOUND {
                    bail!("start-up: no reply to {id} within {BOUND:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let ms = read_at.saturating_duration_since(spawned).as_secs_f64() * 1e3;
            child
                .stop()
                .await
                .context("stopping the started processor")?;
            match run {
                0 => self.progress(format_args!(
                    "start-up: warm-up start {ms:.0} ms (not timed)"
                )),
                _ => {
                    self.progress(format_args!("start-up {run} of {RUNS}: {ms:.0} ms"));
                    sorted_ms.push(ms);
                }
            }
        }
        drop(producer);
        collector.stop().await;
        sorted_ms.sort_by(f64::total_cmp);
        Ok(Startup { sorted_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_summed_up_by_min_median_and_max() {
        let s = Startup {
            sorted_ms: vec![300.0, 400.0, 500.0, 900.0, 1200.0],
        };
        assert_eq!(
            (s.min(), s.median(), s.max()),
            (Some(300.0), Some(500.0), Some(1200.0))
        );
        assert_eq!(s.met(), Some(false));
        let none = Startup { sorted_ms: vec![] };
        assert_eq!((none.median(), none.met()), (None, None));
    }
}
