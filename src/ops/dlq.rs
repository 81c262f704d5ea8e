//! `event-updater dlq replay`: dead letters that were commands, back onto the command topic.
//!
//! It publishes only dead letters that were commands ([`replayable`]): a reply the broker
//! refused is a dead letter too, and replayed as a command it would apply an old snapshot of its
//! event. It reads the DLQ topic by hand-assigned partitions up to the ends seen at start and
//! commits nothing ([`super::kafka`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use event_updater::config::Config;
use event_updater::domain::reply::{header, DeadLetterKind, REPLY_REFUSED_REASON};
use event_updater::drf::isodate;
use event_updater::pipeline::kafka;

use super::kafka::{
    assign_only_consumer, authorization_header, headers_of, last_header, watermarks, HeaderPair,
    BROKER_TIMEOUT,
};

/// `event-updater dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-publish the dead letters that were commands to the command topic (key, value and the
    /// command's own headers, without the dlq-* ones), up to the end of the topic as it was at
    /// start; dead letters that are not commands (refused replies) are listed and left alone.
    Replay(ReplayArgs),
}

/// `event-updater dlq replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Start at this offset in every partition (default: the beginning).
    #[arg(long, conflicts_with = "since")]
    pub from_offset: Option<i64>,
    /// Start at the first dead letter written at or after this time (ISO 8601, e.g.
    /// 2026-11-27T20:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only list the dead letters, saying which would be replayed.
    #[arg(long)]
    pub dry_run: bool,
    /// The `authorization` header of the re-published commands, which the dead letters never
    /// carry: `Bearer <token>`, or just the token.
    #[arg(long, env = "REPLAY_AUTHORIZATION", hide_env_values = true)]
    pub authorization: Option<String>,
}

pub async fn run(cfg: &Config, action: DlqCommand) -> anyhow::Result<()> {
    match action {
        DlqCommand::Replay(args) => dlq_replay(cfg, args).await,
    }
}

/// Reads the DLQ topic from the chosen start up to the high watermarks seen at start and
/// re-publishes (or, with `--dry-run`, lists) every record that was a command; the others are
/// listed with why they are not replayed, and counted.
async fn dlq_replay(cfg: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let consumer = assign_only_consumer(cfg, "dlq-replay")?;
    let topic = cfg.dlq_topic.as_str();
    let ends = watermarks(&consumer, topic)?;
    let starts = replay_starts(&consumer, topic, &ends, args.from_offset, since)?;
    let mut reader = UpToEnd::assign(&consumer, topic, &starts, &ends)?;

    let authorization = args.authorization.as_deref().map(authorization_header);
    if authorization.is_none() && !args.dry_run {
        eprintln!(
            "No --authorization (REPLAY_AUTHORIZATION): the replayed commands carry no \
            credentials and are refused (403) unless AUTH_MODE=disabled."
        );
    }
    let mut out = (!args.dry_run)
        .then(|| Replayer::new(cfg, authorization))
        .transpose()?;
    let (mut count, mut refused) = (0u64, 0u64);
    while let Some(m) = reader.next().await? {
        // Brokers that cannot look offsets up by time start earlier; the time decides.
        if since.is_some_and(|s| m.timestamp().to_millis().is_some_and(|t| t < s)) {
            continue;
        }
        if let Err(why) = replayable(&headers_of(&m), m.payload()) {
            let doing = if out.is_some() {
                "not replaying"
            } else {
                "would not replay"
            };
            println!("{doing} {}: {why}", describe(&m));
            refused += 1;
            continue;
        }
        let doing = if out.is_some() {
            "replaying"
        } else {
            "would replay"
        };
        println!("{doing} {}", describe(&m));
        if let Some(out) = out.as_mut() {
            out.publish(&m).await?;
        }
        count += 1;
    }
    match out {
        Some(out) => {
            out.finish().await?;
            println!(
                "Replayed {count} dead letters from {topic} to {}.",
                cfg.command_topic
            );
        }
        None => println!(
            "{count} dead letters in {topic} would be replayed to {} (dry run: nothing published).",
            cfg.command_topic
        ),
    }
    if refused > 0 {
        println!("{refused} dead letters in {topic} are not commands and were not replayed.");
    }
    Ok(())
}

