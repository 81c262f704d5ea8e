//! The Kafka helpers the operator's commands share: clients that read hand-assigned
//! partitions (no consumer-group join to wait for, no commits), the watermarks of a topic, a
//! reader of the reply topic from its current end, and reading a record's headers.
//!
//! The clients start from [`kafka::client_config`], so TLS and SASL properties apply.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use event_updater::config::Config;
use event_updater::pipeline::kafka;

/// How long a broker request (metadata, watermarks, offsets by time) may take.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// One header of a record: its name and its value, if it has one.
pub type HeaderPair = (String, Option<Vec<u8>>);

/// A consumer for reading by hand-assigned partitions: group `<KAFKA_GROUP_ID>-<suffix>` (never
/// joined), no commits.
pub fn assign_only_consumer(cfg: &Config, suffix: &str) -> anyhow::Result<StreamConsumer> {
    let mut c = kafka::client_config(cfg);
    c.set("group.id", format!("{}-{suffix}", cfg.kafka_group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    Ok(c.create()?)
}

/// Every partition of `topic` with its low and high watermarks.
pub fn watermarks(
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let metadata = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist");
    }
    partitions
        .into_iter()
        .map(|p| Ok((p, consumer.fetch_watermarks(topic, p, BROKER_TIMEOUT)?)))
        .collect()
}

/// A consumer of every reply partition, positioned at its current high watermark, so that it
/// sees the replies to what is sent after it was made; `suffix` names its (never joined) group
/// as [`assign_only_consumer`] does.
pub fn reply_reader(cfg: &Config, suffix: &str) -> anyhow::Result<StreamConsumer> {
    let consumer = assign_only_consumer(cfg, suffix)?;
    let mut tpl = TopicPartitionList::new();
    for (p, (_, high)) in watermarks(&consumer, &cfg.reply_topic)? {
        tpl.add_partition_offset(&cfg.reply_topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// A record's headers, in order.
pub fn headers_of(m: &BorrowedMessage<'_>) -> Vec<HeaderPair> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of the last header named `name` (case-insensitively) that has one: the processor
/// writes its own headers after those it copies.
pub fn last_header<'h>(headers: &'h [HeaderPair], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, v)| k.eq_ignore_ascii_case(name) && v.is_some())
        .and_then(|(_, v)| v.as_deref())
}

/// `Bearer <token>`, or the value as it is when it already names a scheme.
pub fn authorization_header(value: &str) -> String {
    let value = value.trim();
    if value.contains(' ') {
        value.to_string()
    } else {
        format!("Bearer {value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_token_becomes_a_bearer_header() {
        assert_eq!(authorization_header("eut_abc"), "Bearer eut_abc");
        assert_eq!(authorization_header("Bearer eut_abc"), "Bearer eut_abc");
        assert_eq!(authorization_header(" Basic x "), "Basic x");
    }
}
