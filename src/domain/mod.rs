//! What the service decides, without I/O: a Kafka record decoded into a command ([`command`]), the
//! event and the fold of its changes ([`projection`]), a token's standing ([`auth`]), the replies
//! ([`reply`]), the change feed's records ([`feed`]), and the decision of a whole batch
//! ([`decide`]).
//!
//! It may use [`crate::drf`] for DRF's rules; it may not import sqlx or rdkafka (the test
//! `the_domain_does_no_io_and_drf_stands_alone` in `tests/deploy_files/layout.rs` fails if it
//! does): the store loads what a batch needs and writes what the decision returns.

pub mod auth;
pub mod command;
pub mod decide;
pub mod feed;
pub mod projection;
pub mod reply;

#[cfg(test)]
mod bench;
