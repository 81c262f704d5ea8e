//! The change feed's records, without I/O: what a reader of the changes topic and of the view
//! topic gets for each appended change and each event's current view.
//!
//! A change record is a pure function of one row of the event log ([`LogChange`]): the first
//! publication renders it from the decided change, a redelivery and `feed backfill` render it
//! from the stored row, and both give the same bytes. That holds because the decided change is
//! already in the form `jsonb` gives back (nested values normalised, see
//! [`crate::drf::pyjson::jsonb_normalize`]; a stored row is read back with the same parser), and
//! [`change_record`] orders the top-level fields the `jsonb` way, so that neither the order a
//! command set its fields in nor the way the row was read can change a byte.
//!
//! The view record is the Event as a GET reads it plus its `version`: what a downstream cache
//! keeps per event. It is not required to be byte-stable (a compacted topic keeps the last).

use std::io::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::projection::{write_representation, EventState};
use super::reply::{header, scope_tag_bytes, uuid_key, write_uuid, Destination, Outgoing};
use crate::drf::{isodate, pyjson};

/// The `schema-version` header of both feed records: the version of their JSON Schemas
/// (`docs/schema/change.schema.json`, `docs/schema/view.schema.json`). A reader that does not
/// know a version should stop rather than guess.
pub const SCHEMA_VERSION: &str = "1";

/// One appended change, as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogChange {
    pub event_uuid: Uuid,
    pub version: i64,
    /// The fields the command set, with their new values (on version 1, every field).
    pub change: Value,
    /// When the batch that appended it was written (microseconds, as PostgreSQL keeps it).
    pub applied_at: DateTime<Utc>,
    pub request_id: String,
    /// The command's scope (the SHA-256 of its token; empty where authentication is disabled;
    /// `None` for a change appended before the log recorded scopes).
    pub scope: Option<Vec<u8>>,
    /// The command record that caused it.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The value of a change record: compact JSON, fields in this order:
/// `{"event_uuid", "version", "changes", "applied_at", "request_id", "scope", "command":
/// {"topic", "partition", "offset"}}`. `changes` holds the fields the command set with their
/// new values, ordered the `jsonb` way (shorter names first); `applied_at` is RFC 3339 in UTC
/// with six fraction digits; `scope` is the reply's `command-scope` tag of the command's token,
/// or null where authentication is disabled or the scope was not recorded.
pub fn change_record(c: &LogChange) -> Vec<u8> {
    // Written piece by piece rather than built as a `Value`: the change is not copied, and
    // no number, UUID or time goes through a String of its own.
    let mut out = Vec::with_capacity(320 + c.request_id.len() + c.topic.len());
    let text = |out: &mut Vec<u8>, s: &str| {
        // Serialising a string or a parsed value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"event_uuid\":");
    write_uuid(&mut out, c.event_uuid);
    // Writing into a Vec cannot fail.
    let _ = write!(out, ",\"version\":{}", c.version);
    out.extend_from_slice(b",\"changes\":");
    match &c.change {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| pyjson::jsonb_key_order(a, b));
            out.push(b'{');
            for (n, (k, v)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                text(&mut out, k);
                out.push(b':');
                let _ = serde_json::to_writer(&mut out, v);
            }
            out.push(b'}');
        }
        other => {
            let _ = serde_json::to_writer(&mut out, other);
        }
    }
    out.extend_from_slice(b",\"applied_at\":\"");
    isodate::write_rfc3339_micros(&mut out, c.applied_at);
    out.extend_from_slice(b"\",\"request_id\":");
    text(&mut out, &c.request_id);
    out.extend_from_slice(b",\"scope\":");
    match c.scope.as_deref() {
        Some(s) if !s.is_empty() => {
            out.push(b'"');
            out.extend_from_slice(&scope_tag_bytes(s));
            out.push(b'"');
        }
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"command\":{\"topic\":");
    text(&mut out, &c.topic);
    let _ = write!(
        out,
        ",\"partition\":{},\"offset\":{}}}}}",
        c.partition, c.offset
    );
    out
}

/// The value of a view record: the Event as the REST endpoint renders it (`pk`, `user`,
/// `action`, `app`, `context`, `client_ip`, `created`, `expires`, `brand`), then `version`.
pub fn view_record(s: &EventState) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    write_representation(&mut out, s, None);
    // Writing into a Vec cannot fail.
    let _ = write!(out, ",\"version\":{}}}", s.version);
    out
}

