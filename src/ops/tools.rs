//! The operator's tools around the processor: `rebuild-projection` (the `events` view rebuilt
//! from the log, verified, repaired on request), `dlq replay` (dead letters that were commands
//! back onto the command topic) and `send` (one command in, its reply out).
//!
//! `dlq replay` publishes only dead letters that were commands ([`replayable`]): a reply the
//! broker refused is a dead letter too, and replayed as a command it would apply an old snapshot
//! of its event. `send` takes as its reply only a record that names the request id and the very
//! command record it published ([`judge_reply`]), so a reply that merely claims its request id
//! (anyone may send a record with that `request-id` header) is reported and ignored.
//!
//! This is the command-line half of them (arguments, printing, exit codes), so it lives in the
//! binary; the rebuild's logic is the library's [`event_updater::store::rebuild`]. The Kafka clients
//! start from [`kafka::client_config`] (so TLS and SASL properties apply), are assigned their
//! partitions by hand (no consumer-group join to wait for) and commit nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::domain::auth::{self, Credentials};
use event_updater::domain::reply::{header, scope_tag, DeadLetterKind, REPLY_REFUSED_REASON};
use event_updater::drf::{isodate, validate};
use event_updater::pipeline::kafka;
use event_updater::store;
use event_updater::store::rebuild::{self, Report};

/// How long a broker request (metadata, watermarks, offsets by time) may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// `event-updater rebuild-projection`
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Events per batch (each batch is one transaction).
    #[arg(long, default_value_t = rebuild::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Replace the view rows that differ from the fold of the log, insert missing ones and
    /// remove those without a log (default: only verify and report).
    #[arg(long)]
    pub write: bool,
    /// How many differing events to list.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
}

/// Rebuilds the view from the log, prints progress on stderr and the findings on stdout; fails
/// (exit code 1) when differences remain in the view.
pub async fn rebuild_projection(cfg: &Config, args: RebuildArgs) -> anyhow::Result<()> {
    let pool = store::connect(&cfg.database_url, 1).await?;
    let opts = rebuild::Options {
        batch_size: args.batch_size,
        write: args.write,
        sample: args.show,
    };
    eprintln!(
        "Rebuilding the events view from event_log, {} events per batch ({}).",
        opts.batch_size,
        if opts.write {
            "repairing"
        } else {
            "verifying only; --write repairs"
        }
    );
    // At most one progress line a second, and the last one once.
    let (mut printed_at, mut printed_batches) = (Instant::now(), 0);
    let report = rebuild::run(&pool, &opts, |r| {
        if printed_at.elapsed() >= Duration::from_secs(1) {
            eprintln!("{}", progress_line(r));
            (printed_at, printed_batches) = (Instant::now(), r.batches);
        }
    })
    .await?;
    pool.close().await;
    if printed_batches != report.batches || report.batches == 0 {
        eprintln!("{}", progress_line(&report));
    }
    print_report(&report, opts.write);
    match report.unrepaired() {
        0 => Ok(()),
        n if opts.write => {
            bail!("{n} events have a log that cannot be folded; they were not written")
        }
        n => bail!("{n} events differ from the fold of their log; --write repairs them"),
    }
}

fn progress_line(r: &Report) -> String {
    format!(
        "{} events, {} changes, {} differences ({} repaired) in {:.1} s: {:.0} events/s, {:.0} changes/s",
        r.events,
        r.changes,
        r.differences(),
        r.repaired,
        r.elapsed.as_secs_f64(),
        r.events_per_second(),
        r.changes_per_second()
    )
}

fn print_report(r: &Report, write: bool) {
    println!(
        "events: {}, changes: {}, differing: {}, missing from the view: {}, without a log: {}, unfoldable: {}{}",
        r.events,
        r.changes,
        r.differing,
        r.missing,
        r.extra,
        r.broken,
        if write {
            format!(", repaired: {}", r.repaired)
        } else {
            String::new()
        }
    );
    for f in &r.first {
        println!("  {} {:?}: {}", f.event_uuid, f.kind, f.detail);
    }
    if (r.first.len() as u64) < r.differences() {
        println!("  … and {} more", r.differences() - r.first.len() as u64);
    }
}

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

