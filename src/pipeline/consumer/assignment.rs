//! What this member holds of the command topic, as the rebalance callbacks, the fetch thread
//! and the ackers share it: each assigned partition's generation, the offset last stored for it
//! in that generation, and which partitions the fetch thread has paused.
//!
//! Invariants kept here:
//! - Every assignment of a partition gets a generation never given before; it ends when the
//!   partition is revoked (or lost). A record carries the generation it was fetched in, and is
//!   current only while that generation lasts: a record fetched before a revocation is never
//!   applied nor stored after it, even when the same partition has come back (its new
//!   generation re-reads it from the committed offset).
//! - Within a generation the stored offset only moves forward: an offset at or below the one
//!   stored is not stored again. Offsets are handed to librdkafka under the same lock that ends
//!   generations, so an acker cannot store an old generation's offset into a new one.
//! - A partition is paused by the fetch thread at most once, and resumed by it (or on its
//!   revocation) exactly once: librdkafka keeps a partition paused across a revocation and a
//!   later assignment, and a resume of a partition that is not paused would still restart its
//!   fetch from an earlier position.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// A partition of a topic.
pub(super) type Partition = (String, i32);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Assignment {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_generation: u64,
    /// Per topic, per partition (looked up by `&str`, without allocating).
    assigned: HashMap<String, HashMap<i32, Held>>,
    /// Partitions the fetch thread has paused and not resumed yet.
    paused: HashSet<Partition>,
    /// Whether the fetch thread holds records the budget could not take: then every assigned
    /// partition, a newly assigned one too, is to be paused.
    pausing: bool,
}

#[derive(Debug)]
struct Held {
    generation: u64,
    /// The next offset last stored in this generation.
    stored: Option<i64>,
}

impl Assignment {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Partitions assigned: each starts a generation of its own.
    pub(super) fn assign(&self, partitions: impl IntoIterator<Item = Partition>) {
        let mut s = self.lock();
        for (topic, partition) in partitions {
            s.last_generation += 1;
            let generation = s.last_generation;
            s.assigned.entry(topic).or_default().insert(
                partition,
                Held {
                    generation,
                    stored: None,
                },
            );
        }
    }

