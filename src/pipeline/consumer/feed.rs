//! The change feed's records of a batch, and its lag.
//!
//! A batch's feed records go to the producer with its replies, after them, and its acker stores
//! the batch's offsets only once every one of them is acknowledged. So:
//! - a change is acknowledged before its command's offset is stored (and so committed); a crash
//!   before that reads the command again, and its change is published again (a redelivery of
//!   an applied command publishes the change read back from the log: the same bytes);
//! - an event's changes reach the changes topic in version order: its commands all come through
//!   one partition (the command key is the event UUID), so one lane, which applies them in order
//!   and hands each batch's records to the producer in that order; the feed's producer keeps the
//!   order per partition under any failure ([`feed_producer`]), and a feed record is never
//!   dropped nor sent around an earlier one ([`Publisher`]). A record may be repeated (a
//!   redelivery, a zombie's late send after the group moved its partition), always with the same
//!   bytes; readers deduplicate on (event UUID, version).
//!
//! [`feed_producer`]: crate::pipeline::kafka::feed_producer
//! [`Publisher`]: crate::pipeline::kafka::Publisher

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::domain::feed::{change_outgoing, view_outgoing};
use crate::domain::reply::Outgoing;
use crate::metrics;
use crate::pipeline::trace;
use crate::store::Feed;

/// The feed's records of a batch: each change (where `CHANGES_TOPIC` is set), in the batch's
/// order, carrying its command's continued `traceparent`; then each touched event's view (where
/// `VIEW_TOPIC` is set).
pub(super) fn feed_records(
    cfg: &Config,
    feed: &Feed,
    traces: &[Option<trace::Continued>],
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    if !cfg.changes_topic.is_empty() {
        out.extend(feed.changes.iter().map(|(i, c)| {
            let trace = traces.get(*i).and_then(Option::as_ref);
            change_outgoing(c, trace.map(|t| t.header.as_str()))
        }));
    }
    if !cfg.view_topic.is_empty() {
        out.extend(feed.views.iter().map(view_outgoing));
    }
    out
}

/// The changes this process appended whose records are not acknowledged yet: by batch (a
/// ticket), when it was handed to the producer and how many changes it holds.
#[derive(Debug, Default)]
pub(crate) struct FeedLag {
    next: AtomicU64,
    pending: Mutex<BTreeMap<u64, (Instant, usize)>>,
}

impl FeedLag {
    /// A batch of `changes` handed to the producer now; its ticket, for [`FeedLag::done`].
    pub(super) fn add(&self, changes: usize) -> Option<u64> {
        if changes == 0 {
            return None;
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(ticket, (Instant::now(), changes));
        Some(ticket)
    }

    /// The batch of `ticket` is finished (acknowledged, or given up at shutdown).
    pub(super) fn done(&self, ticket: Option<u64>) {
        if let Some(t) = ticket {
            self.lock().remove(&t);
        }
    }

    /// Sets the lag gauges: the changes pending and the age of the oldest batch of them.
    pub(super) fn report(&self) {
        let pending = self.lock();
        let changes = pending.values().map(|(_, n)| n).sum();
        let oldest = pending
            .values()
            .map(|(at, _)| at.elapsed())
            .max()
            .unwrap_or(Duration::ZERO);
        drop(pending);
        metrics::record_feed_lag(changes, oldest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Instant, usize)>> {
        // The map is consistent whatever panicked while holding it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How often the feed lag gauges are set.
pub(super) const LAG_REPORT_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_counts_pending_changes_until_their_batch_is_done() {
        let lag = FeedLag::default();
        assert_eq!(lag.add(0), None);
        let a = lag.add(3);
        let b = lag.add(2);
        assert_eq!(lag.lock().values().map(|(_, n)| n).sum::<usize>(), 5);
        lag.done(a);
        assert_eq!(lag.lock().values().map(|(_, n)| n).sum::<usize>(), 2);
        lag.done(b);
        lag.done(None);
        assert!(lag.lock().is_empty());
    }
}