/// `--since` in milliseconds since the epoch.
fn parse_since(text: &str) -> anyhow::Result<i64> {
    match isodate::parse_datetime(text) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(_) => bail!("--since {text:?} is not an ISO 8601 date or datetime"),
    }
}

/// Reads hand-assigned partitions up to their high watermarks as seen at start.
struct UpToEnd<'c> {
    consumer: &'c StreamConsumer,
    topic: &'c str,
    /// Partition -> high watermark, for the partitions not yet read to it.
    pending: BTreeMap<i32, i64>,
}

impl<'c> UpToEnd<'c> {
    /// Assigns every partition at its start offset.
    fn assign(
        consumer: &'c StreamConsumer,
        topic: &'c str,
        starts: &BTreeMap<i32, i64>,
        ends: &BTreeMap<i32, (i64, i64)>,
    ) -> anyhow::Result<UpToEnd<'c>> {
        let mut tpl = TopicPartitionList::new();
        for (p, start) in starts {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*start))?;
        }
        consumer.assign(&tpl)?;
        let pending = ends
            .iter()
            .filter(|(p, (_, high))| starts.get(p).is_some_and(|s| s < high))
            .map(|(p, (_, high))| (*p, *high))
            .collect();
        Ok(UpToEnd {
            consumer,
            topic,
            pending,
        })
    }

    /// The next record below its partition's end; `None` once every partition is read.
    async fn next(&mut self) -> anyhow::Result<Option<BorrowedMessage<'c>>> {
        let consumer: &'c StreamConsumer = self.consumer;
        let started = Instant::now();
        while !self.pending.is_empty() {
            let Ok(m) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
                // Nothing for a second: partitions whose position passed the end are done.
                self.pending
                    .retain(|p, high| position(consumer, self.topic, *p) < *high);
                if started.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "nothing to read for 30 s; partitions still pending: {:?}",
                        self.pending
                    );
                }
                continue;
            };
            let m = m.context("reading the dead-letter topic")?;
            let Some(&high) = self.pending.get(&m.partition()) else {
                continue;
            };
            if m.offset() + 1 >= high {
                self.pending.remove(&m.partition());
            }
            if m.offset() < high {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

/// Where the replay starts in each partition: the low watermark, `from_offset`, or the first
/// offset at or after `since` (ms); never below the low nor above the high watermark.
fn replay_starts(
    consumer: &StreamConsumer,
    topic: &str,
    ends: &BTreeMap<i32, (i64, i64)>,
    from_offset: Option<i64>,
    since: Option<i64>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let by_time = since
        .map(|ms| offsets_at(consumer, topic, ends, ms))
        .transpose()?;
    Ok(ends
        .iter()
        .map(|(p, (low, high))| {
            let wanted = match (&by_time, from_offset) {
                (Some(t), _) => t.get(p).copied().unwrap_or(*high),
                (None, Some(n)) => n,
                (None, None) => *low,
            };
            (*p, wanted.clamp(*low, *high))
        })
        .collect())
}

/// The first offset of each partition with a timestamp at or after `ms` (absent: none).
fn offsets_at(
    consumer: &StreamConsumer,
    topic: &str,
    ends: &BTreeMap<i32, (i64, i64)>,
    ms: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Offset(ms))?;
    }
    let found = consumer.offsets_for_times(tpl, BROKER_TIMEOUT)?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// The consumer's next offset in a partition (0 when it has none yet).