/// A change's record for the changes topic: keyed by its event, [`change_record`], the
/// `schema-version` header and, where given, the `traceparent` of the command being handled.
pub fn change_outgoing(c: &LogChange, traceparent: Option<&str>) -> Outgoing {
    let mut headers = vec![schema_header()];
    if let Some(t) = traceparent {
        headers.push((header::TRACEPARENT.to_string(), t.as_bytes().to_vec()));
    }
    Outgoing {
        destination: Destination::Changes,
        topic: None,
        key: Some(key(c.event_uuid)),
        value: Arc::new(change_record(c)),
        headers,
    }
}

/// An event's record for the view topic: keyed by it, [`view_record`], `schema-version`.
pub fn view_outgoing(s: &EventState) -> Outgoing {
    Outgoing {
        destination: Destination::View,
        topic: None,
        key: Some(key(s.event_uuid)),
        value: Arc::new(view_record(s)),
        headers: vec![schema_header()],
    }
}

fn schema_header() -> (String, Vec<u8>) {
    (
        header::SCHEMA_VERSION.to_string(),
        SCHEMA_VERSION.as_bytes().to_vec(),
    )
}

/// The key of both records: the event's canonical UUID.
pub fn key(event_uuid: Uuid) -> Vec<u8> {
    uuid_key(event_uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::projection::representation;
    use crate::domain::reply::scope_tag;
    use crate::drf::pyjson;
    use chrono::TimeZone;

    mod written {
        //! The records against the forms they had when every number, UUID and time went
        //! through a String of its own and the view through a `Value` (kept as the oracle).
        use super::*;
        use chrono::SecondsFormat;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        fn change_record_by_strings(c: &LogChange) -> Vec<u8> {
            let mut out = Vec::new();
            let text = |out: &mut Vec<u8>, s: &str| {
                let _ = serde_json::to_writer(&mut *out, s);
            };
            out.extend_from_slice(b"{\"event_uuid\":\"");
            out.extend_from_slice(c.event_uuid.to_string().as_bytes());
            out.extend_from_slice(b"\",\"version\":");
            out.extend_from_slice(c.version.to_string().as_bytes());
            out.extend_from_slice(b",\"changes\":");
            match &c.change {
                Value::Object(map) => {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
                    out.push(b'{');
                    for (n, (k, v)) in entries.into_iter().enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        text(&mut out, k);
                        out.push(b':');
                        let _ = serde_json::to_writer(&mut out, v);
                    }
                    out.push(b'}');
                }
                other => {
                    let _ = serde_json::to_writer(&mut out, other);
                }
            }
            out.extend_from_slice(b",\"applied_at\":\"");
            out.extend_from_slice(
                c.applied_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
                    .as_bytes(),
            );
            out.extend_from_slice(b"\",\"request_id\":");
            text(&mut out, &c.request_id);
            out.extend_from_slice(b",\"scope\":");
            match c.scope.as_deref() {
                Some(s) if !s.is_empty() => {
                    out.push(b'"');
                    out.extend_from_slice(scope_tag(s).as_bytes());
                    out.push(b'"');
                }
                _ => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"command\":{\"topic\":");
            text(&mut out, &c.topic);
            out.extend_from_slice(b",\"partition\":");
            out.extend_from_slice(c.partition.to_string().as_bytes());
            out.extend_from_slice(b",\"offset\":");
            out.extend_from_slice(c.offset.to_string().as_bytes());
            out.extend_from_slice(b"}}");
            out
        }

        proptest! {
            #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

            #[test]
            fn records_are_written_as_before(
                uuid in any::<u128>(),
                version in any::<i64>(),
                secs in -60_000_000_000i64..250_000_000_000,
                nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
                request_id in "\\PC{0,10}|[\"\\\\\u{0}-\u{1f}é]{0,4}",
                scope in proptest::option::of(prop_oneof![
                    Just(Vec::new()),
                    Just(vec![7u8; 32]),
                    prop::collection::vec(any::<u8>(), 0..40),
                ]),
                topic in "[a-z.\"\\\\-]{0,12}",
                partition in any::<i32>(),
                offset in any::<i64>(),
            ) {
                let c = LogChange {
                    event_uuid: Uuid::from_u128(uuid),
                    version,
                    change: pyjson::parse_str(r#"{"user": {"pk": 1}, "app": "a\"", "brand": {}, "action": "é"}"#).unwrap(),
                    applied_at: Utc.timestamp_opt(secs, nanos).unwrap(),
                    request_id,
                    scope,
                    topic,
                    partition,
                    offset,
                };
                prop_assert_eq!(change_record(&c), change_record_by_strings(&c));
                prop_assert_eq!(key(c.event_uuid), c.event_uuid.to_string().into_bytes());
                let s = EventState {
                    event_uuid: c.event_uuid,
                    version,
                    user: c.change["user"].clone(),
                    action: c.request_id.clone(),
                    app: c.topic.clone(),
                    context: c.change.clone(),
                    client_ip: c.scope.as_ref().map(|_| "::1.2.3.4".to_string()),
                    created: c.applied_at,
                    expires: Utc.timestamp_opt(secs / 2, nanos / 3).unwrap(),
                    brand: Value::Null,
                };
                let mut v = representation(&s);
                if let Value::Object(m) = &mut v {
                    m.insert("version".into(), Value::from(s.version));
                }
                prop_assert_eq!(view_record(&s), serde_json::to_vec(&v).unwrap());
            }
        }
    }

    fn change(json: &str) -> LogChange {
        LogChange {
            event_uuid: Uuid::parse_str("3e8f6f2c-0000-4000-8000-000000000001").unwrap(),
            version: 3,
            change: pyjson::parse_str(json).unwrap(),
            applied_at: Utc.timestamp_opt(1_796_000_000, 123_456_000).unwrap(),
            request_id: "r-1".into(),
            scope: Some(vec![7; 32]),
            topic: "event-update-commands".into(),
            partition: 2,
            offset: 41,
        }
    }

    #[test]
    fn a_change_record_has_the_documented_fields_in_order() {
        let bytes = change_record(&change(r#"{"app": "x", "action": "login"}"#));
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"event_uuid":"3e8f6f2c-0000-4000-8000-000000000001","version":3,"changes":{{"app":"x","action":"login"}},"applied_at":"2026-11-30T00:53:20.123456Z","request_id":"r-1","scope":"{}","command":{{"topic":"event-update-commands","partition":2,"offset":41}}}}"#,
                scope_tag(&[7; 32])
            )
        );
    }

    #[test]
    fn the_order_fields_were_set_in_does_not_change_a_byte() {
        // As decided (the serializer's order) and as jsonb gives the row back.
        let decided = change(r#"{"user": {"pk": 1}, "action": "a", "app": "b", "brand": {}}"#);
        let stored = change(r#"{"app": "b", "user": {"pk": 1}, "brand": {}, "action": "a"}"#);
        assert_eq!(change_record(&decided), change_record(&stored));
    }

    #[test]
    fn strings_that_need_escaping_stay_valid_json() {
        let mut c = change(r#"{"context": {"a\"b": "\u2028\n"}, "app": "\\"}"#);
        c.request_id = "r\"\u{1}é".into();
        c.topic = "t\\".into();
        let v: Value = serde_json::from_slice(&change_record(&c)).unwrap();
        assert_eq!(v["request_id"], "r\"\u{1}é");
        assert_eq!(v["command"]["topic"], "t\\");
        assert_eq!(v["changes"]["context"]["a\"b"], "\u{2028}\n");
        let keys: Vec<&String> = v["changes"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["app", "context"]);
    }

    #[test]
    fn no_scope_and_an_empty_scope_are_null_and_time_keeps_six_digits() {
        let mut c = change("{}");
        c.applied_at = Utc.timestamp_opt(1_796_000_000, 0).unwrap();
        for scope in [None, Some(Vec::new())] {
            c.scope = scope;
            let v: Value = serde_json::from_slice(&change_record(&c)).unwrap();
            assert_eq!(v["scope"], Value::Null);
            assert_eq!(v["applied_at"], "2026-11-30T00:53:20.000000Z");
        }
    }

    #[test]
    fn a_view_record_is_the_event_as_rendered_plus_its_version() {
        let s = EventState {
            event_uuid: Uuid::parse_str("3e8f6f2c-0000-4000-8000-000000000001").unwrap(),
            version: 4,
            user: pyjson::parse_str(r#"{"pk": 1}"#).unwrap(),
            action: "login".into(),
            app: "authentik".into(),
            context: pyjson::parse_str("{}").unwrap(),
            client_ip: None,
            created: Utc.timestamp_opt(1_796_000_000, 0).unwrap(),
            expires: Utc.timestamp_opt(1_796_000_001, 0).unwrap(),
            brand: pyjson::parse_str("{}").unwrap(),
        };
        let v: Value = serde_json::from_slice(&view_record(&s)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "pk",
                "user",
                "action",
                "app",
                "context",
                "client_ip",
                "created",
                "expires",
                "brand",
                "version"
            ]
        );
        assert_eq!(v["version"], 4);
        assert_eq!(v["pk"], "3e8f6f2c-0000-4000-8000-000000000001");
    }
}
