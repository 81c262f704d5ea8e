//! The broker alone: the pass-through (b), the backlog consumed and produced to a scratch topic
//! with the processor's producer settings and no database (the Kafka-only ceiling), and the echo,
//! the broker's own round trip at each point of the latency curve (the floor).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

use event_updater::config::Config;
use event_updater::pipeline::consumer::{self, Budget};
use event_updater::pipeline::health::Health;
use event_updater::pipeline::kafka;

use crate::clients::{create_topics, reader, Pipeline};
use crate::cost::{or_not_measured, Cost, Mark};
use crate::procstat::Probe;
use crate::run::{Bench, Scope};
use crate::units::fmt_count;

/// The broker pass-through (b).
#[derive(Debug, Clone, Copy)]
pub struct PassThrough {
    pub rate: f64,
    /// The broker's CPU per record, and the benchmark's own (the client) as `bench_us`.
    pub cost: Cost,
}

impl Bench {
    /// The pass-through without a drain before it: its backlog is produced first.
    pub async fn pass_through_alone(&self, scope: Scope) -> anyhow::Result<PassThrough> {
        let n = self.args.commands;
        create_topics(&self.cfg, &[&scope.commands], self.partitions).await?;
        self.progress(format_args!("pass-through (b): producing {n} commands"));
        self.produce_backlog(&scope.commands, n, None).await?;
        self.pass_through(&scope, n).await
    }

    /// (b): consume the backlog topic and produce every record to a scratch topic.
    pub async fn pass_through(&self, scope: &Scope, n: u64) -> anyhow::Result<PassThrough> {
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
            "pass-through (b): {} cmd/s; Kafka's CPU per record {}, \
            the benchmark's (the client) {}",
            fmt_count(rate),
            or_not_measured(cost.kafka_us, |us| format!("{us:.1} µs")),
            or_not_measured(cost.bench_us, |us| format!("{us:.1} µs"))
        ));
        Ok(PassThrough { rate, cost })
    }
}

/// The broker's own round trip: consumes `from` and produces each record (key, value,
/// headers) to `to`, with the processor's consumer and producer settings and no database.
/// Runs on a thread of its own, as the processor's fetch loop does.
pub struct Echo {
    pub stop: Arc<AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo").finish_non_exhaustive()
    }
}

impl Echo {
    pub fn start(cfg: &Config, from: &str, to: &str, group: &str) -> anyhow::Result<Echo> {
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
