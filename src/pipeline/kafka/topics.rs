//! Topic creation at start: the command, reply and dead-letter topics, and the change feed's,
//! with the replication the cluster allows.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::util::Timeout;

use crate::config::{replication_factor_for, Config, AUTO_REPLICATION_FACTOR};

use super::{client_config, producer_max_bytes};

/// Creates the command, reply and dead-letter topics, and the change feed's changes and view
/// topics where they are configured, where they do not exist yet, with
/// `TOPIC_REPLICATION_FACTOR` replicas ([`replication_factor_for`]: `auto` is three, or the
/// broker count where the cluster has fewer). A replication factor below what the cluster
/// allows, for a topic created or found, is logged as an error: losing one broker then loses
/// commands or replies. (The start goes on: an operator may mean it, and a single-broker
/// cluster has no better.)
pub async fn ensure_topics(cfg: &Config) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let names: Vec<&String> = [
        &cfg.command_topic,
        &cfg.reply_topic,
        &cfg.dlq_topic,
        &cfg.changes_topic,
        &cfg.view_topic,
    ]
    .into_iter()
    .filter(|n| !n.is_empty())
    .collect();
    let metadata = admin
        .inner()
        .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))?;
    let brokers = metadata.brokers().len();
    let (replication, low) = replication_factor_for(cfg.topic_replication_factor, brokers);
    let allowed = replication_factor_for(AUTO_REPLICATION_FACTOR, brokers).0 as usize;
    for t in metadata
        .topics()
        .iter()
        .filter(|t| names.iter().any(|n| n.as_str() == t.name()))
    {
        let replicas = t.partitions().iter().map(|p| p.replicas().len()).min();
        if let Some(replicas) = replicas.filter(|r| *r < allowed) {
            tracing::error!(
                topic = t.name(),
                replicas,
                brokers,
                "this topic has fewer replicas than the cluster allows (up to 3): losing one \
                broker can lose its records"
            );
        }
    }
    let missing: Vec<&String> = names
        .iter()
        .copied()
        .filter(|n| {
            !metadata.topics().iter().any(|t| {
                t.name() == n.as_str() && t.error().is_none() && !t.partitions().is_empty()
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if low {
        tracing::error!(
            replication,
            brokers,
            topics = ?missing,
            "TOPIC_REPLICATION_FACTOR is below what the cluster allows (up to 3): the topics \
            created now can lose records when one broker is lost; leave it at auto"
        );
    }
    let max_bytes = producer_max_bytes(cfg).to_string();
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|n| {
            let topic = NewTopic::new(
                n,
                cfg.topic_partitions,
                TopicReplication::Fixed(replication),
            );
            // The feed's topics: the changes kept for good (a reader starts from version 1),
            // the views compacted to the last per event; both take any record the feed sends.
            if **n == cfg.changes_topic {
                topic
                    .set("retention.ms", "-1")
                    .set("max.message.bytes", &max_bytes)
            } else if **n == cfg.view_topic {
                topic
                    .set("cleanup.policy", "compact")
                    .set("max.message.bytes", &max_bytes)
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(name) => {
                tracing::info!(
                    topic = %name,
                    partitions = cfg.topic_partitions,
                    replication,
                    "created topic"
                )
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, error = %code, "could not create topic"),
                )
            }
        }
    }
    Ok(())
}
