//! The in-flight byte budget: what the fetch thread may admit before earlier records are
//! finished, and what a rebalance waits for.
//!
//! What it counts, so that the bound holds for memory and not only for record bytes:
//! - a record when it is admitted ([`cost`]): its bytes, a share per header for the copy's
//!   allocations (headers beyond their caps are not copied at all), and its value once more
//!   for the decoded command;
//! - the decoded command's real size, when its lane takes it
//!   ([`Command::retained_bytes`](crate::domain::command::Command::retained_bytes), beyond
//!   the value counted at admission; [`Budget::charge`]);
//! - its reply, once decided ([`Budget::charge_replies`], [`REPLY_COPIES`] times: the
//!   outcome and the producer's copy until acknowledged). A lane starts a batch only while the
//!   replies in flight leave room for the batch's estimated replies ([`Budget::reply_room`]),
//!   so replies in flight stay within about the limit plus one batch per lane.
//!
//! Everything is released together when the record is finished.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::domain::command::Incoming;

/// The bytes and records fetched but not finished yet (answered and offsets stored, or
/// dropped at shutdown). While the budget is spent the fetch thread pauses its partitions and
/// polls on; the rebalance callback waits until nothing is in flight.
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
    /// The part of `bytes` charged for replies.
    pub(super) replies: usize,
}

/// How many times a reply's bytes are held while it is in flight: the outcome (shared with the
/// stored reply while the batch is written) and the producer's copy until it is acknowledged.
pub(super) const REPLY_COPIES: usize = 2;

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            state: Mutex::new(InFlight::default()),
            changed: Condvar::new(),
        }
    }

    /// Takes `bytes` if they fit now (a record larger than the whole budget fits when nothing
    /// else is in flight); never blocks, so the fetch thread keeps polling while the budget is
    /// spent.
    pub(super) fn try_acquire(&self, bytes: usize) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if !Self::fits(&s, self.limit, bytes) {
            return false;
        }
        s.bytes += bytes;
        s.records += 1;
        true
    }

    /// Waits until `bytes` would fit, or `bound` passed; true when they fit (nothing is taken).
    pub(super) fn wait_for_room(&self, bytes: usize, bound: Duration) -> bool {
        self.wait_until(bound, |s| Self::fits(s, self.limit, bytes))
    }

    /// Blocks until `done` holds of what is in flight, or `bound` passed; true when it holds.
    fn wait_until(&self, bound: Duration, done: impl Fn(&InFlight) -> bool) -> bool {
        let deadline = Instant::now() + bound;
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        while !done(&s) {
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

    fn fits(s: &InFlight, limit: usize, bytes: usize) -> bool {
        s.records == 0 || s.bytes + bytes <= limit
    }

    /// Adds `bytes` to what is in flight for records already admitted (their decoded size);
    /// never blocks. Released with the records' [`Budget::release`].
    pub(super) fn charge(&self, bytes: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.bytes += bytes;
        }
    }

    /// Adds `bytes` of decided replies to what is in flight (the fetch thread then admits less);
    /// never blocks. Released with [`Budget::release_replies`].
    pub(super) fn charge_replies(&self, bytes: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.bytes += bytes;
            s.replies += bytes;
        }
    }

    pub(super) fn release_replies(&self, bytes: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.bytes = s.bytes.saturating_sub(bytes);
            s.replies = s.replies.saturating_sub(bytes);
        }
        self.changed.notify_all();
    }

    /// Whether a batch whose replies are estimated at `bytes` may start: the replies in flight
    /// leave room for them, or none is in flight (a batch larger than the limit starts alone).
    /// Replies in flight belong to batches already applied, which their ackers finish, so a
    /// lane waiting for room never waits on itself.
    pub(super) fn reply_room(&self, bytes: usize) -> bool {
        self.state
            .lock()
            .map_or(true, |s| s.replies == 0 || s.replies + bytes <= self.limit)
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
        self.wait_until(bound, |s| s.records == 0)
    }
}

/// What a record costs against the [`Budget`] when it is admitted: its bytes, a share per
/// header for its copy's allocations, plus a fixed share for what its decoded command holds
/// besides them (its real decoded size is charged when its lane takes it).
pub(super) fn cost(m: &Incoming) -> usize {
    const OVERHEAD: usize = 1024;
    // A copied header: its (key, value) slot and the two allocations' bookkeeping.
    const PER_HEADER: usize = std::mem::size_of::<(String, Option<Vec<u8>>)>() + 32;
    let headers: usize = m
        .headers
        .iter()
        .map(|(k, v)| PER_HEADER + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    // The value is held as bytes and, decoded, about as much again (more is charged when the
    // decoded command turns out larger).
    2 * m.payload.as_ref().map_or(0, Vec::len)
        + m.key.as_ref().map_or(0, Vec::len)
        + headers
        + OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_in_flight_leave_room_or_wait_for_their_release() {
        let b = Budget::new(1000);
        // Nothing in flight: any batch may start, however large its replies.
        assert!(b.reply_room(5000));
        b.charge_replies(600);
        assert!(b.reply_room(400));
        assert!(!b.reply_room(401));
        // Record bytes (queued commands) do not hold a batch back: only replies do.
        b.charge(10_000);
        assert!(b.reply_room(400));
        b.release_replies(600);
        assert!(b.reply_room(5000));
        let s = b.state.lock().unwrap();
        assert_eq!((s.bytes, s.replies), (10_000, 0));
    }

    #[test]
    fn each_header_is_charged_besides_its_bytes() {
        let bare = Incoming::default();
        let with = |n: usize| Incoming {
            headers: vec![(String::new(), None); n],
            ..Incoming::default()
        };
        assert_eq!(cost(&with(0)), cost(&bare));
        assert!(
            cost(&with(64)) - cost(&bare) >= 64 * std::mem::size_of::<(String, Option<Vec<u8>>)>()
        );
    }
}
