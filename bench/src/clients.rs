//! The benchmark's Kafka clients and topics: readers of a topic outside any group, producers built
//! from the processor's own settings plus the benchmark's batching, topics created and deleted,
//! and a pipeline that produces without waiting for each record.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::pipeline::kafka;
use event_updater_harness::replies;

/// A consumer assigned every partition of `topic` from the beginning, outside any group.
pub fn reader(cfg: &Config, topic: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
    let group = format!("bench-reader-{}", Uuid::new_v4().simple());
    Ok(replies::reader(
        kafka::client_config(cfg),
        &group,
        topic,
        partitions,
    )?)
}

/// The processor's own producer settings ([`kafka::producer_config`]: idempotent, `acks=all`,
/// lz4, and the operator's `KAFKA_PROPERTIES`), with room for a whole backlog in the client's
/// queue and the benchmark's `tweaks` (its batching); the operator's properties still win.
fn producer_with(cfg: &Config, tweaks: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
    let mut c: ClientConfig = kafka::producer_config(cfg);
    c.set("queue.buffering.max.messages", "1000000")
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
pub fn backlog_producer(cfg: &Config) -> anyhow::Result<FutureProducer> {
    producer_with(cfg, &[("linger.ms", "20"), ("batch.size", "1000000")])
}

/// Little lingering: produce time is where each command's latency starts.
pub fn latency_producer(cfg: &Config) -> anyhow::Result<FutureProducer> {
    producer_with(cfg, &[("linger.ms", "1")])
}

pub async fn create_topics(cfg: &Config, names: &[&str], partitions: i32) -> anyhow::Result<()> {
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
pub async fn delete_topics(cfg: &Config, names: &[String]) {
    let Ok(admin) = kafka::client_config(cfg).create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(Duration::from_secs(20), admin.delete_topics(&names, &opts)).await;
}

/// Produces without waiting for each record: at most `WINDOW` unacknowledged at a time.
pub struct Pipeline<'p> {
    pub producer: &'p FutureProducer,
    pub pending: VecDeque<DeliveryFuture>,
}

impl<'p> Pipeline<'p> {
    const WINDOW: usize = 100_000;

    pub fn new(producer: &'p FutureProducer) -> Self {
        Pipeline {
            producer,
            pending: VecDeque::new(),
        }
    }

    pub async fn send<K, P>(&mut self, mut record: FutureRecord<'_, K, P>) -> anyhow::Result<()>
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

    pub async fn finish(mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}
