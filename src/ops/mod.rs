//! The operator's commands, one file each, with their arguments beside them: [`migrate`],
//! [`show`] (an event's view and history), [`token`] (API tokens), [`send`] (one command in, its
//! reply out), [`dlq`] (`dlq replay`), [`rebuild`] (`rebuild-projection`), [`offsets`] (the
//! applied offsets), [`feed`] (the change feed's backfill) and [`demo`] (the processor with a
//! demonstration). [`kafka`] holds the Kafka helpers they share. `main.rs` only dispatches.

pub mod demo;
pub mod dlq;
pub mod feed;
pub mod kafka;
pub mod migrate;
pub mod offsets;
pub mod rebuild;
pub mod send;
pub mod show;
pub mod token;
