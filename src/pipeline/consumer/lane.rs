//! A lane: batches what its queue holds, applies the batch, hands its replies to the
//! producer and the batch to its acker.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::metrics;
use crate::pipeline::trace;

use super::outgoing::outgoing;
use super::persist::persist_batch;
use super::processor::{Dispatched, Fetched, Shared};

/// A lane: takes what its queue holds, applies it, hands the replies to the producer, passes
/// the batch to its acker. On shutdown, finishes the batch in hand and releases the rest.
pub(super) async fn run_lane(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Fetched>,
    acks: mpsc::UnboundedSender<Dispatched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_batch = shared.cfg.max_batch as usize;
    let max_bytes = shared.cfg.max_batch_bytes;
    let mut behind = false;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        let mut bytes = first.cost;
        let mut batch = vec![first];
        // Natural batching: what is already here, and a linger only when the lane is behind.
        let linger_until = tokio::time::Instant::now() + shared.cfg.batch_linger();
        while batch.len() < max_batch && bytes < max_bytes {
            match rx.try_recv() {
                Ok(f) => {
                    bytes += f.cost;
                    batch.push(f);
                }
                Err(_) if behind => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(f)) => {
                        bytes += f.cost;
                        batch.push(f);
                    }
                    _ => break,
                },
                Err(_) => break,
            }
        }
        behind = !rx.is_empty();
        let started = Instant::now();
        metrics::record_stage("queue", started - batch[0].fetched_at);
        let span = tracing::debug_span!("batch", size = batch.len());
        let Some(outcomes) = persist_batch(&shared, &batch, &mut shutdown)
            .instrument(span)
            .await
        else {
            // Shutdown while the database was away: nothing of this batch is stored.
            release(&shared, &batch);
            break;
        };
        metrics::record_stage("apply", started.elapsed());
        let traces: Vec<Option<trace::Continued>> = batch
            .iter()
            .map(|f| {
                f.incoming
                    .header("traceparent")
                    .and_then(trace::continue_from)
            })
            .collect();
        let records = outgoing(&shared.cfg, &batch, &outcomes, &traces);
        let enqueued = shared.publisher.enqueue(records).await;
        let d = Dispatched {
            batch,
            outcomes,
            traces,
            enqueued,
            published_at: Instant::now(),
        };
        if let Err(e) = acks.send(d) {
            release(&shared, &e.0.batch);
            break;
        }
    }
    // Records fetched but not started: left uncommitted, redelivered after the restart.
    rx.close();
    while let Ok(f) = rx.try_recv() {
        shared.budget.release(f.cost, 1);
    }
}

pub(super) fn release(shared: &Shared, batch: &[Fetched]) {
    let bytes = batch.iter().map(|f| f.cost).sum();
    shared.budget.release(bytes, batch.len());
}
