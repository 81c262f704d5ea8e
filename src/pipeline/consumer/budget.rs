//! The in-flight byte budget: what the fetch thread may admit before earlier records are
//! finished, and what a rebalance waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::domain::command::Incoming;

/// The bytes and records fetched but not finished yet (answered and offsets stored, or
/// dropped at shutdown). The fetch thread waits while the budget is spent; the rebalance
/// callback waits until nothing is in flight.
#[derive(Debug)]
pub struct Budget {
    pub(super) limit: usize,
    pub(super) state: Mutex<InFlight>,
    pub(super) changed: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct InFlight {
    pub(super) bytes: usize,
    pub(super) records: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            state: Mutex::new(InFlight::default()),
            changed: Condvar::new(),
        }
    }

    /// Blocks until `bytes` fit (a record larger than the whole budget fits when nothing else
    /// is in flight); false when `stop` turned true first.
    pub(super) fn acquire(&self, bytes: usize, stop: &AtomicBool) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while s.records > 0 && s.bytes + bytes > self.limit {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            s = match self.changed.wait_timeout(s, Duration::from_millis(100)) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        s.bytes += bytes;
        s.records += 1;
        true
    }

    pub(super) fn release(&self, bytes: usize, records: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.bytes = s.bytes.saturating_sub(bytes);
            s.records = s.records.saturating_sub(records);
        }
        self.changed.notify_all();
    }

    /// Blocks until nothing is in flight, or `bound` passed; true when idle.
    pub(super) fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while s.records > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = match self.changed.wait_timeout(s, deadline - now) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        true
    }
}

/// What a record costs against the [`Budget`]: its bytes, a share per header for its copy's
/// allocations, plus a fixed share for what its decoded command holds besides them.
pub(super) fn cost(m: &Incoming) -> usize {
    const OVERHEAD: usize = 1024;
    // A copied header: its (key, value) slot and the two allocations' bookkeeping.
    const PER_HEADER: usize = std::mem::size_of::<(String, Option<Vec<u8>>)>() + 32;
    let headers: usize = m
        .headers
        .iter()
        .map(|(k, v)| PER_HEADER + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    // The value is held as bytes and, decoded, about as much again.
    2 * m.payload.as_ref().map_or(0, Vec::len)
        + m.key.as_ref().map_or(0, Vec::len)
        + headers
        + OVERHEAD
}
