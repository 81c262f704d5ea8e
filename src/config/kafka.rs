//! What the configuration means for the Kafka clients, checked before anything connects: the
//! consumer's group protocol settings ([`Config::group_settings`]) and the pass-through
//! properties that would make the reply producer unsafe ([`Config::check_producer_properties`]),
//! both refused as a [`ConfigError`].

use super::settings::Config;
use super::values::GroupProtocol;

/// The librdkafka properties of the classic protocol that the consumer protocol does not take,
/// with where that setting lives under it. librdkafka 2.12 refuses to create a consumer with
/// `group.protocol=consumer` and any of them set (even to its default): "`session.timeout.ms`
/// is not supported for `group.protocol=consumer`. It is defined broker side".
pub const CLASSIC_ONLY_PROPERTIES: [(&str, &str); 4] = [
    (
        "session.timeout.ms",
        "the broker's group.consumer.session.timeout.ms",
    ),
    (
        "heartbeat.interval.ms",
        "the broker's group.consumer.heartbeat.interval.ms",
    ),
    (
        "partition.assignment.strategy",
        "the broker's assignor (group.remote.assignor names one)",
    ),
    (
        "group.protocol.type",
        "nothing: the consumer protocol has no protocol type",
    ),
];

/// What the group protocol makes of the consumer's librdkafka configuration
/// ([`Config::group_settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Set before `KAFKA_PROPERTIES` (which may override all but `group.protocol`).
    pub set: Vec<(&'static str, &'static str)>,
    /// Properties of `KAFKA_PROPERTIES` left out of the consumer, each with where its setting
    /// lives instead (to be logged as a warning).
    pub left_out: Vec<(String, &'static str)>,
}

/// A configuration that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `KAFKA_PROPERTIES` names a group protocol other than `KAFKA_GROUP_PROTOCOL`.
    #[error(
        "KAFKA_PROPERTIES sets group.protocol={asked}, but KAFKA_GROUP_PROTOCOL is {chosen}: \
        choose the group protocol with KAFKA_GROUP_PROTOCOL (--kafka-group-protocol) alone"
    )]
    GroupProtocolConflict {
        /// What `KAFKA_PROPERTIES` asks for.
        asked: String,
        /// What `KAFKA_GROUP_PROTOCOL` says.
        chosen: GroupProtocol,
    },
    /// `KAFKA_PROPERTIES` turns the reply producer's idempotence off.
    #[error(
        "KAFKA_PROPERTIES sets enable.idempotence={0}: the reply producer must be idempotent \
        (a retried reply is never written twice, and the replies of one event stay in order); \
        remove the property"
    )]
    IdempotenceOff(String),
    /// `KAFKA_PROPERTIES` asks for fewer acknowledgements than every in-sync replica's.
    #[error(
        "KAFKA_PROPERTIES sets {key}={value}: a reply counts as delivered (and its command's \
        offset moves on) only once every in-sync replica has it; remove the property or set it to \
        all"
    )]
    AcksNotAll {
        /// `acks` or its alias `request.required.acks`.
        key: String,
        /// What it asks for.
        value: String,
    },
    /// `KAFKA_PROPERTIES` allows more requests in flight than the idempotent producer keeps in
    /// order.
    #[error("KAFKA_PROPERTIES sets {key}={value}: the idempotent producer keeps records in order \
        with at most {max} requests in flight per connection; remove the property or set 1 to \
        {max}", max = MAX_IN_FLIGHT_IDEMPOTENT)]
    TooManyInFlight {
        /// `max.in.flight.requests.per.connection` or its alias `max.in.flight`.
        key: String,
        /// What it asks for.
        value: String,
    },
}

/// The most requests in flight per connection with which librdkafka's idempotent producer
/// keeps a partition's records in order.
pub const MAX_IN_FLIGHT_IDEMPOTENT: i64 = 5;

/// librdkafka's reading of a boolean property as true (`true`, `t` or `1`).
fn librdkafka_true(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("t") || v == "1"
}

