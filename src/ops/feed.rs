//! `event-updater feed backfill`: the event log's changes published again to `CHANGES_TOPIC`
//! (and, where `VIEW_TOPIC` is set, each covered event's current view to it), for a new reader
//! or after the changes topic was lost.
//!
//! A record is the live feed's record of the same log row, byte for byte: the key is the
//! event's UUID ([`feed::key`]), the value [`feed::change_record`] of the row as
//! [`store::feed`] reads it, the header `schema-version`; there is no `traceparent` (no command
//! is being handled). Readers deduplicate on (event UUID, version) as they do for the live feed.
//!
//! What keeps the feed's guarantee (per event, versions in order without a gap; repeats only
//! identical) through a backfill that fails or is killed part-way:
//! - The log is read in (`event_uuid`, `version`) order ([`backfill::page`]) and each page handed
//!   to the feed's producer in that order ([`kafka::feed_producer`]: idempotent, `acks=all`, no
//!   message timeout, gapless), so per partition the broker holds a prefix of what was handed
//!   over, whatever fails: an event's versions are never written around a missing one.
//! - The cursor moves past a page only once every one of its records, and of the pages before,
//!   was acknowledged ([`backfill::advance`]); a rerun with the same arguments starts after it,
//!   so what a failed run delivered beyond it is sent again (the same bytes), and nothing is
//!   skipped.
//! - On any delivery error, or no acknowledgement for [`ACK_TIMEOUT`], the run stops with an
//!   error (exit code 1) without moving the cursor; the records not yet written are dropped
//!   with the producer, never sent later.
//!
//! An event's view is sent once, after its last change: with the page that holds that change,
//! or, where a full page ends with the event (its changes may go on), with the next page (and on
//! resuming, the cursor's event's view is sent again, in case the interrupted run had not). Its
//! version is read again once the broker acknowledged it: a view that moved meanwhile (a
//! processor applied a command) is sent again, so that the backfill's record does not land after
//! a newer one the processor published and stay the last of its key.
//!
//! Changes appended while the backfill runs, to events it has passed, are not its to publish:
//! the processors publish them. Backfilling into a topic the processors also publish to is safe
//! for readers that deduplicate; into a new, empty topic, run it before the processors publish
//! there (a reader would otherwise meet a live version before the backfill's earlier ones).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use serde_json::Value;
use uuid::Uuid;

use event_updater::config::Config;
use event_updater::domain::feed::{self, LogChange};
use event_updater::domain::reply::Outgoing;
use event_updater::drf::{isodate, validate};
use event_updater::pipeline::health::Health;
use event_updater::pipeline::kafka::{self, PublisherContext};
use event_updater::store::{self, backfill};

/// How long the run waits for the broker's next acknowledgement before it stops with an error
/// (the feed's producer itself never gives up on a record).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a long run prints its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How often a page's views are read again and re-sent while a processor keeps moving them.
const VIEW_ROUNDS: u32 = 5;

/// `event-updater feed …`
#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Republish the event log's changes to CHANGES_TOPIC (and views to VIEW_TOPIC), resumably.
    ///
    /// For a new reader, or after the changes topic was lost: every change of the log (or of
    /// --event, or since --since) with the same key, value and schema-version header as the
    /// live feed, per event in version order (readers deduplicate on event UUID and version);
    /// where VIEW_TOPIC is set, each covered event's current view after its changes (VIEW_TOPIC=
    /// for none). The topics are CHANGES_TOPIC and VIEW_TOPIC, or the flags before the command:
    /// `event-updater --changes-topic T --view-topic V feed backfill`; missing ones are created
    /// as the processor creates them.
    ///
    /// Resumable: a run that fails (exit code 1) or is killed resumes, when run again with the
    /// same arguments and topics, after the last page the broker acknowledged (a completed run
    /// leaves nothing to resume: the next starts over). Progress goes to stderr every few
    /// seconds, a summary to stdout.
    Backfill(BackfillArgs),
}

/// `event-updater feed backfill`
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Only this event's changes (any form Python's uuid.UUID accepts).
    #[arg(long)]
    pub event: Option<String>,
    /// Only the changes applied at or after this time (ISO 8601 / RFC 3339, e.g.
    /// 2026-12-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Log rows per page: each page is read in one query and published whole before the
    /// resumption point moves past it. Larger pages go faster; a rerun after a failure repeats
    /// at most one page.
    #[arg(long, default_value_t = backfill::DEFAULT_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub page_size: u32,
    /// Start from the beginning, forgetting where an interrupted run with the same arguments
    /// stopped.
    #[arg(long)]
    pub restart: bool,
}

