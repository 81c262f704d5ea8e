//! What the pipeline's stages pass along and share: a record fetched ([`Fetched`]), a batch
//! handed to the producer ([`Dispatched`]), and the parts every stage uses ([`PipelineParts`]).
//! Its own module, so that the stages and the processor that starts them import it and not
//! each other.

use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;

use crate::config::Config;
use crate::domain::command::{Command, Incoming};
use crate::domain::decide::Outcome;
use crate::pipeline::health::Health;
use crate::pipeline::kafka::{Enqueued, Publisher};
use crate::pipeline::trace;

use super::feed::FeedLag;
use super::{Budget, CommandConsumer};

/// A record, decoded, on its way through a lane.
pub(super) struct Fetched {
    pub(super) incoming: Incoming,
    pub(super) command: Command,
    pub(super) cost: usize,
    pub(super) fetched_at: Instant,
    /// The generation of its partition's assignment it was fetched in (see
    /// [`Assignment`](super::assignment::Assignment)): once that ends, the record is stale.
    pub(super) generation: u64,
    /// What its reply is charged against the budget once decided (see
    /// [`Budget::charge_replies`](super::budget::Budget::charge_replies)); 0 before.
    pub(super) replies: usize,
}

/// A batch applied in PostgreSQL whose records were handed to the producer.
pub(super) struct Dispatched {
    pub(super) batch: Vec<Fetched>,
    pub(super) outcomes: Vec<Outcome>,
    pub(super) traces: Vec<Option<trace::Continued>>,
    pub(super) enqueued: Enqueued,
    pub(super) published_at: Instant,
    /// Its changes in the feed lag ([`FeedLag`]), until its acker finishes it.
    pub(super) feed_ticket: Option<u64>,
}

/// What the pipeline's stages (the fetch thread, the lanes and the ackers) share: the consumer,
/// the byte budget, the publisher, the pool, the configuration, the health flags and the feed
/// lag.
pub(super) struct PipelineParts {
    pub(super) consumer: Arc<CommandConsumer>,
    pub(super) budget: Arc<Budget>,
    pub(super) publisher: Publisher,
    pub(super) pool: PgPool,
    pub(super) cfg: Config,
    pub(super) health: Arc<Health>,
    pub(super) feed_lag: FeedLag,
}