impl Config {
    /// Refuses pass-through properties that would make the reply producer unsafe: idempotence
    /// off (`enable.idempotence`), fewer acknowledgements than all in-sync replicas (`acks`,
    /// alias `request.required.acks`, other than `all` or `-1`), or more than
    /// [`MAX_IN_FLIGHT_IDEMPOTENT`] requests in flight (`max.in.flight.requests.per.connection`,
    /// alias `max.in.flight`). Checked at start, before anything connects.
    pub fn check_producer_properties(&self) -> Result<(), ConfigError> {
        for (k, v) in &self.kafka_properties {
            match k.as_str() {
                "enable.idempotence" if !librdkafka_true(v) => {
                    return Err(ConfigError::IdempotenceOff(v.clone()))
                }
                "acks" | "request.required.acks"
                    if !(v.trim().eq_ignore_ascii_case("all") || v.trim() == "-1") =>
                {
                    return Err(ConfigError::AcksNotAll {
                        key: k.clone(),
                        value: v.clone(),
                    })
                }
                "max.in.flight.requests.per.connection" | "max.in.flight"
                    if !v
                        .trim()
                        .parse::<i64>()
                        .is_ok_and(|n| (1..=MAX_IN_FLIGHT_IDEMPOTENT).contains(&n)) =>
                {
                    return Err(ConfigError::TooManyInFlight {
                        key: k.clone(),
                        value: v.clone(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The consumer's group protocol settings: `classic` sets `group.protocol=classic` and the
    /// cooperative-sticky assignor (`KAFKA_PROPERTIES` may name another assignor, and set the
    /// session timeout and heartbeat interval); `consumer` sets `group.protocol=consumer`, and
    /// the [`CLASSIC_ONLY_PROPERTIES`] in `KAFKA_PROPERTIES` are left out of the consumer (they
    /// still reach the producer and admin clients, which ignore them), so that one set of
    /// properties serves either protocol. A `group.protocol` in `KAFKA_PROPERTIES` other than
    /// `KAFKA_GROUP_PROTOCOL` is an error.
    pub fn group_settings(&self) -> Result<GroupSettings, ConfigError> {
        let chosen = self.kafka_group_protocol;
        if let Some((_, asked)) = self
            .kafka_properties
            .iter()
            .find(|(k, v)| k == "group.protocol" && !v.trim().eq_ignore_ascii_case(chosen.as_str()))
        {
            return Err(ConfigError::GroupProtocolConflict {
                asked: asked.clone(),
                chosen,
            });
        }
        Ok(match chosen {
            GroupProtocol::Classic => GroupSettings {
                set: vec![
                    ("group.protocol", "classic"),
                    ("partition.assignment.strategy", "cooperative-sticky"),
                ],
                left_out: Vec::new(),
            },
            GroupProtocol::Consumer => GroupSettings {
                set: vec![("group.protocol", "consumer")],
                left_out: self
                    .kafka_properties
                    .iter()
                    .filter_map(|(k, _)| {
                        CLASSIC_ONLY_PROPERTIES
                            .iter()
                            .find(|(name, _)| name == k)
                            .map(|(_, instead)| (k.clone(), *instead))
                    })
                    .collect(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_properties(protocol: GroupProtocol, properties: &[(&str, &str)]) -> Config {
        let mut c = Config::defaults();
        c.kafka_group_protocol = protocol;
        c.kafka_properties = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    #[test]
    fn classic_sets_the_cooperative_assignor_and_keeps_the_session_properties() {
        let c = with_properties(
            GroupProtocol::Classic,
            &[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ],
        );
        let s = c.group_settings().unwrap();
        assert_eq!(
            s.set,
            [
                ("group.protocol", "classic"),
                ("partition.assignment.strategy", "cooperative-sticky")
            ]
        );
        assert!(s.left_out.is_empty());
    }

    #[test]
    fn consumer_leaves_the_classic_only_properties_out_and_says_where_they_live() {
        let c = with_properties(
            GroupProtocol::Consumer,
            &[
                ("session.timeout.ms", "6000"),
                ("security.protocol", "SSL"),
                ("heartbeat.interval.ms", "500"),
                ("partition.assignment.strategy", "range"),
                ("group.protocol.type", "consumer"),
                ("group.protocol", "consumer"),
            ],
        );
        let s = c.group_settings().unwrap();
        assert_eq!(s.set, [("group.protocol", "consumer")]);
        let left_out: Vec<&str> = s.left_out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            left_out,
            [
                "session.timeout.ms",
                "heartbeat.interval.ms",
                "partition.assignment.strategy",
                "group.protocol.type"
            ]
        );
        assert!(s.left_out[0]
            .1
            .contains("group.consumer.session.timeout.ms"));
    }

    #[test]
    fn a_group_protocol_property_other_than_the_option_is_refused() {
        let c = with_properties(GroupProtocol::Classic, &[("group.protocol", "consumer")]);
        let e = c.group_settings().unwrap_err();
        assert_eq!(
            e,
            ConfigError::GroupProtocolConflict {
                asked: "consumer".into(),
                chosen: GroupProtocol::Classic
            }
        );
        assert!(e.to_string().contains("KAFKA_GROUP_PROTOCOL"), "{e}");
        let c = with_properties(GroupProtocol::Consumer, &[("group.protocol", "classic")]);
        assert!(c.group_settings().is_err());
        let c = with_properties(GroupProtocol::Classic, &[("group.protocol", "Classic")]);
        assert!(c.group_settings().is_ok());
    }

    #[test]
    fn properties_that_make_the_reply_producer_unsafe_are_refused() {
        let props = |p: &[(&str, &str)]| with_properties(GroupProtocol::Consumer, p);
        for ok in [
            vec![],
            vec![("enable.idempotence", "true"), ("acks", "all")],
            vec![("acks", "-1"), ("request.required.acks", "all")],
            vec![("max.in.flight.requests.per.connection", "5")],
            vec![("max.in.flight", "1"), ("enable.idempotence", "1")],
        ] {
            assert_eq!(props(&ok).check_producer_properties(), Ok(()), "{ok:?}");
        }
        assert_eq!(
            props(&[("enable.idempotence", "false")]).check_producer_properties(),
            Err(ConfigError::IdempotenceOff("false".into()))
        );
        for (k, v) in [("acks", "1"), ("acks", "0"), ("request.required.acks", "1")] {
            let e = props(&[(k, v)]).check_producer_properties().unwrap_err();
            assert_eq!(
                e,
                ConfigError::AcksNotAll {
                    key: k.into(),
                    value: v.into()
                }
            );
            assert!(e.to_string().contains(&format!("{k}={v}")), "{e}");
        }
        for (k, v) in [
            ("max.in.flight.requests.per.connection", "6"),
            ("max.in.flight", "1000000"),
            ("max.in.flight", "many"),
        ] {
            assert!(matches!(
                props(&[(k, v)]).check_producer_properties(),
                Err(ConfigError::TooManyInFlight { .. })
            ));
        }
    }
}
