//! The processing pipeline: fetch and decode, apply, publish, store offsets, each stage
//! working on a later batch while the next stage finishes an earlier one.
//!
//! - **Fetch** (one thread of its own): polls the consumer, decodes each record into a command
//!   and hands it to the lane of its partition. Records are admitted against a byte budget
//!   ([`Budget`]), released when their batch is finished, so memory in flight is bounded by the
//!   processor and not by the consumer's prefetch; while it is spent, the partitions are paused
//!   and polling goes on.
//! - **Lanes** (`APPLY_CONCURRENCY` tasks, partition `p` in lane `p mod n`): each takes what
//!   its queue holds (natural batching, up to `MAX_BATCH` commands and `MAX_BATCH_BYTES`),
//!   applies it on its own connection ([`store::apply_batch`]), and hands the replies to the
//!   producer in order, without waiting for their acknowledgements.
//! - **Ackers** (one per lane): wait for a batch's acknowledgements, in the lane's order, then
//!   record its metrics and store its offsets.
//!
//! Invariants:
//! - One writer per partition: a partition's commands all go through one lane, which applies
//!   its batches one after the other in offset order; so per-partition order of effects holds.
//! - A lane hands its batches' replies to the idempotent producer in that same order, so the
//!   replies of one event leave in order too (a reply the producer gives up on is sent again
//!   after later ones; that takes a broker outage longer than `message.timeout.ms`).
//! - An offset is stored (and so committed) only after the batch holding the command has
//!   committed in PostgreSQL and every reply of it has been acknowledged; an acker finishes its
//!   lane's batches in order, so stored offsets only move forward over answered commands. A
//!   crash anywhere before that redelivers the command, and its stored reply answers it again.
//! - The change feed (`feed.rs`): a batch's changes and views go to the producer with its
//!   replies and are acknowledged before its offsets are stored; an event's changes reach the
//!   changes topic in version order, repeated only with the same bytes.
//! - Partitions being revoked are drained first: the rebalance callback waits (up to a bound)
//!   until every fetched record is finished and commits, so their next owner starts after the
//!   last answered command. A batch still being applied past the bound is fenced by the
//!   database (see [`store::apply_batch`]); records not started are dropped (below).
//! - Assignment is incremental under both group protocols (`KAFKA_GROUP_PROTOCOL`: classic with
//!   the cooperative-sticky assignor, or consumer): librdkafka reports the rebalance protocol
//!   as cooperative, so rdkafka's `ConsumerContext::rebalance` hands a revocation to
//!   `incremental_unassign` and an assignment to `incremental_assign`. A revocation names only
//!   the partitions that leave; the others stay assigned, keep their fetch positions and
//!   their records in the lanes, and are never re-read. The drain waits for every record in
//!   flight, a superset of the leaving partitions' records, so the rule above holds for a
//!   partial revocation too. A lost assignment (the member's session expired, or the broker
//!   fenced it) is drained but not committed.
//! - The drain is bounded well inside `max.poll.interval.ms` and the session (a third of each,
//!   at most 10 s), so a member whose database is down does not hold a rebalance up. Each
//!   assignment of a partition is a generation of its own (`assignment.rs`); a revocation ends
//!   it, after the drain. A record carries the generation it was fetched in: once that has
//!   ended, a lane drops the record (neither applied nor answered here; the partition's next
//!   owner, perhaps this member again, reads it from the committed offset) and an acker does
//!   not store its offset. Offsets are stored only in the current generation and only forward,
//!   under the lock that ends generations: a stored offset never moves backwards, even when a
//!   revoked partition comes back while records of its earlier generation are still queued.
//! - Backpressure never stops polling for long: a record that does not fit in the [`Budget`] is
//!   kept by the fetch thread; if the budget stays spent for 200 ms (a stall, not a busy lane),
//!   every assigned partition is paused (and a partition assigned meanwhile too), and `poll`
//!   goes on at least every 100 ms, serving rebalance callbacks and `max.poll.interval.ms`.
//!   Pausing drops what librdkafka had fetched ahead, and a resumed partition starts after the
//!   last record polled, so the kept records are admitted first, in the order polled, before
//!   the partitions are resumed: nothing skipped, nothing reordered. A partition is resumed
//!   only if it was paused (a resume restarts its fetch), and a revoked one on its way out
//!   (librdkafka keeps a pause across assignments).
//! - A database that is down is retried with back-off; data the database refuses is isolated to
//!   its command, which gets a 400, so a partition never stalls. A statement the database keeps
//!   failing (a statement or lock timeout, out of memory, a missing function: anything but an
//!   unreachable database) is retried [`FAILURE_ATTEMPTS`] times, then its batch is split in
//!   halves down to single commands, and a command that still fails alone is not applied and
//!   gets a stored 500 ([`DATABASE_FAILED`]) and a dead letter; the commands after it are
//!   applied.
//! - Conflicts with concurrent writers (a zombie: a previous owner of a partition still applying
//!   the batch it held when the group moved the partition) are retried at most
//!   [`CONFLICT_ATTEMPTS`] times per batch, with jittered exponential back-off; then the batch's
//!   commands are applied one by one, and a command that still conflicts is not applied and gets a
//!   stored 409 ([`KEPT_CONFLICTING`]), so a partition never stalls on a fight between writers.
//!   A zombie's late write cannot double anything: it is fenced (see [`store::apply_batch`]) and
//!   decided again on current rows, where a request id the new owner handled gets its stored
//!   reply.
//! - On shutdown, fetching stops, each lane finishes the batch in hand (records it had not
//!   started are left for redelivery), the ackers finish what was published, and the stored
//!   offsets are committed.
//!
//! [`store::apply_batch`]: crate::store::apply_batch

mod acker;
mod assignment;
mod budget;
mod feed;
mod fetch;
mod lane;
mod outgoing;
mod parts;
mod persist;
mod processor;
mod rebalance;

pub use budget::Budget;
pub use persist::{
    CONFLICT_ATTEMPTS, DATABASE_FAILED, DATABASE_FAILED_REASON, DATABASE_REFUSED, FAILURE_ATTEMPTS,
    KEPT_CONFLICTING,
};
pub use processor::{Processor, ProcessorError};
pub use rebalance::{create_consumer, CommandConsumer, ConsumerError, ProcessorContext};
