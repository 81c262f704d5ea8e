//! The command consumer: its configuration, and the callbacks that drain what is in flight
//! before partitions leave, start and end assignment generations, and keep paused what the
//! fetch thread has paused ([`set_paused`], which both use).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::{Config, ConfigError, GroupProtocol};
use crate::metrics;
use crate::pipeline::health::Health;
use crate::pipeline::kafka;

use super::assignment::{Assignment, Partition};
use super::Budget;

/// The longest a revocation waits for what is in flight, whatever the consumer's settings.
const DRAIN_BOUND_MAX: Duration = Duration::from_secs(10);
/// The revocation's wait is at most this share of `max.poll.interval.ms` (the group's
/// rebalance timeout under both protocols) and of the classic protocol's session timeout, so
/// that a member whose database is down still finishes its part of a rebalance well in time.
const DRAIN_SHARE_OF_TIMEOUTS: u32 = 3;

/// Consumer callbacks: rebalances drain what is in flight, and are logged, counted and
/// reflected in [`Health`].
#[derive(Debug)]
pub struct ProcessorContext {
    pub(super) health: Arc<Health>,
    pub(super) budget: Arc<Budget>,
    pub(super) drain_bound: Duration,
    pub(super) assignment: Assignment,
}

impl ClientContext for ProcessorContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag per
    /// assigned partition becomes `event_updater_consumer_lag`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; a negative lag means "not known yet".
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::record_consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    /// Before partitions go, waits until every fetched record is finished (runs on the fetch
    /// thread, so nothing new is fetched meanwhile), then commits what is stored, so that the
    /// next owners start after the last answered command.
    ///
    /// Under incremental assignment (the cooperative-sticky assignor, and the consumer
    /// protocol) `tpl` holds only the partitions that leave; the others stay, with their fetch
    /// positions. Waiting for every record in flight covers the leaving partitions' records
    /// (and, needlessly but briefly, the staying ones'), and the commit covers every stored
    /// offset. A lost assignment (this member was fenced, say after a freeze) is not committed:
    /// the group no longer takes this member's commits, and the partitions' new owners answer
    /// what was redelivered from the stored replies.
    ///
    /// The wait is bounded (`drain_bound`) well inside `max.poll.interval.ms` and the session,
    /// so that a member whose database is down does not hold the group's rebalance up. Past the
    /// bound, the leaving partitions' generations end anyway (`Assignment`): their records
    /// still queued are then neither applied nor stored here, and their stored offsets never
    /// move backwards, even when the partitions come back to this member.
    ///
    /// An assignment starts a new generation for each partition, before anything is fetched.
    fn pre_rebalance(&self, consumer: &BaseConsumer<ProcessorContext>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.assignment.assign(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            let drained = self.budget.wait_idle(self.drain_bound);
            self.assignment
                .revoke(tpl.elements().iter().map(|e| (e.topic(), e.partition())));
            if consumer.assignment_lost() {
                tracing::warn!(
                    partitions = tpl.count(),
                    drained,
                    "partitions lost (this member's session expired or it was fenced); not \
                    committing"
                );
                return;
            }
            tracing::info!(partitions = tpl.count(), drained, "partitions revoked");
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
                Err(e) => tracing::info!(error = %e, "commit before revocation failed"),
            }
        }
    }

    /// Partitions assigned while the fetch thread is paused (its budget spent) are paused too;
    /// revoked partitions that were paused are resumed on their way out (librdkafka would keep
    /// them paused into a later assignment).
    fn post_rebalance(&self, consumer: &BaseConsumer<ProcessorContext>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => set_paused(consumer, self.assignment.pause_if_pausing(), true),
            Rebalance::Revoke(tpl) => set_paused(
                consumer,
                self.assignment
                    .unpause_revoked(tpl.elements().iter().map(|e| (e.topic(), e.partition()))),
                false,
            ),
            Rebalance::Error(_) => {}
        }
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.health
            .assigned_partitions
            .store(assigned, Ordering::Relaxed);
        metrics::record_rebalance(assigned);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), assigned, "partitions assigned")
            }
            Rebalance::Revoke(_) => tracing::info!(assigned, "revocation done"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// The command consumer with its context.
pub type CommandConsumer = BaseConsumer<ProcessorContext>;

/// Why the command consumer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The configuration contradicts itself ([`Config::group_settings`]).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused the configuration or could not start the client.
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Creates the consumer: offsets are stored by hand after each batch and auto-committed. The
/// group protocol is `KAFKA_GROUP_PROTOCOL`'s ([`Config::group_settings`]); under `consumer`,
/// the classic-only properties of `KAFKA_PROPERTIES` are left out, each with a warning.
pub fn create_consumer(
    cfg: &Config,
    health: Arc<Health>,
    budget: Arc<Budget>,
) -> Result<CommandConsumer, ConsumerError> {
    /// One fetch response at most (librdkafka still takes a single larger record whole).
    const FETCH_MAX_BYTES: usize = 4 * 1024 * 1024;
    let group = cfg.group_settings()?;
    let prefetch_kib = (cfg.max_in_flight_bytes / 1024).min(8192);
    let mut c = kafka::client_config(cfg);
    for (k, v) in &group.set {
        c.set(*k, *v);
    }
    c.set("group.id", &cfg.kafka_group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // Bound what librdkafka holds: prefetched records (default 64 MiB) and the buffer of
        // one fetch response (default 50 MiB; it still grows to take a single larger record).
        // The processor's own budget (MAX_IN_FLIGHT_BYTES) bounds what is fetched and not yet
        // answered.
        .set("queued.max.messages.kbytes", prefetch_kib.to_string())
        .set("fetch.max.bytes", FETCH_MAX_BYTES.to_string())
        // How long a fetch may wait at the broker for data. Apache Kafka answers as soon as
        // data arrives on any partition of the fetch, so this costs a new command no latency;
        // it bounds how often an idle consumer asks (each ask costs the broker a request), and
        // how long a partition resumed or newly assigned waits for the fetch in flight to
        // return before it is fetched too. (librdkafka's default, 500 ms, would make that wait
        // long; 10 ms, for brokers that hold a fetch the whole time, had an idle consumer ask
        // 100 times a second.) Overridable with KAFKA_PROPERTIES.
        .set("fetch.wait.max.ms", "100");
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    for (property, instead) in &group.left_out {
        c.remove(property);
        tracing::warn!(
            property = %property,
            instead = %instead,
            "KAFKA_PROPERTIES sets a property of the classic group protocol, which the consumer \
            protocol (KAFKA_GROUP_PROTOCOL=consumer) does not take; left out of the consumer"
        );
    }
    // What librdkafka buffers ahead is part of the processor's memory too: the operator's
    // properties may lower these bounds but not raise them past the in-flight budget.
    // (librdkafka wants a fetch to hold at least one record of `message.max.bytes`.)
    let record_max = c
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_000_000);
    for (key, most) in [
        ("queued.max.messages.kbytes", prefetch_kib),
        ("fetch.max.bytes", FETCH_MAX_BYTES.max(record_max)),
    ] {
        let asked = c.get(key).and_then(|v| v.parse::<usize>().ok());
        if asked.is_some_and(|a| a > most) {
            tracing::warn!(
                property = key,
                asked,
                kept = most,
                "KAFKA_PROPERTIES asks for more prefetch than MAX_IN_FLIGHT_BYTES allows; kept \
                within it"
            );
            c.set(key, most.to_string());
        }
    }
    let millis = |key: &str| c.get(key).and_then(|v| v.parse::<u64>().ok());
    let drain_bound = drain_bound(
        cfg.shutdown_timeout,
        millis("max.poll.interval.ms").unwrap_or(DEFAULT_MAX_POLL_INTERVAL_MS),
        // Under the consumer protocol the session is the broker's setting, not known here;
        // `max.poll.interval.ms` (the rebalance timeout) still bounds the wait.
        (cfg.kafka_group_protocol == GroupProtocol::Classic)
            .then(|| millis("session.timeout.ms").unwrap_or(DEFAULT_SESSION_TIMEOUT_MS)),
    );
    Ok(c.create_with_context(ProcessorContext {
        health,
        budget,
        drain_bound,
        assignment: Assignment::default(),
    })?)
}

/// librdkafka's defaults of `max.poll.interval.ms` and `session.timeout.ms`.
const DEFAULT_MAX_POLL_INTERVAL_MS: u64 = 300_000;
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// How long a revocation waits for what is in flight: at most the shutdown timeout,
/// [`DRAIN_BOUND_MAX`], and a [`DRAIN_SHARE_OF_TIMEOUTS`]th of `max.poll.interval.ms` and of the
/// session timeout (when it is the client's).
pub(super) fn drain_bound(
    shutdown: Duration,
    max_poll_interval_ms: u64,
    session_timeout_ms: Option<u64>,
) -> Duration {
    let share = |ms: u64| Duration::from_millis(ms) / DRAIN_SHARE_OF_TIMEOUTS;
    let mut bound = shutdown
        .min(DRAIN_BOUND_MAX)
        .min(share(max_poll_interval_ms));
    if let Some(session) = session_timeout_ms {
        bound = bound.min(share(session));
    }
    bound
}

/// Pauses (or resumes) `partitions` of the consumer's assignment.
pub(super) fn set_paused(consumer: &CommandConsumer, partitions: Vec<Partition>, pause: bool) {
    if partitions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        tpl.add_partition(topic, *partition);
    }
    let done = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match done {
        Ok(()) if pause => {
            tracing::debug!(
                partitions = partitions.len(),
                "in-flight budget spent: partitions paused, polling on"
            )
        }
        Ok(()) => tracing::debug!(partitions = partitions.len(), "partitions resumed"),
        Err(e) => tracing::warn!(error = %e, pause, "could not pause or resume partitions"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CLASSIC_ONLY_PROPERTIES;

    #[test]
    fn the_drain_stays_well_inside_the_poll_interval_and_the_session() {
        let s = Duration::from_secs;
        assert_eq!(drain_bound(s(30), 300_000, Some(45_000)), s(10));
        assert_eq!(drain_bound(s(30), 300_000, None), s(10));
        assert_eq!(drain_bound(s(5), 300_000, None), s(5));
        assert_eq!(drain_bound(s(30), 7_000, Some(6_000)), s(2));
        assert_eq!(drain_bound(s(30), 9_000, None), s(3));
    }

    /// A configuration whose bootstrap address has no broker (a port just freed): creating a
    /// consumer needs none.
    fn offline(protocol: GroupProtocol, properties: &[(&str, &str)]) -> Config {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut c = Config::defaults();
        c.kafka_bootstrap_servers = free.to_string();
        c.kafka_group_protocol = protocol;
        c.kafka_properties = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    fn create(c: &Config) -> Result<CommandConsumer, ConsumerError> {
        create_consumer(
            c,
            Arc::new(Health::default()),
            Arc::new(Budget::new(c.max_in_flight_bytes)),
        )
    }

    /// What the consumer protocol's handling rests on: librdkafka 2.12 refuses to create a
    /// consumer with `group.protocol=consumer` and any classic-only property set, even to its
    /// default value.
    #[test]
    fn librdkafka_refuses_classic_only_properties_under_the_consumer_protocol() {
        let c = offline(GroupProtocol::Consumer, &[]);
        for (property, value) in [
            ("session.timeout.ms", "45000"),
            ("heartbeat.interval.ms", "3000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("group.protocol.type", "consumer"),
        ] {
            assert!(CLASSIC_ONLY_PROPERTIES.iter().any(|(p, _)| *p == property));
            let refused = kafka::client_config(&c)
                .set("group.id", "g")
                .set("group.protocol", "consumer")
                .set(property, value)
                .create::<BaseConsumer>()
                .err()
                .unwrap_or_else(|| {
                    panic!("librdkafka took {property} under the consumer protocol")
                });
            assert!(
                refused
                    .to_string()
                    .contains("not supported for `group.protocol=consumer`"),
                "{property}: {refused}"
            );
        }
    }

    #[test]
    fn the_consumer_protocol_starts_with_classic_properties_in_kafka_properties() {
        let c = offline(
            GroupProtocol::Consumer,
            &[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
                ("partition.assignment.strategy", "range"),
                ("group.protocol.type", "consumer"),
            ],
        );
        create(&c).expect("the classic-only properties are left out");
        create(&offline(GroupProtocol::Consumer, &[])).expect("consumer protocol");
    }

    #[test]
    fn the_classic_protocol_takes_its_session_properties_and_an_operators_assignor() {
        let c = offline(
            GroupProtocol::Classic,
            &[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ],
        );
        create(&c).expect("classic protocol");
        // librdkafka refuses a mix of eager and cooperative assignors: the operator's choice
        // replaces the default rather than joining it.
        let c = offline(
            GroupProtocol::Classic,
            &[("partition.assignment.strategy", "range")],
        );
        create(&c).expect("the operator's assignor");
    }

    #[test]
    fn a_conflicting_group_protocol_property_is_a_configuration_error() {
        let c = offline(GroupProtocol::Classic, &[("group.protocol", "consumer")]);
        assert!(matches!(create(&c), Err(ConsumerError::Config(_))));
    }
}
