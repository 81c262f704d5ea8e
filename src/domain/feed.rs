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

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::projection::{representation, EventState};
use super::reply::scope_tag;

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
    let mut m = Map::new();
    m.insert("event_uuid".into(), Value::String(c.event_uuid.to_string()));
    m.insert("version".into(), Value::from(c.version));
    m.insert("changes".into(), jsonb_ordered(&c.change));
    m.insert("applied_at".into(), Value::String(timestamp(c.applied_at)));
    m.insert("request_id".into(), Value::String(c.request_id.clone()));
    let scope = match c.scope.as_deref() {
        Some(s) if !s.is_empty() => Value::String(scope_tag(s)),
        _ => Value::Null,
    };
    m.insert("scope".into(), scope);
    let mut command = Map::new();
    command.insert("topic".into(), Value::String(c.topic.clone()));
    command.insert("partition".into(), Value::from(c.partition));
    command.insert("offset".into(), Value::from(c.offset));
    m.insert("command".into(), Value::Object(command));
    // A map of strings, integers and parsed values cannot fail to serialise.
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// The value of a view record: the Event as the REST endpoint renders it (`pk`, `user`,
/// `action`, `app`, `context`, `client_ip`, `created`, `expires`, `brand`), then `version`.
pub fn view_record(s: &EventState) -> Vec<u8> {
    let mut v = representation(s);
    if let Value::Object(m) = &mut v {
        m.insert("version".into(), Value::from(s.version));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The key of both records: the event's canonical UUID.
pub fn key(event_uuid: Uuid) -> Vec<u8> {
    event_uuid.to_string().into_bytes()
}

/// RFC 3339, UTC, microseconds: `2026-12-07T20:31:26.123456Z`.
fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `v` with its top-level keys in `jsonb`'s order (shorter first, then bytewise); nested
/// values are left as they are (already in that order, see the module doc).
fn jsonb_ordered(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drf::pyjson;
    use chrono::TimeZone;

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