    /// Partitions revoked (or lost): their generations end, so what was fetched in them is
    /// stale from now on.
    pub(super) fn revoke<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut s = self.lock();
        for (topic, partition) in partitions {
            if let Some(t) = s.assigned.get_mut(topic) {
                t.remove(&partition);
                if t.is_empty() {
                    s.assigned.remove(topic);
                }
            }
        }
    }

    /// The generation `partition` of `topic` is in, if it is assigned.
    pub(super) fn generation(&self, topic: &str, partition: i32) -> Option<u64> {
        self.lock()
            .assigned
            .get(topic)
            .and_then(|t| t.get(&partition))
            .map(|h| h.generation)
    }

    /// Whether a record fetched in `generation` is still current.
    pub(super) fn is_current(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.generation(topic, partition) == Some(generation)
    }

    /// Stores offsets: of `next` (partition, the generation its records were fetched in, the
    /// offset after the last of them), keeps those whose generation is current and whose offset
    /// is beyond the one stored, hands them to `store` while generations cannot end, and
    /// records them as stored. Returns what was handed over.
    pub(super) fn store<E>(
        &self,
        next: impl IntoIterator<Item = (Partition, u64, i64)>,
        store: impl FnOnce(&[(Partition, i64)]) -> Result<(), E>,
    ) -> Result<Vec<(Partition, i64)>, E> {
        let mut s = self.lock();
        let mut out: Vec<(Partition, i64)> = Vec::new();
        for (p, generation, offset) in next {
            let Some(h) = s.assigned.get(&p.0).and_then(|t| t.get(&p.1)) else {
                continue;
            };
            if h.generation != generation || h.stored.is_some_and(|o| o >= offset) {
                continue;
            }
            match out.iter_mut().find(|(q, _)| *q == p) {
                Some((_, o)) => *o = (*o).max(offset),
                None => out.push((p, offset)),
            }
        }
        if out.is_empty() {
            return Ok(out);
        }
        store(&out)?;
        for ((topic, partition), offset) in &out {
            if let Some(h) = s.assigned.get_mut(topic).and_then(|t| t.get_mut(partition)) {
                h.stored = Some(*offset);
            }
        }
        Ok(out)
    }

    /// The fetch thread holds records it could not admit: every assigned partition is to be
    /// paused. Returns those not paused yet (to pause now).
    pub(super) fn pause(&self) -> Vec<Partition> {
        let mut s = self.lock();
        s.pausing = true;
        let new: Vec<Partition> = s
            .assigned
            .iter()
            .flat_map(|(topic, t)| t.keys().map(|p| (topic.clone(), *p)))
            .filter(|p| !s.paused.contains(p))
            .collect();
        s.paused.extend(new.iter().cloned());
        new
    }

    /// Newly assigned partitions while pausing: returns those to pause now (none when the
    /// fetch thread is not pausing).
    pub(super) fn pause_if_pausing(&self) -> Vec<Partition> {
        if self.lock().pausing {
            self.pause()
        } else {
            Vec::new()
        }
    }

    /// The fetch thread admitted everything it held: returns every partition it paused (to
    /// resume now), and pauses nothing more.
    pub(super) fn resume(&self) -> Vec<Partition> {
        let mut s = self.lock();
        s.pausing = false;
        s.paused.drain().collect()
    }

    /// Partitions revoked: those of them that were paused, to resume now that they are
    /// unassigned (so that a later assignment of them is not left paused).
    pub(super) fn unpause_revoked<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<Partition> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for (topic, partition) in partitions {
            let p = (topic.to_string(), partition);
            if s.paused.remove(&p) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("commands".to_string(), n)
    }

    /// Stores through `a` and returns what was handed to the consumer.
    fn store(a: &Assignment, next: &[(Partition, u64, i64)]) -> Vec<(Partition, i64)> {
        let mut handed = Vec::new();
        a.store(next.iter().cloned(), |o| {
            handed = o.to_vec();
            Ok::<(), ()>(())
        })
        .expect("stored");
        handed
    }

    #[test]
    fn a_stored_offset_never_moves_backwards_within_a_generation() {
        let a = Assignment::default();
        a.assign([p(0)]);
        let g = a.generation("commands", 0).expect("assigned");
        assert_eq!(store(&a, &[(p(0), g, 10)]), vec![(p(0), 10)]);
        assert_eq!(store(&a, &[(p(0), g, 7)]), vec![]);
        assert_eq!(store(&a, &[(p(0), g, 10)]), vec![]);
        assert_eq!(store(&a, &[(p(0), g, 12), (p(0), g, 11)]), vec![(p(0), 12)]);
    }

    /// The revocation whose drain timed out with records still queued, and the partition coming
    /// back: the queued records' offsets (fetched in the first generation, up to 40) are not
    /// stored into the second generation, which started again from the committed offset 20.
    #[test]
    fn records_of_an_ended_generation_are_stale_and_never_stored_when_the_partition_comes_back() {
        let a = Assignment::default();
        a.assign([p(0), p(1)]);
        let first = a.generation("commands", 0).expect("assigned");
        assert_eq!(store(&a, &[(p(0), first, 20)]), vec![(p(0), 20)]);
        // Revoked with records up to offset 39 still queued (the drain timed out).
        a.revoke([("commands", 0)]);
        assert!(!a.is_current("commands", 0, first));
        assert_eq!(store(&a, &[(p(0), first, 40)]), vec![]);
        // It comes back: a new generation, re-read from the committed offset 20.
        a.assign([p(0)]);
        let second = a.generation("commands", 0).expect("assigned");
        assert_ne!(first, second);
        assert!(!a.is_current("commands", 0, first));
        assert!(a.is_current("commands", 0, second));
        assert_eq!(store(&a, &[(p(0), first, 40)]), vec![]);
        assert_eq!(store(&a, &[(p(0), second, 21)]), vec![(p(0), 21)]);
        // The other partition was not touched.
        assert!(a.is_current("commands", 1, 2));
    }

    #[test]
    fn nothing_is_stored_when_the_consumer_refuses_and_it_can_be_stored_again() {
        let a = Assignment::default();
        a.assign([p(0)]);
        let g = a.generation("commands", 0).expect("assigned");
        assert!(a.store([(p(0), g, 5)], |_| Err("refused")).is_err());
        assert_eq!(store(&a, &[(p(0), g, 5)]), vec![(p(0), 5)]);
    }

    #[test]
    fn partitions_are_paused_once_resumed_once_and_new_ones_paused_while_pausing() {
        let a = Assignment::default();
        a.assign([p(0), p(1)]);
        assert!(a.pause_if_pausing().is_empty());
        let mut paused = a.pause();
        paused.sort();
        assert_eq!(paused, vec![p(0), p(1)]);
        assert!(a.pause().is_empty(), "already paused");
        a.assign([p(2)]);
        assert_eq!(a.pause_if_pausing(), vec![p(2)]);
        // Revoked while paused: resumed on its way out, and not resumed again later.
        a.revoke([("commands", 1)]);
        assert_eq!(a.unpause_revoked([("commands", 1)]), vec![p(1)]);
        let mut resumed = a.resume();
        resumed.sort();
        assert_eq!(resumed, vec![p(0), p(2)]);
        assert!(a.resume().is_empty());
        a.assign([p(1)]);
        assert!(a.pause_if_pausing().is_empty(), "not pausing any more");
    }
}
