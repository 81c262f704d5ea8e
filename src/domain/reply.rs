//! Replies: the envelope every command gets back, and the Kafka records that carry them.
//!
//! A reply's value is serialised once, when the command is first handled, and stored with it;
//! a redelivered command is answered with those stored bytes, so both replies are identical.
//! Headers (`request-id`, and `correlation-id`/`traceparent` echoed) are set per delivery.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// The reply envelope of the contract: `{request_id, event_uuid, status, version?, body}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    pub request_id: String,
    /// The canonical event UUID, or null where the command named none that is usable.
    pub event_uuid: Option<Uuid>,
    pub status: u16,
    /// The event's version after the command; present for 200 and 201 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    pub body: Value,
}

impl Reply {
    /// The reply's record value (compact JSON, as DRF's JSONRenderer writes bodies).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, integers and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Longest command key or `correlation-id` that a reply echoes (so that a reply's key and
/// headers stay small beside its value).
pub const MAX_ECHOED_BYTES: usize = 1024;

/// A record to publish: a reply (to the reply topic) or a dead letter (to the DLQ topic).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub destination: Destination,
    /// A topic other than the destination's default (an allowed `reply-to`).
    pub topic: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: std::sync::Arc<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Outgoing {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Where an [`Outgoing`] record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Reply,
    DeadLetter,
}

/// `{"detail": text}`, DRF's shape for 403/404/409/422 and parse errors.
pub fn detail(text: impl Into<String>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("detail".into(), Value::String(text.into()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_fields_in_contract_order_and_version_only_when_set() {
        let r = Reply {
            request_id: "r1".into(),
            event_uuid: Some(Uuid::nil()),
            status: 404,
            version: None,
            body: detail("Not found."),
        };
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            r#"{"request_id":"r1","event_uuid":"00000000-0000-0000-0000-000000000000","status":404,"body":{"detail":"Not found."}}"#
        );
        let r = Reply {
            version: Some(3),
            status: 200,
            event_uuid: None,
            ..r
        };
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            r#"{"request_id":"r1","event_uuid":null,"status":200,"version":3,"body":{"detail":"Not found."}}"#
        );
    }
}
