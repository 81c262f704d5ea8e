//! The batch decision, pure: given a batch's commands and what the database knows of them (the
//! grants of their tokens, the stored answers of their request ids, the current state of their
//! events), the outcome of every command and the rows to write ([`Effects`]). No I/O: the store
//! loads [`StoredState`], calls [`decide_batch`] and writes the [`Effects`]; the benchmark calls
//! the same function.
//!
//! Invariants the store relies on:
//! - Commands are decided in the order given, each seeing the effects of earlier ones, so
//!   per-partition order holds.
//! - A record at or below its partition's applied offset ([`StoredState::applied`]) is never
//!   applied again: it gets its stored reply when one is kept, else the 409 [`ALREADY_APPLIED`]
//!   (not stored). [`Effects::offsets`] carries, per partition, the batch's highest offset where it
//!   is above the stored one, so the store raises it in the same write as the batch's rows.
//! - Every new outcome except 403 and 422 has exactly one stored reply; a redelivery is answered
//!   with those bytes.
//! - An event touched by the batch has one view row, with the version it was read at (0: absent).
//!
//! Parts: what the batch read (`read.rs`), the batch decision (`batch.rs`), one new command's
//! answer (`answer.rs`), the outcomes (`outcome.rs`) and the rows to write (`effects.rs`).

mod answer;
mod batch;
mod effects;
mod outcome;
mod read;

pub use answer::{decide_command, Answer};
pub use batch::{already_applied, decide_batch, BatchSettings};
pub use effects::{Effects, LogRow, RowCounts, StoredReply, ViewRow};
pub use outcome::{unstored, Outcome, OutcomeKind, Source, ALREADY_APPLIED};
pub use read::{StoredAnswer, StoredState};

#[cfg(test)]
mod tests;
