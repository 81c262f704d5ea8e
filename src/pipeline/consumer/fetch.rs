//! The fetch thread: polls the consumer, admits records against the budget, decodes them and
//! hands each to its partition's lane.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;

use crate::domain::command::{self, HeaderOverflow, Incoming};

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
            replies: 0,
        };
        if let Err(e) = lanes[lane].send(f) {
            shared.budget.release(e.0.cost, 1);
            break;
        }
    }
}

/// The record, copied out of librdkafka. Its headers are counted and measured in librdkafka's
/// own list first (no copy, no allocation per header), and copied only when within
/// [`MAX_HEADERS`](command::MAX_HEADERS) and [`MAX_HEADER_BYTES`](command::MAX_HEADER_BYTES);
/// otherwise none is copied and the record carries its [`HeaderOverflow`] (it is refused).
/// (librdkafka itself refuses to read a record's headers beyond 100,000: such a record reads as
/// one without headers.)
pub(super) fn to_incoming(m: &BorrowedMessage<'_>) -> Incoming {
    let mut headers_refused = None;
    let headers = match m.headers() {
        None => Vec::new(),
        Some(h) => {
            let count = h.count();
            headers_refused = HeaderOverflow::of_count(count).or_else(|| {
                let bytes = (0..count)
                    .filter_map(|i| h.try_get(i))
                    .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                    .sum();
                HeaderOverflow::of_bytes(bytes)
            });
            match headers_refused {
                Some(_) => Vec::new(),
                None => h
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
            }
        }
    };
    Incoming {
        headers_refused,
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}