pub async fn run(cfg: &Config, action: FeedCommand) -> anyhow::Result<()> {
    match action {
        FeedCommand::Backfill(args) => run_backfill(cfg, args).await,
    }
}

/// The job the arguments name.
fn job(cfg: &Config, args: &BackfillArgs) -> anyhow::Result<backfill::Job> {
    if cfg.changes_topic.is_empty() {
        bail!("CHANGES_TOPIC (--changes-topic) is empty: name the topic to publish the changes to");
    }
    let event = match args.event.as_deref() {
        None => None,
        Some(text) => match validate::parse_event_uuid(&Value::String(text.to_string())) {
            Some(u) => Some(u),
            None => bail!("--event {text:?} is not a UUID"),
        },
    };
    let since = match args.since.as_deref() {
        None => None,
        Some(text) => match isodate::parse_datetime(text) {
            Ok(t) => Some(t),
            Err(_) => bail!("--since {text:?} is not an ISO 8601 date or datetime"),
        },
    };
    Ok(backfill::Job {
        changes_topic: cfg.changes_topic.clone(),
        view_topic: cfg.view_topic.clone(),
        event,
        since,
    })
}

async fn run_backfill(cfg: &Config, args: BackfillArgs) -> anyhow::Result<()> {
    let job = job(cfg, &args)?;
    let pool = store::connect(&cfg.database_url, 1).await?;
    // One connection for the whole run: it holds the job's lock.
    let mut conn = pool.acquire().await?;
    backfill::lock(&mut conn, &job).await?;
    // The feed's topics only (created as the processor creates them), not the command topics.
    let mut topics = cfg.clone();
    topics.command_topic.clear();
    topics.reply_topic.clear();
    topics.dlq_topic.clear();
    kafka::ensure_topics(&topics)
        .await
        .context("creating the feed's topics")?;
    let producer =
        kafka::feed_producer(cfg, Arc::new(Health::default()))?.context("the feed's producer")?;

    let cursor = backfill::open(&mut conn, &job, args.restart).await?;
    let (changes, events) = backfill::remaining(&mut conn, &job, cursor.after).await?;
    if cursor.resumed {
        eprintln!(
            "Resuming the backfill started {} after event {} version {} ({} changes published by \
                the earlier run); --restart starts over.",
            isodate::to_representation(cursor.started_at),
            cursor.after.event_uuid,
            cursor.after.version,
            cursor.published
        );
    }
    eprintln!(
        "Publishing {changes} changes of {events} events to {}{}, {} per page.",
        job.changes_topic,
        if job.view_topic.is_empty() {
            String::new()
        } else {
            format!(" and their views to {}", job.view_topic)
        },
        args.page_size
    );
    let mut run = Run {
        producer: &producer,
        job: &job,
        progress: Progress::new(changes, events),
    };
    let mut after = cursor.after;
    // The event whose view is still owed: the last of a full page (its changes may go on in the
    // next one), or, on resuming, the cursor's (its view may not have been sent).
    let mut owed = (after.version > 0).then_some(after.event_uuid);
    loop {
        let page = backfill::page(&mut conn, &job, after, args.page_size).await?;
        let full = page.len() == args.page_size as usize;
        let last = page.last().map(backfill::Position::of);
        let (views, next_owed) = views_of_page(owed, &page, full);
        run.publish_page(&mut conn, &page, &views)
            .await
            .with_context(|| {
                format!(
                    "stopped after {} changes; the cursor stays after event {} version {}: run the \
                        same command again to resume",
                    run.progress.changes, after.event_uuid, after.version
                )
            })?;
        if let Some(last) = last {
            backfill::advance(&mut conn, &job, last, page.len() as i64).await?;
            after = last;
        }
        run.progress.tick();
        owed = next_owed;
        if !full {
            break;
        }
    }
    backfill::finish(&mut conn, &job).await?;
    drop(conn);
    pool.close().await;
    eprintln!("{}", run.progress.line());
    let p = &run.progress;
    println!(
        "Published {} changes of {} events to {}{} in {:.1} s ({:.0} changes/s){}.",
        p.changes,
        p.events,
        job.changes_topic,
        if job.view_topic.is_empty() {
            String::new()
        } else {
            format!(", and {} views to {}", p.views, job.view_topic)
        },
        p.started.elapsed().as_secs_f64(),
        p.rate(),
        if cursor.resumed {
            format!(
                "; resumed after {} changes published by an earlier run",
                cursor.published
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The events whose views go out with `page`, in log order, and the event still owed after it:
/// `owed` (the last event of the page before, or the cursor's on resuming) and the page's
/// events, except the page's last when the page is `full` (its changes may go on in the next).
fn views_of_page(owed: Option<Uuid>, page: &[LogChange], full: bool) -> (Vec<Uuid>, Option<Uuid>) {
    let next_owed = page.last().filter(|_| full).map(|c| c.event_uuid);
    let mut views: Vec<Uuid> = owed
        .into_iter()
        .chain(page.iter().map(|c| c.event_uuid))
        .collect();
    views.dedup();
    views.retain(|u| Some(*u) != next_owed);
    (views, next_owed)
}

/// A run's producer, job and progress.
struct Run<'a> {
    producer: &'a FutureProducer<PublisherContext>,
    job: &'a backfill::Job,
    progress: Progress,
}

impl Run<'_> {
    /// Publishes one page: its change records in log order, then the current views of `events`
    /// (those whose changes the page ends), and waits until the broker has acknowledged every
    /// one; then sends again the views that moved meanwhile (see the module doc).
    async fn publish_page(
        &mut self,
        conn: &mut sqlx::PgConnection,
        page: &[LogChange],
        events: &[Uuid],
    ) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(page.len() * 2);
        for c in page {
            pending.push(
                self.send(&self.job.changes_topic, &feed::change_outgoing(c, None))
                    .await?,
            );
        }
        let mut sent = HashMap::new();
        if !self.job.view_topic.is_empty() {
            sent = self.send_views(conn, events, &mut pending).await?;
        }
        let views = sent.len() as u64;
        acknowledged(pending).await?;
        self.progress.add(page, views);
        for _ in 0..VIEW_ROUNDS {
            if sent.is_empty() {
                return Ok(());
            }
            let now = backfill::view_versions(conn, events).await?;
            let moved: Vec<Uuid> = sent
                .iter()
                .filter(|(u, v)| now.get(u).is_some_and(|n| n != *v))
                .map(|(u, _)| *u)
                .collect();
            if moved.is_empty() {
                return Ok(());
            }
            let mut pending = Vec::with_capacity(moved.len());
            sent = self.send_views(conn, &moved, &mut pending).await?;
            self.progress.views += pending.len() as u64;
            acknowledged(pending).await?;
        }
        tracing::warn!(
            events = sent.len(),
            "views kept moving while the backfill sent them; the processors publish their newer \
            versions"
        );
        Ok(())
    }

    /// Hands the current views of `events` to the producer (their acknowledgements to
    /// `pending`); the version each was sent at, by event.
    async fn send_views(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[Uuid],
        pending: &mut Vec<DeliveryFuture>,
    ) -> anyhow::Result<HashMap<Uuid, i64>> {
        let mut sent = HashMap::new();
        for v in store::feed::read_views(conn, events).await? {
            pending.push(
                self.send(&self.job.view_topic, &feed::view_outgoing(&v))
                    .await?,
            );
            sent.insert(v.event_uuid, v.version);
        }
        Ok(sent)
    }

    /// Hands one record to the producer (waiting while its queue is full).
    async fn send(&self, topic: &str, r: &Outgoing) -> anyhow::Result<DeliveryFuture> {
        kafka::enqueue_waiting(self.producer, kafka::future_record(topic, r))
            .await
            .map_err(|e| anyhow!("{topic} refused a record of event {}: {e}", key_text(r)))
    }
}

/// A record's key as text, for messages.
fn key_text(r: &Outgoing) -> String {
    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()
}

/// Waits for every acknowledgement; fails on the first delivery error, or when the broker
/// acknowledges nothing for [`ACK_TIMEOUT`].
async fn acknowledged(pending: Vec<DeliveryFuture>) -> anyhow::Result<()> {
    for f in pending {
        match tokio::time::timeout(ACK_TIMEOUT, f).await {
            Err(_) => bail!(
                "the broker acknowledged nothing for {} s",
                ACK_TIMEOUT.as_secs()
            ),
            Ok(Err(_)) => bail!("the producer was closed before the broker acknowledged"),
            Ok(Ok(Err((e, m)))) => {
                use rdkafka::message::Message;
                bail!("delivery to {} failed: {e}", m.topic())
            }
            Ok(Ok(Ok(_))) => {}
        }
    }
    Ok(())
}

/// What a run published so far, and its progress lines.
struct Progress {
    /// What the run had to publish when it started.
    total_changes: i64,
    total_events: i64,
    changes: u64,
    events: u64,
    views: u64,
    /// The last event counted (pages are in event order; an event may span two).
    last_event: Option<Uuid>,
    started: Instant,
    printed: Instant,
}

impl Progress {
    fn new(total_changes: i64, total_events: i64) -> Progress {
        Progress {
            total_changes,
            total_events,
            changes: 0,
            events: 0,
            views: 0,
            last_event: None,
            started: Instant::now(),
            printed: Instant::now(),
        }
    }

    fn add(&mut self, page: &[LogChange], views: u64) {
        self.changes += page.len() as u64;
        self.views += views;
        for c in page {
            if self.last_event != Some(c.event_uuid) {
                self.events += 1;
                self.last_event = Some(c.event_uuid);
            }
        }
    }

    /// Prints the progress line when the last one is [`PROGRESS_INTERVAL`] old.
    fn tick(&mut self) {
        if self.printed.elapsed() >= PROGRESS_INTERVAL {
            eprintln!("{}", self.line());
            self.printed = Instant::now();
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.changes as f64 / secs
        } else {
            0.0
        }
    }

    fn line(&self) -> String {
        let total = self.total_changes.max(0) as u64;
        let left = total.saturating_sub(self.changes);
        let eta = match self.rate() {
            r if r > 0.0 => format!("{:.0} s", left as f64 / r),
            _ => "unknown".to_string(),
        };
        format!(
            "feed backfill: {} of {} changes ({:.1}%), {} of {} events, {:.0} changes/s, ETA {eta}",
            self.changes,
            total,
            if total > 0 {
                100.0 * self.changes as f64 / total as f64
            } else {
                100.0
            },
            self.events,
            self.total_events,
            self.rate()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn rows(of: &[(u128, i64)]) -> Vec<LogChange> {
        of.iter()
            .map(|&(u, version)| LogChange {
                event_uuid: Uuid::from_u128(u),
                version,
                change: serde_json::json!({}),
                applied_at: Utc.timestamp_opt(0, 0).unwrap(),
                request_id: format!("r{u}-{version}"),
                scope: None,
                topic: "commands".into(),
                partition: 0,
                offset: version,
            })
            .collect()
    }

    fn u(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_view_goes_out_once_after_its_events_last_change() {
        // Pages of 3 over events 1 (v1..2), 2 (v1..5), 3 (v1): 1 ends in the first page, 2 spans
        // three pages, 3 ends the log.
        let (views, owed) = views_of_page(None, &rows(&[(1, 1), (1, 2), (2, 1)]), true);
        assert_eq!((views, owed), (vec![u(1)], Some(u(2))));
        let (views, owed) = views_of_page(owed, &rows(&[(2, 2), (2, 3), (2, 4)]), true);
        assert_eq!((views, owed), (vec![], Some(u(2))));
        let (views, owed) = views_of_page(owed, &rows(&[(2, 5), (3, 1)]), false);
        assert_eq!((views, owed), (vec![u(2), u(3)], None));
    }

    #[test]
    fn a_full_last_page_leaves_its_last_view_to_the_empty_page_after_it() {
        let (views, owed) = views_of_page(None, &rows(&[(1, 1), (2, 1)]), true);
        assert_eq!((views, owed), (vec![u(1)], Some(u(2))));
        let (views, owed) = views_of_page(owed, &[], false);
        assert_eq!((views, owed), (vec![u(2)], None));
    }

    #[test]
    fn a_resumed_run_sends_the_cursors_event_view_again() {
        // The cursor was after event 1's version 2; the rest starts with event 2.
        let (views, owed) = views_of_page(Some(u(1)), &rows(&[(2, 1)]), false);
        assert_eq!((views, owed), (vec![u(1), u(2)], None));
    }
}
