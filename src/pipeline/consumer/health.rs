//! What `/healthz` and `/readyz` report, written by the processor, its consumer callbacks and
//! the reply producer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What `/healthz` and `/readyz` report; written by the processor and the reply producer.
#[derive(Debug)]
pub struct Health {
    pub migrated: AtomicBool,
    pub subscribed: AtomicBool,
    pub database_ok: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    /// The reply producer reaches a broker (false after "all brokers down", true again once
    /// its statistics show a broker up).
    pub producer_connected: AtomicBool,
    /// The reply producer hit a fatal error (the idempotent producer cannot go on): nothing
    /// more can be answered until the process restarts.
    pub producer_fatal: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            migrated: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            database_ok: AtomicBool::new(false),
            assigned_partitions: AtomicUsize::new(0),
            producer_connected: AtomicBool::new(true),
            producer_fatal: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Migrations ran, the consumer is subscribed, and the reply producer is not broken for
    /// good.
    pub fn is_live(&self) -> bool {
        self.migrated.load(Ordering::Relaxed)
            && self.subscribed.load(Ordering::Relaxed)
            && !self.producer_fatal.load(Ordering::Relaxed)
    }
    /// Live, the database answers, partitions are assigned, and the reply producer reaches a
    /// broker.
    pub fn is_ready(&self) -> bool {
        self.is_live()
            && self.database_ok.load(Ordering::Relaxed)
            && self.assigned_partitions.load(Ordering::Relaxed) > 0
            && self.producer_connected.load(Ordering::Relaxed)
    }
}
