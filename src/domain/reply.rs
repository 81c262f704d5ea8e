//! Replies: the envelope every command gets back, and the Kafka records that carry them.
//!
//! A reply's value is serialised once, when the command is first handled, and stored with it;
//! a redelivered command is answered with those stored bytes, so both replies are identical.
//! Headers (`request-id`, the answered record's coordinates, the credential's scope tag, and
//! `correlation-id`/`traceparent` echoed) are set per delivery, so that a redelivered command's
//! reply names the record it answers. Every header name the processor writes is a constant of
//! [`header`], said once.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Names of the record headers the processor reads and writes.
pub mod header {
    /// The request id a reply is filed under (and a command's fallback idempotency key).
    pub const REQUEST_ID: &str = "request-id";
    /// Echoed from a command onto its reply.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// W3C trace context; continued on the reply.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context's vendor part.
    pub const TRACESTATE: &str = "tracestate";
    /// Another reply topic, where the configuration allows it.
    pub const REPLY_TO: &str = "reply-to";
    /// A command's credentials (never copied anywhere).
    pub const AUTHORIZATION: &str = "authorization";
    /// The media type of a command's value.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The encoding of a command's value.
    pub const CONTENT_ENCODING: &str = "content-encoding";
    /// On a reply: the topic of the command record it answers.
    pub const COMMAND_TOPIC: &str = "command-topic";
    /// On a reply: the partition of the command record it answers, in decimal.
    pub const COMMAND_PARTITION: &str = "command-partition";
    /// On a reply: the offset of the command record it answers, in decimal.
    pub const COMMAND_OFFSET: &str = "command-offset";
    /// On a reply to an authenticated command: [`scope_tag`](super::scope_tag) of its token.
    pub const COMMAND_SCOPE: &str = "command-scope";
    /// On a dead letter: what it is, a [`DeadLetterKind`](super::DeadLetterKind).
    pub const DLQ_KIND: &str = "dlq-kind";
    /// On a dead letter: why it is there.
    pub const DLQ_REASON: &str = "dlq-reason";
    /// On a dead letter: the status of the reply the command got (or, for a refused reply, the
    /// status that reply carried).
    pub const DLQ_STATUS: &str = "dlq-status";
    /// On a command's dead letter: the topic the command was read from.
    pub const DLQ_SOURCE_TOPIC: &str = "dlq-source-topic";
    /// On a command's dead letter: its partition, in decimal.
    pub const DLQ_SOURCE_PARTITION: &str = "dlq-source-partition";
    /// On a command's dead letter: its offset, in decimal.
    pub const DLQ_SOURCE_OFFSET: &str = "dlq-source-offset";
    /// On a dead letter the broker refused with its value: the value's length, in decimal (the
    /// dead letter went out with its headers only).
    pub const DLQ_VALUE_DROPPED: &str = "dlq-value-dropped";
    /// On the short error reply that stands in for a reply the broker refused: why.
    pub const REPLY_REFUSED: &str = "reply-refused";
    /// The prefix shared by the `dlq-*` headers (a replayed command carries none of them).
    pub const DLQ_PREFIX: &str = "dlq-";
    /// On a change feed record: the version of its JSON Schema
    /// ([`SCHEMA_VERSION`](crate::domain::feed::SCHEMA_VERSION)).
    pub const SCHEMA_VERSION: &str = "schema-version";
}

/// The command headers a dead letter carries over, compared case-insensitively: nothing else of
/// the command's headers (credentials such as `authorization`, `cookie`, `proxy-authorization`,
/// `x-api-key`, or anything unknown) reaches the dead-letter topic, nor a `dlq-*` header a
/// producer made up.
pub const DEAD_LETTER_COPIED_HEADERS: &[&str] = &[
    header::REQUEST_ID,
    header::CORRELATION_ID,
    header::TRACEPARENT,
    header::TRACESTATE,
    header::REPLY_TO,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
];

/// Whether a command header named `name` is copied onto its dead letter.
pub fn copied_to_dead_letter(name: &str) -> bool {
    DEAD_LETTER_COPIED_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// What a dead letter is, in its `dlq-kind` header: only a [`DeadLetterKind::Command`] may be
/// replayed onto the command topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// A command record the processor could not use, as received.
    Command,
    /// A reply the broker refused (its value is a reply, not a command).
    Reply,
}

impl DeadLetterKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Command => "command",
            DeadLetterKind::Reply => "reply",
        }
    }

    /// The kind a `dlq-kind` header value names, if any.
    pub fn parse(value: &[u8]) -> Option<DeadLetterKind> {
        [DeadLetterKind::Command, DeadLetterKind::Reply]
            .into_iter()
            .find(|k| k.as_str().as_bytes() == value)
    }
}

/// How the `dlq-reason` of a refused reply begins.
pub const REPLY_REFUSED_REASON: &str = "reply refused by the broker";

/// The `command-scope` of a reply: 16 hex digits of SHA-256 over a fixed label and the command's
/// scope (the SHA-256 of its token). A reader holding the token computes the same tag; the tag
/// is neither the token nor the hash `api_tokens` stores, so it reveals neither.
pub fn scope_tag(scope: &[u8]) -> String {
    // Lower-case hex digits only.
    String::from_utf8(scope_tag_bytes(scope).to_vec()).unwrap_or_default()
}

