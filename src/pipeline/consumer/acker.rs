//! An acker: finishes its lane's batches in order once their records are acknowledged, and
//! only then stores their offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::Consumer;

use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::domain::decide::{Outcome, OutcomeKind};
use crate::metrics::{self, Stage};
use crate::pipeline::kafka::Settled;
use crate::pipeline::trace;

use super::lane::release;
use super::parts::{Dispatched, Fetched, PipelineParts};
use super::CommandConsumer;

/// An acker: finishes its lane's batches in order once their records are acknowledged.
pub(super) async fn run_acker(
    shared: Arc<PipelineParts>,
    mut rx: mpsc::UnboundedReceiver<Dispatched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = Finished::OffsetsStored;
    while let Some(d) = rx.recv().await {
        if last == Finished::NotAcknowledged {
            // An earlier batch of this lane was not acknowledged before shutdown: later ones
            // must not store offsets past it.
            shared.feed_lag.done(d.feed_ticket);
            release(&shared, &d.batch);
            continue;
        }
        let Dispatched {
            batch,
            outcomes,
            traces,
            enqueued,
            published_at,
            feed_ticket,
        } = d;
        let settled = shared.publisher.settle(enqueued, &mut shutdown).await;
        shared.feed_lag.done(feed_ticket);
        metrics::record_stage(Stage::Publish, settled.answered_at - published_at);
        metrics::record_stage(Stage::Feed, published_at.elapsed());
        last = finish(&shared, &batch, &outcomes, &traces, settled);
        release(&shared, &batch);
    }
}

/// What [`finish`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    /// Every record was acknowledged: its metrics were recorded and its offsets stored.
    OffsetsStored,
    /// Shutdown came before every record was acknowledged: nothing was stored, and the lane's
    /// later batches must not store offsets past it.
    NotAcknowledged,
}

/// Records a published batch's metrics and logs and stores its offsets; a batch whose records
/// were not all acknowledged (shutdown) stores nothing.
pub(super) fn finish(
    shared: &PipelineParts,
    batch: &[Fetched],
    outcomes: &[Outcome],
    traces: &[Option<trace::Continued>],
    settled: Settled,
) -> Finished {
    if !settled.published {
        tracing::warn!("shutdown before every reply was acknowledged; offsets not stored");
        return Finished::NotAcknowledged;
    }
    // A command's latency ends when its reply was acknowledged (not its feed records).
    let now =
        Utc::now() - chrono::Duration::from_std(settled.answered_at.elapsed()).unwrap_or_default();
    metrics::record_commands(batch.iter().zip(outcomes).map(|(f, o)| {
        let latency = f.incoming.timestamp_ms.and_then(|t| {
            (now.timestamp_millis() - t)
                .try_into()
                .ok()
                .map(Duration::from_millis)
        });
        let refused = o.refused.filter(|_| o.kind == OutcomeKind::New);
        (o.status, o.kind, latency, refused)
    }));
    // A line per command at debug level only: its span is not even made otherwise.
    if tracing::enabled!(tracing::Level::DEBUG) {
        for ((f, o), t) in batch.iter().zip(outcomes).zip(traces) {
            let (m, c) = (&f.incoming, &f.command);
            let span = tracing::info_span!(
                "command",
                request_id = %c.request_id,
                event_uuid = c.action.event_uuid().map(tracing::field::display),
                partition = m.partition,
                offset = m.offset,
                trace_id = t.as_ref().map(|t| tracing::field::display(&t.trace_id)),
                span_id = t.as_ref().map(|t| tracing::field::display(&t.span_id)),
            );
            span.in_scope(|| {
                tracing::debug!(status = o.status, outcome = ?o.kind, "answered");
            });
        }
    }
    store_offsets(&shared.consumer, batch);
    Finished::OffsetsStored
}

/// Stores the offsets after `batch`'s records, per partition, through the consumer's
/// [`Assignment`](super::assignment::Assignment): only for records fetched in their partition's
/// current generation, and only beyond the offset stored already, so a stored offset never
/// moves backwards, not even when a revoked partition came back while records of its earlier
/// generation were still queued.
pub(super) fn store_offsets(consumer: &CommandConsumer, batch: &[Fetched]) {
    let mut next: HashMap<((&str, i32), u64), i64> = HashMap::new();
    for f in batch {
        let m = &f.incoming;
        let e = next
            .entry(((&m.topic, m.partition), f.generation))
            .or_insert(0);
        *e = (*e).max(m.offset + 1);
    }
    let next = next
        .into_iter()
        .map(|(((topic, partition), generation), offset)| {
            ((topic.to_string(), partition), generation, offset)
        });
    let stored = consumer.context().assignment.store(next, |offsets| {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer.store_offsets(&tpl)
    });
    // Fails for partitions revoked meanwhile (librdkafka's view); their new owner re-reads
    // them and is answered from the stored replies.
    if let Err(e) = stored {
        tracing::info!(error = %e, "could not store offsets (partition revoked?)");
    }
    // Committed by the auto-commit (every `auto.commit.interval.ms`), on revocation and on
    // shutdown: one commit request per interval rather than one per batch, which a broker feels
    // at small batches. A crash redelivers what was answered since, from the stored replies.
}
