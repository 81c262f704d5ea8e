//! What a drain left behind: the replies on its reply topic (answered, duplicates, missing, their
//! statuses and record timestamps) and the records on its feed's topics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::pipeline::kafka;
use event_updater_harness::replies::Replies;

use crate::units::fmt_count;
use crate::workload::request_index;

/// What came back on the reply topic of a drain.
#[derive(Debug, Clone, Default)]
pub struct ReplyTally {
    pub records: u64,
    pub answered: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub foreign: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub span_ms: i64,
    pub after_first: u64,
    /// CreateTime of the first and of the last reply.
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl ReplyTally {
    /// What a drain of commands `bench-0..bench-<n>` got back: each command's replies, the
    /// statuses, and the span of the replies' record timestamps.
    pub fn of(replies: &Replies, n: u64) -> ReplyTally {
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
    pub fn applied(&self) -> u64 {
        APPLIED_STATUSES
            .iter()
            .map(|s| self.statuses.get(s).copied().unwrap_or(0))
            .sum()
    }
}

/// The reply statuses of an applied command (each appends one change).
const APPLIED_STATUSES: [u16; 2] = [200, 201];

/// The `status` of a reply value, found without parsing the whole reply (0: none).
pub fn reply_status(value: &[u8]) -> u16 {
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

/// What a drain with the feed on left on the feed's topics.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedTally {
    /// Commands applied (answered 200 or 201).
    pub applied: u64,
    /// The changes topic (`None`: `CHANGES_TOPIC` is empty).
    pub changes: Option<TopicTally>,
    /// The view topic (`None`: `VIEW_TOPIC` is empty).
    pub views: Option<TopicTally>,
}

/// A topic's records (the sum of its partitions' end offsets: the topic is new and its producer
/// idempotent, not transactional, so every offset is a record) and the latest CreateTime among
/// its partitions' last records.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicTally {
    pub records: u64,
    pub last_ms: Option<i64>,
}

impl FeedTally {
    /// When the last feed record was published.
    pub fn last_ms(&self) -> Option<i64> {
        [self.changes, self.views]
            .iter()
            .flatten()
            .filter_map(|t| t.last_ms)
            .max()
    }

    /// The drain published its feed: a change record (at least) per applied command, and a view
    /// record where anything was applied; each where its topic is on.
    pub fn complete(&self) -> bool {
        self.changes.is_none_or(|c| c.records >= self.applied)
            && self
                .views
                .is_none_or(|v| self.applied == 0 || v.records > 0)
    }

    /// `changes: 180,142 records for 180,142 applied commands; views: 83,000 records`.
    pub fn show(&self) -> String {
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

/// The records of `topic` (its partitions' end offsets; a topic that does not exist has none)
/// and the CreateTime of the latest of its partitions' last records. Blocks.
pub fn topic_tally(cfg: &Config, topic: &str) -> anyhow::Result<TopicTally> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
