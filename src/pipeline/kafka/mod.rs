//! Kafka clients: their configuration ([`config`], [`producers`]), topic creation ([`topics`]),
//! and the reply publisher ([`publisher`]).
//!
//! Every client starts from [`client_config`], so the pass-through librdkafka properties (TLS,
//! SASL, ...) apply to the consumer, the producer and the admin client alike. The
//! [`Publisher`] delivers a batch's replies, dead letters and change feed records and retries
//! until the broker has acknowledged every one: the consumer stores no offset before that. The
//! feed's records go through a producer of their own ([`feed_producer`]), which keeps their
//! order per key under any failure.
//!
//! A topic the broker does not know (deleted) or refuses (an ACL) is retried a bounded number
//! of times ([`UNUSABLE_TOPIC_ATTEMPTS`]); then it is reported unusable ([`unusable`]): an
//! error log and the `event_updater_topic_unusable{destination,topic}` gauge name it, and
//! `/readyz` fails. Invariants in that state:
//! - A reply is never dropped: it is retried (back-off up to 5 s) until the reply topic takes
//!   it, so its command's offset is not stored meanwhile and the lane's later batches wait
//!   behind it; commands are held, never lost. The first reply delivered clears the state.
//! - A dead letter never holds a command up: once the dead-letter topic is unusable, a dead
//!   letter it refuses is dropped (logged with its request id and counted in
//!   `event_updater_dead_letters_dropped_total{topic}`), its command's reply still goes out and
//!   the offset moves on. The state clears once the topic is seen again.
//! - A deleted topic is seen as such by the producer within [`TOPIC_PROPAGATION_MAX`]
//!   (librdkafka otherwise waits up to 30 s, and its records wait with it).
//! - While a topic is unusable, its metadata is asked for every [`UNUSABLE_TOPIC_PROBE`], so
//!   that the producer learns of the topic's return at once rather than at its next periodic
//!   metadata refresh (`topic.metadata.refresh.interval.ms`, 5 minutes).
//!
//! A record the broker refuses for good (too large) is handled in [`refused`].

pub mod config;
pub mod producers;
pub mod publisher;
pub mod record;
pub mod refused;
pub mod topics;
pub mod unusable;

pub use config::client_config;
pub use producers::{
    feed_producer, producer, producer_config, producer_max_bytes, reply_producer, PublisherContext,
    RECORD_OVERHEAD_BYTES, TOPIC_PROPAGATION_MAX,
};
pub use publisher::{Enqueued, Publisher, Settled};
pub use record::{enqueue_waiting, future_record};
pub use topics::ensure_topics;
pub use unusable::{UNUSABLE_TOPIC_ATTEMPTS, UNUSABLE_TOPIC_PROBE};
