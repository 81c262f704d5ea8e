//! Kafka and the process around it: the consumer and its stages, offsets and rebalances
//! ([`consumer`]), the clients and the reply publisher ([`kafka`]), W3C trace context
//! ([`trace`]), the health flags they all write ([`health`]), and the health and metrics
//! endpoints ([`http`]).

pub mod consumer;
pub mod health;
pub mod http;
pub mod kafka;
pub mod trace;
