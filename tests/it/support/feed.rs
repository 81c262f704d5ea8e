//! Reading the change feed as a downstream service would, and checking what it read.
//!
//! [`read_topic`] reads a topic (the changes topic or the view topic) from its beginning, every
//! partition, up to the end offsets it found when it started, and returns its records in topic
//! order (per partition, by offset). [`check_changes`] checks the feed's guarantee on the
//! records of a changes topic: for every event, versions 1, 2, 3, … in order without a gap; a
//! record whose version was seen already is byte-identical (key and value) to the first record
//! of that (event, version), so a reader that drops every record whose version is at or below
//! the highest it has seen for its event keeps exactly 1..n. [`fold_equals_view`] folds each
//! event's changes after that deduplication and compares the result with the `events` table;
//! [`view_topic_matches`] compares the last record per key of the view topic with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use event_updater::config::Config;
use event_updater::domain::feed;
use event_updater::domain::projection::{self, representation};
use event_updater::drf::pyjson;
use event_updater::store;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::client;

/// How long a read of a whole topic may take before it is reported as stuck.
const READ_BOUND: Duration = Duration::from_secs(120);
/// Each poll's wait for the next record.
const POLL: Duration = Duration::from_millis(200);
/// Problems listed in one failure message (the first ones, in topic order).
const SHOWN_PROBLEMS: usize = 10;

/// One record of a feed topic.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

impl FeedRecord {
    /// The value of header `name`, if the record has one.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The key as text (empty when there is none or it is not UTF-8).
    pub fn key_text(&self) -> &str {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or_default()
    }

    /// Where it is on its topic, for messages.
    pub fn at(&self) -> String {
        format!("partition {} offset {}", self.partition, self.offset)
    }
}

/// Every record of `topic` from its beginning up to the end offsets found when the read began,
/// in topic order (partition by partition, by offset). A missing topic is an error.
pub async fn read_topic(cfg: &Config, topic: &str) -> Result<Vec<FeedRecord>, String> {
    let consumer: StreamConsumer = client(cfg)
        .set("group.id", format!("{}-feed-reader", cfg.kafka_group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .map_err(|e| format!("reader of {topic}: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist"));
    }
    // The end of each partition now: the read stops there.
    let mut end: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| format!("end offsets of {topic}/{p}: {e}"))?;
        if high > low {
            end.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| format!("{topic}/{p}: {e}"))?;
        }
    }
    let mut by_partition: BTreeMap<i32, Vec<FeedRecord>> = BTreeMap::new();
    if end.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&tpl)
        .map_err(|e| format!("assign {topic}: {e}"))?;
    let deadline = Instant::now() + READ_BOUND;
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < end.len() {
        if Instant::now() >= deadline {
            let short: Vec<String> = end
                .iter()
                .filter(|(p, _)| !done.contains(p))
                .map(|(p, high)| {
                    let read = by_partition.get(p).map_or(0, Vec::len);
                    format!("partition {p}: {read} records read, end offset {high}")
                })
                .collect();
            return Err(format!(
                "{topic} not read to its end within {READ_BOUND:?}: {}",
                short.join("; ")
            ));
        }
        match tokio::time::timeout(POLL, consumer.recv()).await {
            // Nothing more for now: a partition whose position is at its end is done (a
            // transaction marker, which is no record, can be a partition's last offset).
            Err(_) => {
                let positions = consumer
                    .position()
                    .map_err(|e| format!("position on {topic}: {e}"))?;
                for (p, high) in &end {
                    let at = positions
                        .find_partition(topic, *p)
                        .and_then(|e| e.offset().to_raw());
                    if at.is_some_and(|at| at >= *high) {
                        done.insert(*p);
                    }
                }
            }
            Ok(Ok(m)) => {
                let p = m.partition();
                let record = FeedRecord {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    partition: p,
                    offset: m.offset(),
                };
                if end.get(&p).is_some_and(|high| m.offset() + 1 >= *high) {
                    done.insert(p);
                }
                by_partition.entry(p).or_default().push(record);
            }
            Ok(Err(e)) => return Err(format!("reading {topic}: {e}")),
        }
    }
    let mut out = Vec::new();
    for (p, mut records) in by_partition {
        // Records past the end found at the start were published since: left for a later read.
        let high = end.get(&p).copied().unwrap_or(i64::MAX);
        records.retain(|r| r.offset < high);
        out.append(&mut records);
    }
    Ok(out)
}

