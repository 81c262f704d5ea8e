//! PostgreSQL: the event log, the projection and the stored replies, written one batch per
//! transaction (one fenced statement, see [`apply_batch`]): load what the batch needs
//! ([`StoredState`](crate::domain::decide::StoredState), `read.rs`), decide it
//! ([`decide_batch`](crate::domain::decide::decide_batch), pure), write its
//! [`Effects`](crate::domain::decide::Effects) ([`Writes`]). What may import sqlx lives under
//! `store/` and `pipeline/`.
//!
//! One file per part: `error.rs` ([`StoreError`] and the one classification of database
//! errors), `connect.rs` (pools and migrations), `apply.rs` (a batch's apply, both paths),
//! `read.rs` (the batch's read), `write.rs` (the batch's fenced write), `view.rs` (views and
//! history by row). Also here: tokens ([`tokens`]), the retention of stored replies
//! ([`retention`]), rebuilding the view ([`rebuild`]), the change feed's reads ([`feed`],
//! [`backfill`]), the applied offsets ([`offsets`]) and the sizes a batch is cut by ([`sizes`]).
//!
//! Invariants this module keeps (the tests in `tests/` check them):
//! - A batch's effects (log rows, view rows, stored replies) commit together or not at all.
//! - Every handled request id has exactly one row in `command_replies` per scope (the credential
//!   that sent it, see [`Command::scope`](crate::domain::command::Command::scope)); a request
//!   id seen again in its scope is answered from that row (the same bytes) or, with other
//!   content, with a 422.
//! - An event's versions are 1..n without gaps: a batch decided on rows read without locks is
//!   written only if no other writer moved its events or handled its request ids meanwhile (the
//!   log's and the stored replies' primary keys, and a version guard on the view); otherwise it
//!   is decided again with the rows read under `FOR UPDATE`, and a conflict there fails the
//!   batch with [`StoreError::Conflict`], to be retried whole (a bounded number of times; the
//!   consumer then isolates the command that keeps conflicting).
//! - A writer that lost its partitions but still holds a batch (a zombie) writes nothing stale:
//!   its batch was decided on rows the new owner has since moved, so a fence trips, and decided
//!   again its request ids are found handled and get the replies the new owner stored.
//! - Commands are decided in the order given (`decide_batch`, pure), so per-partition order is
//!   kept.
//! - Per command (topic, partition), `applied_offsets` holds the highest offset of any command a
//!   committed batch handled, raised in the same statement as the batch's rows (never lowered:
//!   `GREATEST`), so every applied command's offset is at or below it. A record at or below it is
//!   never applied again, whatever the retention of stored replies: it gets its stored reply
//!   while one is kept, else a 409 ([`offsets`]). The offsets are read in the same statement
//!   (one snapshot) as the stored replies (`read_batch`), so a record they cover has its reply
//!   visible to the batch unless the retention pruned it. A command topic deleted and created
//!   again restarts at offset 0: its stored offsets must be reset ([`offsets::reset`]).
//! - Schema changes are expand/contract (`migrations/README.md`): the write function the
//!   previous release calls keeps its signature and keeps working; a new signature is a new
//!   name. The migrator tolerates migrations newer than the binary ([`migrate_with`]), so the
//!   previous release starts against a schema this one migrated (a rollback), and refuses a
//!   known migration whose text changed.

mod apply;
pub mod backfill;
mod connect;
mod error;
pub mod feed;
pub mod offsets;
mod read;
pub mod rebuild;
pub mod retention;
pub mod sizes;
pub mod tokens;
mod view;
mod write;

pub use apply::{apply_batch, apply_batch_locked, apply_batch_timed, Applied};
pub use connect::{connect, connect_for_processing, migrate, migrate_with, SessionTimeouts};
pub use error::{Chain, StoreError};
pub use feed::Feed;
pub use sizes::Fit;
pub use view::{load_history, load_view, LogEntry};
pub(crate) use view::{upsert_views, view_from_row, VIEW_COLUMNS};
pub use write::Writes;
