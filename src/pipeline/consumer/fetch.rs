//! The fetch thread: polls the consumer, admits records against the budget, decodes them and
//! hands each to its partition's lane.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;

use crate::domain::command::{self, Incoming};

use super::budget::cost;
use super::processor::{Fetched, Shared};

/// The fetch thread: polls, admits each record against the budget, decodes it, and hands it
/// to its partition's lane. Returns when `stop` turns true, or when a lane is gone. (Rebalance callbacks run here,
/// inside `poll`.)
pub(super) fn fetch(
    shared: &Shared,
    lanes: Vec<mpsc::UnboundedSender<Fetched>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let incoming = match shared.consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(m)) => to_incoming(&m),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let cost = cost(&incoming);
        if !shared.budget.acquire(cost, stop) {
            break;
        }
        let fetched_at = Instant::now();
        let command = command::decode(
            &incoming,
            shared.cfg.max_message_bytes,
            shared.cfg.auth_mode,
        );
        let lane = usize::try_from(incoming.partition).unwrap_or(0) % lanes.len();
        let f = Fetched {
            incoming,
            command,
            cost,
            fetched_at,
        };
        if let Err(e) = lanes[lane].send(f) {
            shared.budget.release(e.0.cost, 1);
            break;
        }
    }
}

pub(super) fn to_incoming(m: &BorrowedMessage<'_>) -> Incoming {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Incoming {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}
