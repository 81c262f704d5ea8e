//! What `/healthz` and `/readyz` report, written by the processor, its consumer callbacks and
//! the reply producer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::domain::reply::Destination;

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
    /// The reply topic is unusable: records to it kept failing because the broker does not
    /// know it (deleted) or refuses it (an ACL). Its replies are retried until it is usable
    /// again, and that clears this (see `kafka::Publisher`).
    pub reply_topic_unusable: AtomicBool,
    /// The dead-letter topic is unusable (as above): dead letters are dropped (logged and
    /// counted) while commands go on being answered; cleared once the topic is seen again.
    pub dlq_unusable: AtomicBool,
    /// The change feed's changes topic is unusable (deleted, denied, or refusing its records
    /// for good): its records are retried until it takes them, and commands wait (their offsets
    /// are not stored before their changes are acknowledged).
    pub changes_topic_unusable: AtomicBool,
    /// The view topic is unusable (as the changes topic).
    pub view_topic_unusable: AtomicBool,
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
            reply_topic_unusable: AtomicBool::new(false),
            dlq_unusable: AtomicBool::new(false),
            changes_topic_unusable: AtomicBool::new(false),
            view_topic_unusable: AtomicBool::new(false),
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
    /// Live, the database answers, partitions are assigned, the reply producer reaches a
    /// broker, and no topic it publishes to (replies, dead letters, changes, views) is unusable.
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Why the service is not ready, the first reason found (`None`: ready); `/readyz` says it.
    pub fn unready_reason(&self) -> Option<&'static str> {
        if !self.is_live() {
            Some("not live")
        } else if !self.database_ok.load(Ordering::Relaxed) {
            Some("the database does not answer")
        } else if self.assigned_partitions.load(Ordering::Relaxed) == 0 {
            Some("no partition is assigned")
        } else if !self.producer_connected.load(Ordering::Relaxed) {
            Some("the reply producer reaches no broker")
        } else if self.reply_topic_unusable.load(Ordering::Relaxed) {
            Some("the reply topic is unusable (deleted or denied); replies wait for it")
        } else if self.dlq_unusable.load(Ordering::Relaxed) {
            Some("the dead-letter topic is unusable (deleted or denied); dead letters are dropped")
        } else if self.changes_topic_unusable.load(Ordering::Relaxed) {
            Some(
                "the changes topic is unusable (deleted, denied or refusing); changes and \
                commands wait for it",
            )
        } else if self.view_topic_unusable.load(Ordering::Relaxed) {
            Some(
                "the view topic is unusable (deleted, denied or refusing); views and commands \
                wait for it",
            )
        } else {
            None
        }
    }

    /// The flag saying whether `destination`'s topic is unusable.
    pub fn topic_unusable(&self, destination: Destination) -> &AtomicBool {
        match destination {
            Destination::Reply => &self.reply_topic_unusable,
            Destination::DeadLetter => &self.dlq_unusable,
            Destination::Changes => &self.changes_topic_unusable,
            Destination::View => &self.view_topic_unusable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Health {
        let h = Health::default();
        h.migrated.store(true, Ordering::Relaxed);
        h.subscribed.store(true, Ordering::Relaxed);
        h.database_ok.store(true, Ordering::Relaxed);
        h.assigned_partitions.store(3, Ordering::Relaxed);
        h
    }

    #[test]
    fn an_unusable_topic_it_publishes_to_makes_it_unready_but_live() {
        let h = ready();
        assert!(h.is_ready() && h.unready_reason().is_none());
        for (d, says) in [
            (Destination::Reply, "reply topic"),
            (Destination::DeadLetter, "dead-letter topic"),
            (Destination::Changes, "changes topic"),
            (Destination::View, "view topic"),
        ] {
            h.topic_unusable(d).store(true, Ordering::Relaxed);
            assert!(!h.is_ready() && h.is_live());
            assert!(
                h.unready_reason().is_some_and(|r| r.contains(says)),
                "{d:?}"
            );
            h.topic_unusable(d).store(false, Ordering::Relaxed);
            assert!(h.is_ready());
        }
    }
}