pub async fn dlq(cfg: &Config, action: DlqCommand) -> anyhow::Result<()> {
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
        eprintln!("No --authorization (REPLAY_AUTHORIZATION): the replayed commands carry no credentials and are refused (403) unless AUTH_MODE=disabled.");
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

/// A consumer for reading by hand-assigned partitions: group `<KAFKA_GROUP_ID>-<suffix>` (never
/// joined), no commits.
fn assign_only_consumer(cfg: &Config, suffix: &str) -> anyhow::Result<StreamConsumer> {
    let mut c = kafka::client_config(cfg);
    c.set("group.id", format!("{}-{suffix}", cfg.kafka_group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    Ok(c.create()?)
}

/// Every partition of `topic` with its low and high watermarks.
fn watermarks(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
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

/// The value of the last header named `name` (case-insensitively) that has one: the processor
/// writes its own headers after those it copies.
fn last_header<'h>(headers: &'h [(String, Option<Vec<u8>>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, v)| k.eq_ignore_ascii_case(name) && v.is_some())
        .and_then(|(_, v)| v.as_deref())
}

/// Whether a dead letter was a command, and so may be replayed; if not, why not.
///
/// A dead letter marked `dlq-kind: command` was a command; one marked otherwise was not.
/// Dead letters from before the mark existed are told apart by what the processor always wrote
/// on them: a command's dead letter carries `dlq-source-topic`, `-partition` and `-offset`; a
/// refused reply's carries none of them, a `dlq-reason` that begins `reply refused by the
/// broker`, and a reply as its value. Where any sign points to a reply, or a sign of a command
/// is missing, it is not replayed: replaying a reply would apply an old snapshot of its event.
fn replayable(headers: &[(String, Option<Vec<u8>>)], value: Option<&[u8]>) -> Result<(), String> {
    match last_header(headers, header::DLQ_KIND).map(|k| (k, DeadLetterKind::parse(k))) {
        Some((_, Some(DeadLetterKind::Command))) => return Ok(()),
        Some((_, Some(DeadLetterKind::Reply))) => {
            return Err("a reply the broker refused (dlq-kind: reply), not a command; replayed, it would apply an old snapshot of its event".into())
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
            "unmarked, and without the {missing} header of a command's dead letter: not known to be a command"
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

fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// The headers a dead letter is replayed with: its own minus the `dlq-*` ones and any
/// `authorization`, with a single `request-id` (the last one, which the processor adds: the
/// id it filed the command under, so that the replay keeps the command's identity and is never
/// applied twice), plus `authorization` when given.
fn replay_headers(
    headers: &[(String, Option<Vec<u8>>)],
    authorization: Option<&str>,
) -> Vec<(String, Option<Vec<u8>>)> {
    let is = |k: &str, name: &str| k.eq_ignore_ascii_case(name);
    let request_id = headers
        .iter()
        .rev()
        .find(|(k, _)| is(k, header::REQUEST_ID));
    let mut out: Vec<(String, Option<Vec<u8>>)> = headers
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

/// `event-updater send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The command as a JSON file (`-`: standard input), published as it is.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["event_uuid", "expected_version", "body"], required_unless_present = "event_uuid")]
    pub file: Option<String>,
    /// The event to update (with --body).
    #[arg(long, requires = "body")]
    pub event_uuid: Option<String>,
    /// The command's request_id (default: a random UUID; with --file, used when the file has
    /// no usable request_id).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Apply only if the event is at this version (0: must not exist yet).
    #[arg(long)]
    pub expected_version: Option<i64>,
    /// The PUT body, as JSON.
    #[arg(long, value_name = "JSON")]
    pub body: Option<String>,
    /// The API token, sent as `authorization: Bearer <token>` (a value with a space in it is
    /// sent as the whole header).
    #[arg(long, env = "EVENT_UPDATER_TOKEN", hide_env_values = true)]
    pub authorization: Option<String>,
    /// The `correlation-id` header, echoed on the reply (default: a random UUID).
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// How long to wait for the reply.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// A command ready to publish.
#[derive(Debug)]
struct Outbound {
    key: Option<String>,
    value: Vec<u8>,
    request_id: String,
    /// Whether the processor will file the reply under `request_id` (else match by
    /// correlation id).
    request_id_usable: bool,
}

/// Publishes one command, waits for its reply, prints it; fails (exit code 1) unless the
/// status is 2xx.
pub async fn send(cfg: &Config, args: SendArgs) -> anyhow::Result<()> {
    let command = outbound(&args)?;
    let correlation_id = args
        .correlation_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    // Positioned at the ends read now, before sending, so the reply cannot be missed.
    let replies = reply_reader(cfg)?;
    let authorization = args.authorization.as_deref().map(authorization_header);
    let placed = publish_command(cfg, &command, &correlation_id, authorization.as_deref()).await?;
    let expected = Expected {
        request_id: command.request_id.clone(),
        correlation_id: (!command.request_id_usable).then(|| correlation_id.clone()),
        topic: cfg.command_topic.clone(),
        partition: placed.partition,
        offset: placed.offset,
        scope: match auth::credentials(authorization.as_deref().map(str::as_bytes)) {
            Credentials::Bearer(hash) => Some(scope_tag(&hash)),
            _ => None,
        },
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let reply = tokio::time::timeout(timeout, wait_for_reply(&replies, &expected))
        .await
        .with_context(|| {
            format!(
                "no reply to request {:?} within {timeout:?}",
                command.request_id
            )
        })??;
    println!("{}", String::from_utf8_lossy(&reply));
    let status = serde_json::from_slice::<Value>(&reply)
        .ok()
        .and_then(|v| v["status"].as_u64());
    match status {
        Some(s) if (200..300).contains(&s) => Ok(()),
        Some(s) => bail!("the command was answered with status {s}"),
        None => bail!("the reply has no status"),
    }
}

/// The command from `--file` (as it is) or from the flags.
fn outbound(args: &SendArgs) -> anyhow::Result<Outbound> {
    let fallback_id = || {
        args.request_id
            .clone()
            .unwrap_or_else(|| Uuid::new_v4().to_string())
    };
    let (value, parsed) = match &args.file {
        Some(path) => {
            let bytes = read_input(path)?;
            let parsed = serde_json::from_slice::<Value>(&bytes).ok();
            if parsed.is_none() {
                eprintln!("{path} is not JSON; sending it as it is.");
            }
            (bytes, parsed.unwrap_or(Value::Null))
        }
        None => {
            let body = args.body.as_deref().unwrap_or("{}");
            let body: Value = serde_json::from_str(body).context("--body is not JSON")?;
            let mut v =
                json!({"request_id": fallback_id(), "event_uuid": args.event_uuid, "body": body});
            if let Some(n) = args.expected_version {
                v["expected_version"] = json!(n);
            }
            (v.to_string().into_bytes(), v)
        }
    };
    let request_id = match parsed.get("request_id") {
        Some(id) if validate::validate_request_id(id).is_ok() => {
            id.as_str().unwrap_or_default().to_string()
        }
        _ => fallback_id(),
    };
    let key = parsed.get("event_uuid").and_then(|u| {
        validate::parse_event_uuid(u)
            .map(|u| u.to_string())
            .or_else(|| u.as_str().map(str::to_string))
    });
    Ok(Outbound {
        key,
        value,
        request_id_usable: validate::validate_request_id(&json!(request_id)).is_ok(),
        request_id,
    })
}

fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the command from standard input")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    }
    Ok(bytes)
}

/// `Bearer <token>`, or the value as it is when it already names a scheme.
fn authorization_header(value: &str) -> String {
    let value = value.trim();
    if value.contains(' ') {
        value.to_string()
    } else {
        format!("Bearer {value}")
    }
}

/// A consumer of every reply partition, positioned at its current high watermark.
fn reply_reader(cfg: &Config) -> anyhow::Result<StreamConsumer> {
    let consumer = assign_only_consumer(cfg, "send")?;
    let mut tpl = TopicPartitionList::new();
    for (p, (_, high)) in watermarks(&consumer, &cfg.reply_topic)? {
        tpl.add_partition_offset(&cfg.reply_topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Publishes the command; its partition and offset as the broker acknowledged them.
async fn publish_command(
    cfg: &Config,
    command: &Outbound,
    correlation_id: &str,
    authorization: Option<&str>,
) -> anyhow::Result<rdkafka::producer::future_producer::Delivery> {
    let producer = kafka::producer(cfg)?;
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::REQUEST_ID,
            value: Some(command.request_id.as_bytes()),
        })
        .insert(Header {
            key: header::CORRELATION_ID,
            value: Some(correlation_id.as_bytes()),
        });
    if let Some(a) = authorization {
        headers = headers.insert(Header {
            key: header::AUTHORIZATION,
            value: Some(a.as_bytes()),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&cfg.command_topic)
        .payload(command.value.as_slice())
        .headers(headers);
    if let Some(k) = &command.key {
        record = record.key(k.as_str());
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("publishing to {}", cfg.command_topic))
}

/// What the reply to the command `send` published must name.
#[derive(Debug)]
struct Expected {
    request_id: String,
    /// Where the request id is not one the processor can file the reply under: the
    /// `correlation-id` that stands for it.
    correlation_id: Option<String>,
    /// The command record, as its delivery report placed it.
    topic: String,
    partition: i32,
    offset: i64,
    /// The scope tag of the token sent, if any.
    scope: Option<String>,
}

/// What a record on the reply topic is to the command `send` published.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    /// Its reply: the request id (or correlation id) and the command record match.
    Ours,
    /// It claims the request id but answers another record (or names none, or another
    /// credential): a spoofed reply, or another sender's command under the same request id.
    Spoofed(String),
    /// Someone else's reply.
    Other,
}

/// Judges a reply record by its headers (see [`Judged`]).
fn judge_reply(headers: &[(String, Option<Vec<u8>>)], expected: &Expected) -> Judged {
    let get = |name: &str| last_header(headers, name).map(String::from_utf8_lossy);
    let claims = match &expected.correlation_id {
        None => get(header::REQUEST_ID).as_deref() == Some(expected.request_id.as_str()),
        Some(c) => get(header::CORRELATION_ID).as_deref() == Some(c.as_str()),
    };
    if !claims {
        return Judged::Other;
    }
    let answers = (
        get(header::COMMAND_TOPIC),
        get(header::COMMAND_PARTITION),
        get(header::COMMAND_OFFSET),
    );
    let (Some(topic), Some(partition), Some(offset)) = answers else {
        return Judged::Spoofed("it names no command record".into());
    };
    if topic != expected.topic
        || partition != expected.partition.to_string()
        || offset != expected.offset.to_string()
    {
        return Judged::Spoofed(format!("it answers {topic}/{partition}/{offset}"));
    }
    match (get(header::COMMAND_SCOPE), &expected.scope) {
        (Some(got), Some(want)) if got != want.as_str() => {
            Judged::Spoofed(format!("it names another credential's scope ({got})"))
        }
        _ => Judged::Ours,
    }
}

/// The first reply to the command `expected` describes; replies that only claim its request id
/// are reported on stderr and ignored.
async fn wait_for_reply(replies: &StreamConsumer, expected: &Expected) -> anyhow::Result<Vec<u8>> {
    loop {
        let m = replies.recv().await.context("reading the reply topic")?;
        match judge_reply(&headers_of(&m), expected) {
            Judged::Ours => return Ok(m.payload().unwrap_or_default().to_vec()),
            Judged::Spoofed(why) => eprintln!(
                "Ignoring a spoofed reply (at {}/{}) under request id {:?}: {why}, not this command ({}/{}/{}).",
                m.partition(),
                m.offset(),
                expected.request_id,
                expected.topic,
                expected.partition,
                expected.offset
            ),
            Judged::Other => {}
        }
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
            h("request-id", "too-long-or-whatever"),
            h("correlation-id", "c1"),
            h("dlq-reason", "JSON parse error"),
            h("DLQ-Status", "400"),
            h("request-id", "cmds/1/7"),
        ];
        assert_eq!(
            replay_headers(&dead, Some("Bearer t")),
            vec![
                h("correlation-id", "c1"),
                h("request-id", "cmds/1/7"),
                h("authorization", "Bearer t")
            ]
        );
        assert_eq!(replay_headers(&[h("authorization", "x")], None), Vec::new());
    }

    #[test]
    fn only_dead_letters_that_were_commands_are_replayed() {
        let command = vec![
            h("correlation-id", "c1"),
            h("dlq-reason", "JSON parse error"),
            h("dlq-status", "400"),
            h("dlq-source-topic", "cmds"),
            h("dlq-source-partition", "1"),
            h("dlq-source-offset", "7"),
            h("request-id", "r1"),
        ];
        // Written before dead letters were marked: told apart by their dlq-source-* headers.
        assert_eq!(replayable(&command, Some(b"{oops")), Ok(()));
        let mut marked = command.clone();
        marked.push(h("dlq-kind", "command"));
        assert_eq!(replayable(&marked, Some(b"{oops")), Ok(()));

        let reply_value =
            br#"{"request_id":"r1","event_uuid":null,"status":201,"version":1,"body":{}}"#;
        let refused = vec![
            h("request-id", "r1"),
            h("command-topic", "cmds"),
            h("dlq-kind", "reply"),
            h(
                "dlq-reason",
                "reply refused by the broker: Broker: Message size too large",
            ),
            h("dlq-status", "201"),
        ];
        let why = replayable(&refused, Some(reply_value)).unwrap_err();
        assert!(why.contains("dlq-kind: reply"), "{why}");
        // The same from before the mark: by its reason, by its missing source, by its value.
        let unmarked: Vec<_> = refused[..2].iter().chain(&refused[3..]).cloned().collect();
        assert!(replayable(&unmarked, Some(reply_value))
            .unwrap_err()
            .contains("reply the broker refused"));
        let no_reason = vec![h("request-id", "r1"), h("dlq-status", "201")];
        assert!(replayable(&no_reason, None)
            .unwrap_err()
            .contains("dlq-source-topic"));
        let mut sourced_reply = command.clone();
        sourced_reply.retain(|(k, _)| k != "dlq-reason");
        assert!(replayable(&sourced_reply, Some(reply_value))
            .unwrap_err()
            .contains("its value is a reply"));
        // A kind this version does not know is not replayed either.
        let mut unknown = command.clone();
        unknown.push(h("dlq-kind", "something"));
        assert!(replayable(&unknown, None)
            .unwrap_err()
            .contains("something"));
    }

    fn expected() -> Expected {
        Expected {
            request_id: "r1".into(),
            correlation_id: None,
            topic: "cmds".into(),
            partition: 2,
            offset: 41,
            scope: Some(scope_tag(&auth::hash("t"))),
        }
    }

    fn reply_headers(
        request_id: &str,
        partition: &str,
        offset: &str,
    ) -> Vec<(String, Option<Vec<u8>>)> {
        vec![
            h("request-id", request_id),
            h("command-topic", "cmds"),
            h("command-partition", partition),
            h("command-offset", offset),
        ]
    }

    #[test]
    fn send_takes_only_the_reply_to_its_own_record() {
        let e = expected();
        assert_eq!(
            judge_reply(&reply_headers("r1", "2", "41"), &e),
            Judged::Ours
        );
        let mut scoped = reply_headers("r1", "2", "41");
        scoped.push(h("command-scope", &scope_tag(&auth::hash("t"))));
        assert_eq!(judge_reply(&scoped, &e), Judged::Ours);
        assert_eq!(
            judge_reply(&reply_headers("r2", "2", "41"), &e),
            Judged::Other
        );
        assert!(matches!(
            judge_reply(&reply_headers("r1", "2", "42"), &e),
            Judged::Spoofed(why) if why.contains("cmds/2/42")
        ));
        assert!(matches!(
            judge_reply(&reply_headers("r1", "0", "41"), &e),
            Judged::Spoofed(_)
        ));
        assert!(matches!(
            judge_reply(&[h("request-id", "r1")], &e),
            Judged::Spoofed(why) if why.contains("no command record")
        ));
        let mut other_scope = reply_headers("r1", "2", "41");
        other_scope.push(h("command-scope", &scope_tag(&auth::hash("u"))));
        assert!(matches!(judge_reply(&other_scope, &e), Judged::Spoofed(_)));
        // Matched by correlation id where the request id is unusable.
        let by_correlation = Expected {
            correlation_id: Some("c1".into()),
            ..expected()
        };
        let mut headers = reply_headers("fallback", "2", "41");
        headers.push(h("correlation-id", "c1"));
        assert_eq!(judge_reply(&headers, &by_correlation), Judged::Ours);
    }

    #[test]
    fn a_bare_token_becomes_a_bearer_header() {
        assert_eq!(authorization_header("eut_abc"), "Bearer eut_abc");
        assert_eq!(authorization_header("Bearer eut_abc"), "Bearer eut_abc");
        assert_eq!(authorization_header(" Basic x "), "Basic x");
    }

    fn args() -> SendArgs {
        SendArgs {
            file: None,
            event_uuid: Some("3FA85F64571745 62B3FC2C963F66AFA6".replace(' ', "")),
            request_id: Some("r1".into()),
            expected_version: Some(0),
            body: Some(r#"{"action": "login", "app": "a", "z": 1.0}"#.into()),
            authorization: None,
            correlation_id: None,
            timeout_secs: 1,
        }
    }

    #[test]
    fn a_command_from_flags_is_keyed_by_the_canonical_uuid() {
        let c = outbound(&args()).unwrap();
        assert_eq!(c.request_id, "r1");
        assert!(c.request_id_usable);
        assert_eq!(
            c.key.as_deref(),
            Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
        );
        assert_eq!(
            String::from_utf8(c.value).unwrap(),
            r#"{"request_id":"r1","event_uuid":"3FA85F6457174562B3FC2C963F66AFA6","body":{"action":"login","app":"a","z":1.0},"expected_version":0}"#
        );
        let c = outbound(&SendArgs {
            request_id: Some(String::new()),
            ..args()
        })
        .unwrap();
        assert!(!c.request_id_usable);
    }
}