/// What [`check_changes`] found on a changes topic that keeps the guarantee.
#[derive(Debug, Clone, Default)]
pub struct FeedReport {
    /// Records read.
    pub records: usize,
    /// Records that repeat one read before (byte-identical).
    pub repeats: usize,
    /// Per event, the value of the first record of each version, versions 1..n in order: what a
    /// reader keeps after deduplicating.
    pub changes: BTreeMap<Uuid, Vec<Vec<u8>>>,
}

impl FeedReport {
    /// Events with at least one change.
    pub fn events(&self) -> usize {
        self.changes.len()
    }

    /// Distinct changes: (event, version) pairs.
    pub fn distinct(&self) -> usize {
        self.changes.values().map(Vec::len).sum()
    }

    /// Each event's changes as [`projection::fold`] takes them: `(version, changes)`, with
    /// `changes` read the way the store reads `jsonb` ([`pyjson::parse`]).
    pub fn folded_input(&self) -> Result<BTreeMap<Uuid, Vec<(i64, Value)>>, String> {
        let mut out = BTreeMap::new();
        for (event, values) in &self.changes {
            let mut changes = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let record = pyjson::parse(v)
                    .map_err(|e| format!("{event} version {}: not JSON: {e}", i + 1))?;
                changes.push((i as i64 + 1, record["changes"].clone()));
            }
            out.insert(*event, changes);
        }
        Ok(out)
    }

    /// The request id of each distinct change, as its record names it.
    pub fn request_ids(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(self.distinct());
        for (event, values) in &self.changes {
            for v in values {
                let record: Value =
                    serde_json::from_slice(v).map_err(|e| format!("{event}: {e}"))?;
                let id = record["request_id"]
                    .as_str()
                    .ok_or_else(|| format!("{event}: a change without request_id: {record}"))?;
                out.push(id.to_string());
            }
        }
        Ok(out)
    }
}

/// Per event of the changes topic: the versions read so far, as their first records.
struct EventFeed {
    firsts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Set once a problem was reported for the event: its later records are not checked (one
    /// problem, one message).
    broken: bool,
}

/// Checks the feed's guarantee on `records` of a changes topic, in topic order: per event (the
/// key is the event's UUID as text, equal to the value's `event_uuid`), a record whose version
/// is at or below the highest seen is byte-identical (key and value) to the first record of that
/// (event, version); any other record's version is exactly the highest seen plus one (versions
/// start at 1). The first problems found, if any, else what was read.
pub fn check_changes(records: &[FeedRecord]) -> Result<FeedReport, String> {
    let mut events: HashMap<Uuid, EventFeed> = HashMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut report = FeedReport {
        records: records.len(),
        ..FeedReport::default()
    };
    for (i, r) in records.iter().enumerate() {
        let (event, version) = match identify(r) {
            Ok(found) => found,
            Err(why) => {
                problems.push(format!("{}: {why}", r.at()));
                continue;
            }
        };
        let feed = events.entry(event).or_insert(EventFeed {
            firsts: Vec::new(),
            broken: false,
        });
        if feed.broken {
            continue;
        }
        let highest = feed.firsts.len() as i64;
        let key = r.key.clone().unwrap_or_default();
        if version <= highest {
            let (first_key, first_value) = &feed.firsts[(version - 1) as usize];
            if *first_key != key || *first_value != r.value {
                feed.broken = true;
                problems.push(format!(
                    "{}: event {event} version {version} repeated with other bytes:\n  first:  {}\n  repeat: {}",
                    r.at(),
                    String::from_utf8_lossy(first_value),
                    String::from_utf8_lossy(&r.value)
                ));
            } else {
                report.repeats += 1;
            }
        } else if version == highest + 1 {
            feed.firsts.push((key, r.value.clone()));
        } else {
            feed.broken = true;
            let missing = highest + 1;
            let later = records[i + 1..]
                .iter()
                .find(|l| identify(l).ok() == Some((event, missing)));
            let why = match later {
                Some(l) => format!("out of order: version {missing} comes later, at {}", l.at()),
                None => format!("a gap: version {missing} is never published"),
            };
            problems.push(format!(
                "{}: event {event} version {version} follows version {highest}: {why}",
                r.at()
            ));
        }
    }
    if !problems.is_empty() {
        let total = problems.len();
        problems.truncate(SHOWN_PROBLEMS);
        return Err(format!(
            "the changes topic breaks the guarantee ({total} problem(s)):\n{}",
            problems.join("\n")
        ));
    }
    report.changes = events
        .into_iter()
        .map(|(event, feed)| (event, feed.firsts.into_iter().map(|(_, v)| v).collect()))
        .collect();
    Ok(report)
}

/// The (event, version) a change record is about: its key, which must be the canonical UUID
/// its value's `event_uuid` names, and its value's `version` (1 or more).
fn identify(r: &FeedRecord) -> Result<(Uuid, i64), String> {
    let value: Value = serde_json::from_slice(&r.value).map_err(|e| {
        format!(
            "value is not JSON ({e}): {}",
            String::from_utf8_lossy(&r.value)
        )
    })?;
    let named = value["event_uuid"]
        .as_str()
        .ok_or_else(|| format!("no event_uuid in {value}"))?;
    let event = Uuid::parse_str(named).map_err(|e| format!("event_uuid {named:?}: {e}"))?;
    if r.key_text() != named || event.to_string() != named {
        return Err(format!(
            "key {:?} is not the canonical UUID of event_uuid {named:?}",
            r.key_text()
        ));
    }
    let version = value["version"]
        .as_i64()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            format!(
                "version {} is not an integer of 1 or more",
                value["version"]
            )
        })?;
    Ok((event, version))
}