fn position(consumer: &StreamConsumer, topic: &str, partition: i32) -> i64 {
    consumer
        .position()
        .ok()
        .and_then(|tpl| tpl.find_partition(topic, partition).map(|e| e.offset()))
        .and_then(|offset| match offset {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(0)
}

/// One line about a dead letter: where it is, what it is, where it came from, why it is there.
fn describe(m: &BorrowedMessage<'_>) -> String {
    let headers = headers_of(m);
    let get = |name: &str| {
        last_header(&headers, name).map_or("-".into(), |v| String::from_utf8_lossy(v).into_owned())
    };
    format!(
        "{}/{}: {} from {}/{}/{}, request-id {}, status {}, reason {:?}, {} bytes",
        m.partition(),
        m.offset(),
        last_header(&headers, header::DLQ_KIND)
            .map_or("unmarked".into(), |k| String::from_utf8_lossy(k)
                .into_owned()),
        get(header::DLQ_SOURCE_TOPIC),
        get(header::DLQ_SOURCE_PARTITION),
        get(header::DLQ_SOURCE_OFFSET),
        get(header::REQUEST_ID),
        get(header::DLQ_STATUS),
        get(header::DLQ_REASON),
        m.payload().map_or(0, <[u8]>::len)
    )
}

/// Whether a dead letter was a command, and so may be replayed; if not, why not.
///
/// A dead letter marked `dlq-kind: command` was a command; one marked otherwise was not.
/// Dead letters from before the mark existed are told apart by what the processor always wrote
/// on them: a command's dead letter carries `dlq-source-topic`, `-partition` and `-offset`; a
/// refused reply's carries none of them, a `dlq-reason` that begins `reply refused by the
/// broker`, and a reply as its value. Where any sign points to a reply, or a sign of a command
/// is missing, it is not replayed: replaying a reply would apply an old snapshot of its event.
fn replayable(headers: &[HeaderPair], value: Option<&[u8]>) -> Result<(), String> {
    match last_header(headers, header::DLQ_KIND).map(|k| (k, DeadLetterKind::parse(k))) {
        Some((_, Some(DeadLetterKind::Command))) => return Ok(()),
        Some((_, Some(DeadLetterKind::Reply))) => {
            return Err(
                "a reply the broker refused (dlq-kind: reply), not a command; replayed, it \
                would apply an old snapshot of its event"
                    .into(),
            )
        }
        Some((k, None)) => {
            return Err(format!(
                "dlq-kind {:?} is not a kind this version replays",
                String::from_utf8_lossy(k)
            ))
        }
        None => {}
    }
    let reason = last_header(headers, header::DLQ_REASON).unwrap_or_default();
    if reason.starts_with(REPLY_REFUSED_REASON.as_bytes()) {
        return Err(
            "unmarked, and its dlq-reason says it is a reply the broker refused, not a command"
                .into(),
        );
    }
    if let Some(missing) = [
        header::DLQ_SOURCE_TOPIC,
        header::DLQ_SOURCE_PARTITION,
        header::DLQ_SOURCE_OFFSET,
    ]
    .into_iter()
    .find(|h| last_header(headers, h).is_none())
    {
        return Err(format!(
            "unmarked, and without the {missing} header of a command's dead letter: not known to \
                be a command"
        ));
    }
    let looks_like_reply = value
        .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        .is_some_and(|v| v["status"].is_u64() && v.get("body").is_some());
    if looks_like_reply {
        return Err("unmarked, and its value is a reply (status and body), not a command".into());
    }
    Ok(())
}

/// The headers a dead letter is replayed with: its own minus the `dlq-*` ones and any
/// `authorization`, with a single `request-id` (the last one, which the processor adds: the
/// id it filed the command under, so that the replay keeps the command's identity and is never
/// applied twice), plus `authorization` when given.
fn replay_headers(headers: &[HeaderPair], authorization: Option<&str>) -> Vec<HeaderPair> {
    let is = |k: &str, name: &str| k.eq_ignore_ascii_case(name);
    let request_id = headers
        .iter()
        .rev()
        .find(|(k, _)| is(k, header::REQUEST_ID));
    let mut out: Vec<HeaderPair> = headers
        .iter()
        .filter(|(k, _)| {
            !k.to_ascii_lowercase().starts_with(header::DLQ_PREFIX)
                && !is(k, header::AUTHORIZATION)
                && !is(k, header::REQUEST_ID)
        })
        .cloned()
        .collect();
    out.extend(request_id.cloned());
    if let Some(a) = authorization {
        out.push((header::AUTHORIZATION.into(), Some(a.as_bytes().to_vec())));
    }
    out
}

/// Publishes replayed dead letters to the command topic, in order, and waits for their
/// acknowledgements in chunks.
struct Replayer {
    producer: FutureProducer,
    topic: String,
    authorization: Option<String>,
    in_flight: Vec<DeliveryFuture>,
}

impl Replayer {
    fn new(cfg: &Config, authorization: Option<String>) -> anyhow::Result<Replayer> {
        Ok(Replayer {
            producer: kafka::producer(cfg)?,
            topic: cfg.command_topic.clone(),
            authorization,
            in_flight: Vec::new(),
        })
    }

    async fn publish(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let headers = replay_headers(&headers_of(m), self.authorization.as_deref());
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in &headers {
            owned = owned.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let topic = self.topic.clone();
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(owned);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(v) = m.payload() {
            record = record.payload(v);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    break;
                }
                // The local queue is full: wait for what is in flight, then queue again.
                Err((e, back)) if self.in_flight.is_empty() => {
                    return Err(e).context(format!("publishing to {}", back.topic))
                }
                Err((_, back)) => {
                    record = back;
                    self.wait().await?;
                }
            }
        }
        if self.in_flight.len() >= 1_000 {
            self.wait().await?;
        }
        Ok(())
    }

    /// Waits until everything queued is acknowledged.
    async fn wait(&mut self) -> anyhow::Result<()> {
        for delivery in self.in_flight.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e).context("the broker refused a replayed record"),
                Err(_) => bail!("the producer stopped before a replayed record was acknowledged"),
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> (String, Option<Vec<u8>>) {
        (k.into(), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn replayed_headers_drop_dlq_ones_and_keep_the_filed_request_id() {
        let dead = vec![
            h(header::REQUEST_ID, "too-long-or-whatever"),
            h(header::CORRELATION_ID, "c1"),
            h(header::DLQ_REASON, "JSON parse error"),
            h("DLQ-Status", "400"),
            h(header::REQUEST_ID, "cmds/1/7"),
        ];
        assert_eq!(
            replay_headers(&dead, Some("Bearer t")),
            vec![
                h(header::CORRELATION_ID, "c1"),
                h(header::REQUEST_ID, "cmds/1/7"),
                h(header::AUTHORIZATION, "Bearer t")
            ]
        );
        assert_eq!(
            replay_headers(&[h(header::AUTHORIZATION, "x")], None),
            Vec::new()
        );
    }

    #[test]
    fn only_dead_letters_that_were_commands_are_replayed() {
        let command = vec![
            h(header::CORRELATION_ID, "c1"),
            h(header::DLQ_REASON, "JSON parse error"),
            h(header::DLQ_STATUS, "400"),
            h(header::DLQ_SOURCE_TOPIC, "cmds"),
            h(header::DLQ_SOURCE_PARTITION, "1"),
            h(header::DLQ_SOURCE_OFFSET, "7"),
            h(header::REQUEST_ID, "r1"),
        ];
        // Written before dead letters were marked: told apart by their dlq-source-* headers.
        assert_eq!(replayable(&command, Some(b"{oops")), Ok(()));
        let mut marked = command.clone();
        marked.push(h(header::DLQ_KIND, "command"));
        assert_eq!(replayable(&marked, Some(b"{oops")), Ok(()));

        let reply_value =
            br#"{"request_id":"r1","event_uuid":null,"status":201,"version":1,"body":{}}"#;
        let refused = vec![
            h(header::REQUEST_ID, "r1"),
            h(header::COMMAND_TOPIC, "cmds"),
            h(header::DLQ_KIND, "reply"),
            h(
                header::DLQ_REASON,
                "reply refused by the broker: Broker: Message size too large",
            ),
            h(header::DLQ_STATUS, "201"),
        ];
        let why = replayable(&refused, Some(reply_value)).unwrap_err();
        assert!(why.contains("dlq-kind: reply"), "{why}");
        // The same from before the mark: by its reason, by its missing source, by its value.
        let unmarked: Vec<_> = refused[..2].iter().chain(&refused[3..]).cloned().collect();
        assert!(replayable(&unmarked, Some(reply_value))
            .unwrap_err()
            .contains("reply the broker refused"));
        let no_reason = vec![h(header::REQUEST_ID, "r1"), h(header::DLQ_STATUS, "201")];
        assert!(replayable(&no_reason, None)
            .unwrap_err()
            .contains(header::DLQ_SOURCE_TOPIC));
        let mut sourced_reply = command.clone();
        sourced_reply.retain(|(k, _)| k != header::DLQ_REASON);
        assert!(replayable(&sourced_reply, Some(reply_value))
            .unwrap_err()
            .contains("its value is a reply"));
        // A kind this version does not know is not replayed either.
        let mut unknown = command.clone();
        unknown.push(h(header::DLQ_KIND, "something"));
        assert!(replayable(&unknown, None)
            .unwrap_err()
            .contains("something"));
    }
}
