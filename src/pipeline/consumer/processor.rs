//! The [`Processor`]: it starts the fetch thread, the lanes and the ackers, and on shutdown
//! waits for them and commits the stored offsets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::Config;
use crate::pipeline::health::Health;
use crate::pipeline::kafka::Publisher;

use super::acker::run_acker;
use super::feed::{FeedLag, LAG_REPORT_EVERY};
use super::fetch::fetch;
use super::lane::run_lane;
use super::parts::PipelineParts;
use super::{Budget, CommandConsumer};

/// The processor: owns the consumer, the publisher and the pool.
pub struct Processor {
    pub consumer: CommandConsumer,
    pub budget: Arc<Budget>,
    pub publisher: Publisher,
    pub pool: PgPool,
    pub cfg: Config,
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor").finish_non_exhaustive()
    }
}

/// Why [`Processor::run`] stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The consumer could not subscribe to the command topic.
    #[error("could not subscribe to the command topic")]
    Subscribe(#[source] KafkaError),
    /// The fetch thread could not be started.
    #[error("could not start the fetch thread")]
    SpawnFetch(#[source] std::io::Error),
    /// A lane or an acker panicked (the others drained what they held).
    #[error("a lane or an acker task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The fetch thread ended without being asked to: it panicked, or a lane it feeds was gone.
    #[error("the fetch thread stopped without being asked to")]
    FetchStopped,
}

impl Processor {
    /// Subscribes and runs until `shutdown` turns true; then finishes the batches in hand,
    /// commits the stored offsets and returns.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), ProcessorError> {
        self.consumer
            .subscribe(&[&self.cfg.command_topic])
            .map_err(ProcessorError::Subscribe)?;
        self.health.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(
            topic = %self.cfg.command_topic,
            group = %self.cfg.kafka_group_id,
            "subscribed"
        );
        let shared = Arc::new(PipelineParts {
            consumer: Arc::new(self.consumer),
            budget: self.budget,
            publisher: self.publisher,
            pool: self.pool,
            cfg: self.cfg,
            health: self.health,
            feed_lag: FeedLag::default(),
        });
        if shared.cfg.feed_enabled() {
            let (shared, mut stop) = (shared.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    shared.feed_lag.report();
                    tokio::select! {
                        _ = tokio::time::sleep(LAG_REPORT_EVERY) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            });
        }
        let lanes = shared.cfg.apply_concurrency as usize;
        let mut senders = Vec::with_capacity(lanes);
        let mut tasks = Vec::with_capacity(2 * lanes);
        for lane in 0..lanes {
            let (tx, rx) = mpsc::unbounded_channel();
            let (ack_tx, ack_rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(
                run_lane(shared.clone(), rx, ack_tx, shutdown.clone())
                    .instrument(tracing::info_span!("lane", lane)),
            ));
            tasks.push(tokio::spawn(run_acker(
                shared.clone(),
                ack_rx,
                shutdown.clone(),
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Whatever ends this future, even its being dropped unfinished (a test that panics), the
        // fetch thread is told to stop, so nothing waits on it for ever.
        let _stop_on_drop = StopOnDrop(stop.clone());
        let fetcher = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fetch".into())
                // Decoding recurses into nested values as deep as the parser accepts.
                .stack_size(crate::drf::pyjson::STACK_BYTES)
                .spawn(move || fetch(&shared, senders, &stop))
                .map_err(|e| {
                    tracing::error!(error = %e, "could not start the fetch thread");
                    ProcessorError::SpawnFetch(e)
                })?
        };
        // The fetch thread ends only when asked to, or when a lane is gone (a task panicked):
        // then the lanes and ackers drain what they hold and the processor stops with an error
        // rather than stall.
        let mut fetched = tokio::task::spawn_blocking(move || fetcher.join());
        let mut wait = shutdown.clone();
        let mut failed = tokio::select! {
            _ = wait.wait_for(|s| *s) => None,
            _ = &mut fetched => Some(ProcessorError::FetchStopped),
        };
        stop.store(true, Ordering::Relaxed);
        if failed.is_none() {
            let _ = fetched.await;
        }
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a pipeline task failed");
                // The task that failed says more than the fetch thread that saw its lane gone.
                if !matches!(failed, Some(ProcessorError::Task(_))) {
                    failed = Some(ProcessorError::Task(e));
                }
            }
        }
        tracing::info!("shutting down: committing stored offsets");
        shared.publisher.flush(Duration::from_secs(5));
        match shared.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last auto-commit.
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "final commit failed; the last batch will be redelivered and answered from the \
                    stored replies"
                )
            }
        }
        match failed {
            Some(e) => {
                tracing::error!(
                    "a pipeline stage stopped without being asked to; the processor stops"
                );
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// Sets its flag when dropped: the fetch thread's stop, however [`Processor::run`] ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