/// [`scope_tag`] as its 16 ASCII bytes. A batch's commands share a few tokens, so the last
/// token's tag is kept per thread and a run of commands with one token hashes it once.
pub fn scope_tag_bytes(scope: &[u8]) -> [u8; SCOPE_TAG_LEN] {
    thread_local! {
        static LAST: std::cell::Cell<Option<([u8; 32], [u8; SCOPE_TAG_LEN])>> =
            const { std::cell::Cell::new(None) };
    }
    let key: Option<[u8; 32]> = scope.try_into().ok();
    if let Some((k, tag)) = LAST.get() {
        if Some(k) == key {
            return tag;
        }
    }
    let digest = Sha256::new()
        .chain_update(b"event-updater command-scope\0")
        .chain_update(scope)
        .finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = [0u8; SCOPE_TAG_LEN];
    for (i, b) in digest[..SCOPE_TAG_LEN / 2].iter().enumerate() {
        tag[2 * i] = HEX[usize::from(b >> 4)];
        tag[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    if let Some(k) = key {
        LAST.set(Some((k, tag)));
    }
    tag
}

/// Length of a [`scope_tag`]: 16 hex digits.
pub const SCOPE_TAG_LEN: usize = 16;

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
        envelope_bytes(
            &self.request_id,
            self.event_uuid,
            self.status,
            self.version,
            |out| {
                // Serialising a `Value` into a Vec cannot fail.
                let _ = serde_json::to_writer(out, &self.body);
            },
        )
    }
}

/// A reply's record value written field by field, in the contract's order (as [`Reply`]'s
/// serialisation writes it), `body` writing the body's JSON: the decision writes an applied
/// command's body straight from the event, without building it as a `Value` first.
pub fn envelope_bytes(
    request_id: &str,
    event_uuid: Option<Uuid>,
    status: u16,
    version: Option<i64>,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(256 + request_id.len());
    out.extend_from_slice(b"{\"request_id\":");
    // Serialising a string into a Vec cannot fail; nor can writing into one.
    let _ = serde_json::to_writer(&mut out, request_id);
    out.extend_from_slice(b",\"event_uuid\":");
    match event_uuid {
        Some(u) => write_uuid(&mut out, u),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"status\":{status}");
    if let Some(v) = version {
        let _ = write!(out, ",\"version\":{v}");
    }
    out.extend_from_slice(b",\"body\":");
    body(&mut out);
    out.push(b'}');
    out
}

/// `u` as a JSON string, in its canonical (hyphenated, lower-case) form.
pub fn write_uuid(out: &mut Vec<u8>, u: Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// `u`'s canonical text (hyphenated, lower-case) as bytes: the key of a reply to a command on
/// an event, and of the event's change and view records.
pub fn uuid_key(u: Uuid) -> Vec<u8> {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    u.hyphenated().encode_lower(&mut buf).as_bytes().to_vec()
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
    /// The change feed's changes topic (`CHANGES_TOPIC`).
    Changes,
    /// The change feed's compacted view topic (`VIEW_TOPIC`).
    View,
}

impl Destination {
    /// Whether records to it belong to the change feed: their order per key must never break,
    /// so none is ever dropped or sent around another (see `pipeline::kafka`).
    pub fn is_feed(self) -> bool {
        matches!(self, Destination::Changes | Destination::View)
    }
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
    fn dead_letters_copy_only_the_allowed_headers_whatever_their_case() {
        for name in [
            "request-id",
            "Correlation-ID",
            "traceparent",
            "tracestate",
            "reply-to",
        ] {
            assert!(copied_to_dead_letter(name), "{name}");
        }
        for name in [
            "authorization",
            "Cookie",
            "proxy-authorization",
            "x-api-key",
            "dlq-kind",
            "dlq-source-topic",
            "x-anything",
        ] {
            assert!(!copied_to_dead_letter(name), "{name}");
        }
    }

    #[test]
    fn dead_letter_kinds_read_back_and_nothing_else_parses() {
        for k in [DeadLetterKind::Command, DeadLetterKind::Reply] {
            assert_eq!(DeadLetterKind::parse(k.as_str().as_bytes()), Some(k));
        }
        assert_eq!(DeadLetterKind::parse(b"Command"), None);
        assert_eq!(DeadLetterKind::parse(b""), None);
    }

    #[test]
    fn a_scope_tag_is_short_stable_and_not_the_stored_hash() {
        let scope = crate::domain::auth::hash("eut_secret");
        let tag = scope_tag(&scope);
        assert_eq!(tag.len(), 16);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(tag, scope_tag(&scope));
        assert_ne!(tag, scope_tag(&crate::domain::auth::hash("eut_other")));
        let stored: String = scope.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!stored.starts_with(&tag));
    }

    mod written {
        //! The envelope written field by field against serde's serialisation of [`Reply`].
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        proptest! {
            #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

            #[test]
            fn an_envelope_is_written_as_serde_writes_it(
                request_id in "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}é]{0,6}",
                event_uuid in proptest::option::of(any::<u128>()),
                status in any::<u16>(),
                version in proptest::option::of(any::<i64>()),
                text in "\\PC{0,8}",
            ) {
                let r = Reply {
                    request_id,
                    event_uuid: event_uuid.map(Uuid::from_u128),
                    status,
                    version,
                    body: detail(text),
                };
                prop_assert_eq!(r.to_bytes(), serde_json::to_vec(&r).unwrap());
            }
        }

        #[test]
        fn a_scope_tag_is_the_same_whether_kept_or_computed() {
            let a = crate::domain::auth::hash("eut_a");
            let b = crate::domain::auth::hash("eut_b");
            let digest = |s: &[u8]| -> String {
                let d = Sha256::new()
                    .chain_update(b"event-updater command-scope\0")
                    .chain_update(s)
                    .finalize();
                d[..8].iter().map(|b| format!("{b:02x}")).collect()
            };
            for s in [
                &a[..],
                &a[..],
                &b[..],
                &a[..],
                &[][..],
                &[7u8; 5][..],
                &b[..],
            ] {
                assert_eq!(scope_tag(s), digest(s));
            }
        }
    }

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
