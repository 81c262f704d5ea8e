//! The fetch thread: polls the consumer, admits records against the budget, decodes them and
//! hands each to its partition's lane. While the budget is spent it pauses the assigned
//! partitions and keeps polling, so that rebalances and `max.poll.interval.ms` are served.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;

use crate::domain::command::{self, HeaderOverflow, Incoming};

use super::budget::cost;
use super::parts::{Fetched, PipelineParts};
use super::rebalance::set_paused;

/// How long one `poll` waits for a record, and how long the fetch thread waits for room in a
/// spent budget before it polls again: far inside any `max.poll.interval.ms`.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// How long the budget may stay spent before the partitions are paused: a lane that is merely
/// busy frees room sooner, and the records librdkafka fetched ahead are kept; a stall (the
/// database down) pauses them, and polling goes on.
const PAUSE_AFTER: Duration = Duration::from_millis(200);

/// A record polled but not admitted yet: the budget was spent.
struct Waiting {
    incoming: Incoming,
    cost: usize,
    generation: u64,
}

/// The fetch thread: polls, admits each record against the budget, decodes it, and hands it
/// to its partition's lane. Returns when `stop` turns true, or when a lane is gone. (Rebalance
/// callbacks run here, inside `poll`.)
///
/// When a record does not fit in the budget, it is kept (in `waiting`, in the order polled);
/// if it still does not fit after [`PAUSE_AFTER`], every assigned partition is paused and
/// polling goes on. librdkafka drops what it had fetched ahead for a paused partition and
/// resumes it after the last record polled, so the kept records are exactly the ones that would
/// otherwise be skipped: they are admitted first, in order, once the budget has room, and then
/// the partitions are resumed. A kept record whose partition was revoked meanwhile is dropped:
/// its next owner reads it from the committed offset.
pub(super) fn fetch(
    shared: &PipelineParts,
    lanes: Vec<mpsc::UnboundedSender<Fetched>>,
    stop: &AtomicBool,
) {
    let consumer = &*shared.consumer;
    let assignment = &consumer.context().assignment;
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut paused = false;
    // Since when records have been waiting for room.
    let mut spent_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        waiting.retain(|w| {
            assignment.is_current(&w.incoming.topic, w.incoming.partition, w.generation)
        });
        while let Some(w) = waiting.front() {
            if !shared.budget.try_acquire(w.cost) {
                break;
            }
            let Some(w) = waiting.pop_front() else { break };
            if !dispatch(shared, &lanes, w) {
                return;
            }
        }
        let poll_for = match waiting.front() {
            None => {
                spent_since = None;
                if paused {
                    set_paused(consumer, assignment.resume(), false);
                    paused = false;
                }
                POLL_EVERY
            }
            Some(w) => {
                let spent = spent_since.get_or_insert_with(Instant::now).elapsed();
                if !paused && spent < PAUSE_AFTER {
                    // A short wait for room, without polling, keeps what librdkafka fetched
                    // ahead (a pause would drop it): a busy lane frees room within it.
                    shared.budget.wait_for_room(w.cost, PAUSE_AFTER - spent);
                    continue;
                }
                // Every round: a partition assigned since is paused too.
                set_paused(consumer, assignment.pause(), true);
                paused = true;
                // Wait for room, then poll without waiting (rebalance callbacks, and the
                // proof of life `max.poll.interval.ms` asks for), then admit what fits.
                shared.budget.wait_for_room(w.cost, POLL_EVERY);
                Duration::ZERO
            }
        };
        let incoming = match consumer.poll(poll_for) {
            None => continue,
            Some(Ok(m)) => to_incoming(&m),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                std::thread::sleep(POLL_EVERY);
                continue;
            }
        };
        let Some(generation) = assignment.generation(&incoming.topic, incoming.partition) else {
            // Polled after its partition was revoked: its owner reads it from the committed
            // offset.
            tracing::debug!(
                partition = incoming.partition,
                offset = incoming.offset,
                "record of a partition no longer assigned; left to its owner"
            );
            continue;
        };
        waiting.push_back(Waiting {
            cost: cost(&incoming),
            incoming,
            generation,
        });
    }
}

/// Decodes an admitted record and hands it to its lane; false when the lane is gone.
fn dispatch(shared: &PipelineParts, lanes: &[mpsc::UnboundedSender<Fetched>], w: Waiting) -> bool {
    let Waiting {
        incoming,
        cost,
        generation,
    } = w;
    let fetched_at = Instant::now();
    let command = command::decode(
        &incoming,
        shared.cfg.max_message_bytes,
        shared.cfg.auth_mode,
    );
    let lane = usize::try_from(incoming.partition).unwrap_or(0) % lanes.len();
    let f = Fetched {
        incoming,
        command,
        cost,
        fetched_at,
        generation,
        replies: 0,
    };
    if let Err(e) = lanes[lane].send(f) {
        shared.budget.release(e.0.cost, 1);
        return false;
    }
    true
}

/// Drops the records of `batch` fetched in a generation of their partition that has ended
/// (the partition was revoked, perhaps assigned again since), releasing their budget: their
/// partition's owner reads them again from the committed offset, so they are neither applied
/// nor stored here.
pub(super) fn current_only(shared: &PipelineParts, mut batch: Vec<Fetched>) -> Vec<Fetched> {
    let assignment = &shared.consumer.context().assignment;
    let before = batch.len();
    let mut released = 0;
    batch.retain(|f| {
        let current = assignment.is_current(&f.incoming.topic, f.incoming.partition, f.generation);
        if !current {
            released += f.cost;
        }
        current
    });
    if batch.len() < before {
        tracing::info!(
            dropped = before - batch.len(),
            "records of revoked partitions left to their owners"
        );
        shared.budget.release(released, before - batch.len());
    }
    batch
}

/// The record, copied out of librdkafka. Its headers are counted and measured in librdkafka's
/// own list first (no copy, no allocation per header), and copied only when within
/// [`MAX_HEADERS`](command::MAX_HEADERS) and [`MAX_HEADER_BYTES`](command::MAX_HEADER_BYTES);
/// otherwise none is copied and the record carries its [`HeaderOverflow`] (it is refused).
/// (librdkafka itself refuses to read a record's headers beyond 100,000: such a record reads as
/// one without headers.)
pub(super) fn to_incoming(m: &BorrowedMessage<'_>) -> Incoming {
    let mut headers_refused = None;
    let headers = match m.headers() {
        None => Vec::new(),
        Some(h) => {
            let count = h.count();
            headers_refused = HeaderOverflow::of_count(count).or_else(|| {
                let bytes = (0..count)
                    .filter_map(|i| h.try_get(i))
                    .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                    .sum();
                HeaderOverflow::of_bytes(bytes)
            });
            match headers_refused {
                Some(_) => Vec::new(),
                None => h
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
            }
        }
    };
    Incoming {
        headers_refused,
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}
