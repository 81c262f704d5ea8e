//! A lane: batches what its queue holds, applies the batch, hands its replies to the
//! producer and the batch to its acker.
//!
//! A batch is bounded by commands (`MAX_BATCH`) and by bytes (`MAX_BATCH_BYTES`): the
//! commands' own, and what the batch would load and answer, measured by the batch's one read
//! before it is decided ([`crate::store::sizes`]: stored replies of a redelivery, the views of
//! its events, the replies carrying them). Where they pass the bound the batch is cut, and the
//! rest is kept, in order, at the head of the lane's queue for the next batch: the partition's
//! order and its one writer are kept. A decided batch's replies are handed to the producer only
//! while the replies in flight leave room for them
//! ([`Budget::reply_room`](super::budget::Budget::reply_room)); they, and its change feed
//! records, are then charged to the budget until its acker finishes it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::domain::reply::{header, Destination};
use crate::metrics::{self, Stage};
use crate::pipeline::trace;
use crate::store::Fit;

use super::budget::REPLY_COPIES;
use super::feed::feed_records;
use super::fetch::current_only;
use super::outgoing::outgoing;
use super::parts::{Dispatched, Fetched, PipelineParts};
use super::persist::persist_batch;

/// A lane: takes what its queue holds, applies it, hands the replies to the producer, passes
/// the batch to its acker. On shutdown, finishes the batch in hand and releases the rest.
pub(super) async fn run_lane(
    shared: Arc<PipelineParts>,
    mut rx: mpsc::UnboundedReceiver<Fetched>,
    acks: mpsc::UnboundedSender<Dispatched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_batch = shared.cfg.max_batch as usize;
    let max_bytes = shared.cfg.max_batch_bytes;
    let mut behind = false;
    // Records taken from the queue but cut from a batch: the head of the queue.
    let mut carry: VecDeque<Fetched> = VecDeque::new();
    loop {
        let first = match carry.pop_front() {
            Some(f) if !*shutdown.borrow() => f,
            Some(f) => {
                carry.push_front(f);
                break;
            }
            None => tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                f = rx.recv() => match f { Some(f) => taken(&shared, f), None => break },
            },
        };
        let mut bytes = first.cost;
        let mut batch = vec![first];
        // Natural batching: what is already here, and a linger only when the lane is behind.
        let linger_until = tokio::time::Instant::now() + shared.cfg.batch_linger;
        while batch.len() < max_batch && bytes < max_bytes {
            if let Some(f) = carry.pop_front() {
                bytes += f.cost;
                batch.push(f);
                continue;
            }
            match rx.try_recv() {
                Ok(f) => {
                    let f = taken(&shared, f);
                    bytes += f.cost;
                    batch.push(f);
                }
                Err(_) if behind => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(f)) => {
                        let f = taken(&shared, f);
                        bytes += f.cost;
                        batch.push(f);
                    }
                    _ => break,
                },
                Err(_) => break,
            }
        }
        let mut batch = current_only(&shared, batch);
        if batch.is_empty() {
            behind = !rx.is_empty() || !carry.is_empty();
            continue;
        }
        let started = Instant::now();
        metrics::record_stage(Stage::Queue, started - batch[0].fetched_at);
        let charged: Vec<usize> = batch.iter().map(|f| f.cost).collect();
        let own_bytes: Vec<usize> = batch
            .iter()
            .map(|f| f.incoming.payload.as_ref().map_or(0, Vec::len))
            .collect();
        let fit = Fit {
            bound: max_bytes,
            charged: &charged,
            own_bytes: &own_bytes,
        };
        let span = tracing::debug_span!("batch", size = batch.len());
        let Some((outcomes, feed, taken)) = persist_batch(&shared, &batch, fit, &mut shutdown)
            .instrument(span)
            .await
        else {
            // Shutdown while the database was away: nothing of this batch is stored.
            release(&shared, &batch);
            break;
        };
        metrics::record_stage(Stage::Apply, started.elapsed());
        if taken < batch.len() {
            tracing::debug!(
                kept = taken,
                cut = batch.len() - taken,
                "batch cut by the bytes it would load and answer"
            );
            for f in batch.drain(taken..).rev() {
                carry.push_front(f);
            }
        }
        behind = !rx.is_empty() || !carry.is_empty();
        // Its replies are handed over only while the replies in flight leave room for them.
        let reply_bytes = REPLY_COPIES * outcomes.iter().map(|o| o.reply.len()).sum::<usize>();
        if !reply_room(&shared, reply_bytes, &mut shutdown).await {
            // Committed and not answered: offsets not stored, so it is redelivered and
            // answered from its stored replies.
            release(&shared, &batch);
            break;
        }
        // The decided replies are held until the batch is finished: charged until then.
        let mut replies = 0;
        for (f, o) in batch.iter_mut().zip(&outcomes) {
            f.replies = REPLY_COPIES * o.reply.len();
            replies += f.replies;
        }
        shared.budget.charge_replies(replies);
        let traces: Vec<Option<trace::Continued>> = batch
            .iter()
            .map(|f| {
                f.incoming
                    .header(header::TRACEPARENT)
                    .and_then(trace::continue_from)
            })
            .collect();
        let mut records = outgoing(&shared.cfg, &batch, &outcomes, &traces);
        let feed_records = feed_records(&shared.cfg, &feed, &traces);
        // Held until the batch is finished, like its replies (charged to its first command).
        let held = REPLY_COPIES * feed_records.iter().map(|r| r.value.len()).sum::<usize>();
        batch[0].replies += held;
        shared.budget.charge_replies(held);
        let changes = feed_records
            .iter()
            .filter(|r| r.destination == Destination::Changes)
            .count();
        records.extend(feed_records);
        let enqueued = shared.publisher.enqueue(records).await;
        let d = Dispatched {
            batch,
            outcomes,
            traces,
            enqueued,
            published_at: Instant::now(),
            feed_ticket: shared.feed_lag.add(changes),
        };
        if let Err(e) = acks.send(d) {
            release(&shared, &e.0.batch);
            break;
        }
    }
    // Records fetched but not started: left uncommitted, redelivered after the restart.
    rx.close();
    for f in carry.drain(..) {
        shared.budget.release(f.cost, 1);
    }
    while let Ok(f) = rx.try_recv() {
        shared.budget.release(f.cost, 1);
    }
}

/// Releases a batch's records and the replies charged for them.
pub(super) fn release(shared: &PipelineParts, batch: &[Fetched]) {
    let bytes = batch.iter().map(|f| f.cost).sum();
    shared.budget.release(bytes, batch.len());
    let replies = batch.iter().map(|f| f.replies).sum();
    if replies > 0 {
        shared.budget.release_replies(replies);
    }
}

/// A record the lane takes from its queue: its decoded command is charged at its real size,
/// beyond the value's bytes its admission counted for it.
fn taken(shared: &PipelineParts, mut f: Fetched) -> Fetched {
    let counted = f.incoming.payload.as_ref().map_or(0, Vec::len);
    let extra = f.command.retained_bytes().saturating_sub(counted);
    shared.budget.charge(extra);
    f.cost += extra;
    f
}

/// How often a lane looks again for room for its batch's replies.
const REPLY_ROOM_POLL: Duration = Duration::from_millis(5);

/// Waits until the replies in flight leave room for `bytes` more; false on shutdown.
async fn reply_room(
    shared: &PipelineParts,
    bytes: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    while !shared.budget.reply_room(bytes) {
        tokio::select! {
            _ = tokio::time::sleep(REPLY_ROOM_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return false,
        }
    }
    true
}