/// Folds each event's changes in `report` ([`projection::fold`]) and compares the result with
/// its row in the `events` table; every row must have changes on the feed, and every event of
/// the feed a row. The number of events compared.
pub async fn fold_equals_view(pool: &PgPool, report: &FeedReport) -> Result<usize, String> {
    let input = report.folded_input()?;
    let rows: Vec<Uuid> = sqlx::query_scalar("SELECT event_uuid FROM events")
        .fetch_all(pool)
        .await
        .map_err(|e| format!("events: {e}"))?;
    let mut problems = Vec::new();
    for event in &rows {
        if !input.contains_key(event) {
            problems.push(format!("event {event} has a row but no change on the feed"));
        }
    }
    for (event, changes) in &input {
        let folded = projection::fold(*event, changes)
            .map_err(|e| format!("the feed of {event} does not fold: {e}"))?;
        let row = store::load_view(pool, *event)
            .await
            .map_err(|e| format!("view of {event}: {e}"))?;
        if folded != row {
            problems.push(format!(
                "event {event}: the fold of the feed differs from the row\n  fold: {folded:?}\n  row:  {row:?}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(input.len())
    } else {
        let total = problems.len();
        problems.truncate(SHOWN_PROBLEMS);
        Err(format!(
            "the feed does not fold to the view table ({total} problem(s)):\n{}",
            problems.join("\n")
        ))
    }
}

/// Compares the last record per key of the view topic (`records` in topic order) with each
/// event's row: its value, as JSON, is the row's representation plus its `version`, and its key
/// the event's UUID; every row must have a record, and every key a row. The number of events
/// compared.
pub async fn view_topic_matches(pool: &PgPool, records: &[FeedRecord]) -> Result<usize, String> {
    let mut last: HashMap<String, &FeedRecord> = HashMap::new();
    for r in records {
        last.insert(r.key_text().to_string(), r);
    }
    let rows: Vec<Uuid> = sqlx::query_scalar("SELECT event_uuid FROM events")
        .fetch_all(pool)
        .await
        .map_err(|e| format!("events: {e}"))?;
    let mut problems = Vec::new();
    let keyed: HashSet<String> = rows.iter().map(Uuid::to_string).collect();
    for key in last.keys() {
        if !keyed.contains(key) {
            problems.push(format!("view record keyed {key:?} has no row"));
        }
    }
    for event in &rows {
        let Some(r) = last.get(&event.to_string()) else {
            problems.push(format!("event {event} has a row but no view record"));
            continue;
        };
        let row = store::load_view(pool, *event)
            .await
            .map_err(|e| format!("view of {event}: {e}"))?
            .ok_or_else(|| format!("event {event} vanished"))?;
        let mut expected = representation(&row);
        expected["version"] = Value::from(row.version);
        match serde_json::from_slice::<Value>(&r.value) {
            Ok(got) if got == expected => {}
            Ok(got) => problems.push(format!(
                "event {event}: the last view record ({}) differs from the row\n  record: {got}\n  row:    {expected}",
                r.at()
            )),
            Err(e) => problems.push(format!("event {event}: view record is not JSON ({e})")),
        }
        if r.header(event_updater::domain::reply::header::SCHEMA_VERSION)
            != Some(feed::SCHEMA_VERSION.as_bytes())
        {
            problems.push(format!(
                "event {event}: the last view record ({}) has no schema-version {}",
                r.at(),
                feed::SCHEMA_VERSION
            ));
        }
    }
    if problems.is_empty() {
        Ok(rows.len())
    } else {
        let total = problems.len();
        problems.truncate(SHOWN_PROBLEMS);
        Err(format!(
            "the view topic does not match the view table ({total} problem(s)):\n{}",
            problems.join("\n")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e8f6f2c-0000-4000-8000-00000000000a";
    const B: &str = "3e8f6f2c-0000-4000-8000-00000000000b";

    /// A change record of `event` at `version` setting `app` (enough for the checker).
    fn change(event: &str, version: i64, app: &str, offset: i64) -> FeedRecord {
        FeedRecord {
            key: Some(event.as_bytes().to_vec()),
            value: format!(
                r#"{{"event_uuid":"{event}","version":{version},"changes":{{"app":"{app}"}}}}"#
            )
            .into_bytes(),
            headers: Vec::new(),
            partition: 0,
            offset,
        }
    }

    fn feed(list: &[(&str, i64, &str)]) -> Vec<FeedRecord> {
        list.iter()
            .enumerate()
            .map(|(i, (e, v, app))| change(e, *v, app, i as i64))
            .collect()
    }

    #[test]
    fn versions_in_order_with_identical_repeats_pass_and_are_counted() {
        let records = feed(&[
            (A, 1, "a1"),
            (B, 1, "b1"),
            (A, 2, "a2"),
            (A, 1, "a1"),
            (A, 2, "a2"),
            (A, 3, "a3"),
            (B, 2, "b2"),
            (B, 2, "b2"),
        ]);
        let report = check_changes(&records).expect("the guarantee holds");
        assert_eq!(
            (
                report.records,
                report.repeats,
                report.events(),
                report.distinct()
            ),
            (8, 3, 2, 5)
        );
        let a: Uuid = A.parse().unwrap();
        assert_eq!(report.changes[&a][2], records[5].value);
    }

    #[test]
    fn a_gap_is_reported() {
        let err = check_changes(&feed(&[(A, 1, "a1"), (A, 3, "a3"), (B, 1, "b1")])).unwrap_err();
        assert!(err.contains("version 3 follows version 1"), "{err}");
        assert!(err.contains("a gap: version 2 is never published"), "{err}");
    }

    #[test]
    fn a_first_version_other_than_1_is_a_gap() {
        let err = check_changes(&feed(&[(A, 2, "a2")])).unwrap_err();
        assert!(err.contains("version 2 follows version 0"), "{err}");
    }

    #[test]
    fn a_reorder_is_reported() {
        let err = check_changes(&feed(&[(A, 1, "a1"), (A, 3, "a3"), (A, 2, "a2")])).unwrap_err();
        assert!(err.contains("out of order: version 2 comes later"), "{err}");
    }

    #[test]
    fn a_repeat_with_other_bytes_is_reported() {
        // Same (event, version), another value.
        let err = check_changes(&feed(&[(A, 1, "a1"), (A, 2, "a2"), (A, 2, "other")])).unwrap_err();
        assert!(err.contains("version 2 repeated with other bytes"), "{err}");
        // Same value, a key spelled otherwise (upper case): the key must be canonical.
        let mut records = feed(&[(A, 1, "a1")]);
        let mut upper = records[0].clone();
        upper.key = Some(A.to_uppercase().into_bytes());
        records.push(upper);
        let err = check_changes(&records).unwrap_err();
        assert!(err.contains("is not the canonical UUID"), "{err}");
    }

    #[test]
    fn an_older_version_repeated_late_must_equal_its_first_record() {
        let err = check_changes(&feed(&[
            (A, 1, "a1"),
            (A, 2, "a2"),
            (A, 3, "a3"),
            (A, 1, "changed"),
        ]))
        .unwrap_err();
        assert!(err.contains("version 1 repeated with other bytes"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_records_event_is_reported() {
        let mut records = feed(&[(A, 1, "a1")]);
        records[0].key = Some(B.as_bytes().to_vec());
        let err = check_changes(&records).unwrap_err();
        assert!(err.contains("is not the canonical UUID"), "{err}");
    }

    #[test]
    fn the_fold_input_reads_changes_as_the_store_reads_jsonb() {
        let report = check_changes(&feed(&[(A, 1, "a1"), (A, 2, "a2")])).unwrap();
        let input = report.folded_input().unwrap();
        let a: Uuid = A.parse().unwrap();
        assert_eq!(
            input[&a],
            vec![
                (1, pyjson::parse_str(r#"{"app": "a1"}"#).unwrap()),
                (2, pyjson::parse_str(r#"{"app": "a2"}"#).unwrap())
            ]
        );
    }
}
