//! Decoding one Kafka record into a command: the pure checks that need no database.
//!
//! First the record's headers must be within their caps ([`MAX_HEADERS`], [`MAX_HEADER_BYTES`]):
//! they are counted and measured where the client library holds them, before anything is copied
//! ([`HeaderOverflow`]), and a record over them is answered 400 and dead-lettered unread (its
//! credentials are among the headers not read). Then the checks run in the REST endpoint's
//! order: credentials first (where authentication is required, a record without a bearer token,
//! or with one that has not the shape of an issued token, is never parsed: its 403 needs no
//! database, and a sender without a real token cannot make the processor parse anything; a
//! well-shaped token is checked by the store, and its command's decoded size is charged to the
//! in-flight budget at its real size, [`Command::retained_bytes`]), then the value must be JSON
//! (DRF's parse error), then the event UUID (404), then the record key (it must be the event's
//! UUID, or per-event order would depend on how a producer spells it: 400), then the envelope
//! fields and the body (400). What is left for the database (403 for a token it does not know,
//! 409, 422, 200/201) is an [`Action::Apply`]. Decoding never fails: every record becomes a
//! [`Command`] with an effective request id and something to answer.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::auth::{self, AuthMode, Credentials};
use crate::domain::reply::{detail, header};
use crate::drf::pyjson;
use crate::drf::validate::{self, ValidBody};

/// Most headers a record may carry. A record with more is refused unread (400, dead-lettered):
/// each header is a heap allocation or two however small it is, so a record of many empty
/// headers would cost far more memory than its bytes.
pub const MAX_HEADERS: usize = 64;
/// Most bytes a record's headers may hold in all (keys and values).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The `reason` of `event_updater_commands_refused_total` for a record over [`MAX_HEADERS`] or
/// [`MAX_HEADER_BYTES`].
pub const HEADERS_TOO_LARGE: &str = "headers_too_large";

/// How a record's headers exceed their caps; the record's headers are then not copied at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOverflow {
    /// More than [`MAX_HEADERS`] headers (how many).
    Count(usize),
    /// More than [`MAX_HEADER_BYTES`] bytes of keys and values (how many).
    Bytes(usize),
}

impl HeaderOverflow {
    /// The overflow of headers numbering `count`, with `bytes` of keys and values; `None`:
    /// within the caps. Check the count first, before measuring: measuring walks every header.
    pub fn of_count(count: usize) -> Option<HeaderOverflow> {
        (count > MAX_HEADERS).then_some(HeaderOverflow::Count(count))
    }

    /// See [`HeaderOverflow::of_count`].
    pub fn of_bytes(bytes: usize) -> Option<HeaderOverflow> {
        (bytes > MAX_HEADER_BYTES).then_some(HeaderOverflow::Bytes(bytes))
    }

    /// The refusal's `detail` (and `dlq-reason`).
    pub fn text(self) -> String {
        match self {
            HeaderOverflow::Count(n) => format!(
                "The record has {n} headers, over the limit of {MAX_HEADERS}; it was not read."
            ),
            HeaderOverflow::Bytes(n) => format!(
                "The record's headers are {n} bytes, over the limit of {MAX_HEADER_BYTES} bytes; it was not read."
            ),
        }
    }
}

/// A record as it came off the command topic.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (producer's create time, or the broker's log-append time).
    pub timestamp_ms: Option<i64>,
    /// Set when the record's headers were over their caps: then `headers` is empty (none was
    /// copied) and the record is refused.
    pub headers_refused: Option<HeaderOverflow>,
}

impl Incoming {
    /// The first header named `name` (case-insensitively), with a value.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && v.is_some())
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A decoded command, ready for the transaction.
#[derive(Debug, Clone)]
pub struct Command {
    /// The idempotency key, within the command's [`scope`](Command::scope): the value's
    /// `request_id`, else the `request-id` header, else [`fallback_request_id`].
    pub request_id: String,
    /// SHA-256 of the command's content, to tell a redelivery from a reused request id.
    pub fingerprint: [u8; 32],
    /// Key of the reply record: the canonical UUID, or the command's own key.
    pub reply_key: Option<Vec<u8>>,
    pub action: Action,
    /// What the `authorization` header says (checked by the store when auth is required).
    pub credentials: Credentials,
    /// Why a copy goes to the dead-letter topic: the record could not be decoded into a
    /// command, or its idempotency key is unusable.
    pub dead_letter: Option<String>,
    /// The envelope rule the command broke, as the `reason` of
    /// `event_updater_commands_refused_total` (`key_mismatch`, `too_large`).
    pub refused: Option<&'static str>,
}

impl Command {
    /// Whether the record was refused for its headers, before they (and its credentials) were
    /// read: it has nothing to authenticate, and is answered 400 and dead-lettered.
    pub fn headers_refused(&self) -> bool {
        self.refused == Some(HEADERS_TOO_LARGE)
    }

    /// About how many heap bytes the decoded command holds beyond its record (the parsed
    /// body's values, the error body, the ids): what the in-flight budget charges for it on
    /// top of the record's bytes. A JSON value of small items is many times its text once
    /// parsed (each number or string a node of its own), so this is measured, not assumed.
    pub fn retained_bytes(&self) -> usize {
        let body = match &self.action {
            Action::Apply { body, .. } => {
                std::mem::size_of::<ValidBody>()
                    + body.action.len()
                    + body.app.len()
                    + [&body.user, &body.context, &body.brand]
                        .into_iter()
                        .flatten()
                        .map(heap_bytes)
                        .sum::<usize>()
            }
            Action::Reject { body, .. } => heap_bytes(body),
        };
        std::mem::size_of::<Command>()
            + self.request_id.len()
            + self.reply_key.as_ref().map_or(0, Vec::len)
            + self.dead_letter.as_ref().map_or(0, String::len)
            + body
    }
}

/// About how many heap bytes `v` holds: a node per value, its text, and per object entry its
/// key and the map's index. Walks iteratively (values nest up to the parser's limit).
pub fn heap_bytes(v: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    // An object entry: its key (a String), its value, and the map's index slot and hash.
    const ENTRY: usize = std::mem::size_of::<String>() + NODE + 2 * std::mem::size_of::<usize>();
    let mut total = NODE;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Null | Value::Bool(_) => {}
            // Numbers keep their text (arbitrary precision).
            Value::Number(n) => total += n.as_str().len(),
            Value::String(s) => total += s.len(),
            Value::Array(a) => {
                total += a.len() * NODE;
                stack.extend(a.iter());
            }
            Value::Object(m) => {
                total += m.len() * ENTRY + m.keys().map(String::len).sum::<usize>();
                stack.extend(m.values());
            }
        }
    }
    total
}

impl Command {
    /// The namespace of the command's request id: the SHA-256 of its bearer token where
    /// authentication is required (so one credential cannot claim or collide with another's
    /// ids, and a redelivery is recognised even after its token was revoked), one empty scope
    /// where it is disabled, and none for a command without a bearer token (it gets a 403 and
    /// nothing is stored for it).
    pub fn scope(&self, auth_mode: AuthMode) -> Option<&[u8]> {
        match (auth_mode, &self.credentials) {
            (AuthMode::Disabled, _) => Some(&[]),
            (AuthMode::Required, Credentials::Bearer(h)) => Some(h),
            (AuthMode::Required, _) => None,
        }
    }
}

/// The request id of a command that names none (neither in its value nor in a `request-id`
/// header): `topic/partition/offset@timestamp`, where the timestamp is the record's (in
/// milliseconds since the epoch; `-1` where the record has none). A redelivery of the record
/// has the same four parts; a record at the same offset of a topic deleted and created again
/// has another timestamp, so it is a new request.
pub fn fallback_request_id(msg: &Incoming) -> String {
    format!(
        "{}/{}/{}@{}",
        msg.topic,
        msg.partition,
        msg.offset,
        msg.timestamp_ms.unwrap_or(-1)
    )
}

/// What the transaction does with a command.
#[derive(Debug, Clone)]
pub enum Action {
    /// A valid body for an event: check `expected_version`, then create or update.
    Apply {
        event_uuid: Uuid,
        expected_version: Option<i64>,
        /// Shared, so that handing a batch's commands to the store copies no body.
        body: std::sync::Arc<ValidBody>,
    },
    /// Answered without touching the event (400, 404); the answer is stored all the same.
    Reject {
        event_uuid: Option<Uuid>,
        status: u16,
        body: Value,
    },
}

impl Action {
    /// The event the command names, where it names a usable one.
    pub fn event_uuid(&self) -> Option<Uuid> {
        match self {
            Action::Apply { event_uuid, .. } => Some(*event_uuid),
            Action::Reject { event_uuid, .. } => *event_uuid,
        }
    }

    /// The event the command would change (only an [`Action::Apply`] changes one).
    pub fn event_uuid_to_apply(&self) -> Option<Uuid> {
        match self {
            Action::Apply { event_uuid, .. } => Some(*event_uuid),
            Action::Reject { .. } => None,
        }
    }
}

/// Decodes `msg`. Values over `max_bytes` are refused without being parsed, and so are values
/// of commands without a bearer token where `auth_mode` requires one.
pub fn decode(msg: &Incoming, max_bytes: usize, auth_mode: AuthMode) -> Command {
    let payload = msg.payload.as_deref().unwrap_or_default();
    // Made only for a command whose value names no usable request id.
    let fallback_id = || header_request_id(msg).unwrap_or_else(|| fallback_request_id(msg));
    if let Some(overflow) = msg.headers_refused {
        // Nothing of the headers was read: no credentials, no request id, no reply-to.
        let text = overflow.text();
        return Command {
            request_id: fallback_request_id(msg),
            fingerprint: Sha256::digest(payload).into(),
            reply_key: echoed_key(msg),
            action: Action::Reject {
                event_uuid: None,
                status: 400,
                body: detail(text.clone()),
            },
            credentials: Credentials::Missing,
            dead_letter: Some(text),
            refused: Some(HEADERS_TOO_LARGE),
        };
    }
    let authorization = msg.header("authorization");
    let credentials = auth::credentials(authorization);
    if auth_mode == AuthMode::Required {
        // A bearer token that has not an issued token's shape is refused here as the store
        // would refuse it (`Token invalid/expired`), unparsed.
        let shaped = authorization.is_some_and(auth::bearer_has_issued_shape);
        if let Some(text) = auth::denial(&credentials, None)
            .filter(|_| !matches!(credentials, Credentials::Bearer(_)) || !shaped)
        {
            // The store answers it with this same 403 before looking at anything else; the
            // value is neither parsed nor hashed.
            return Command {
                request_id: fallback_id(),
                fingerprint: [0; 32],
                reply_key: echoed_key(msg),
                action: Action::Reject {
                    event_uuid: None,
                    status: 403,
                    body: detail(text),
                },
                credentials,
                dead_letter: None,
                refused: None,
            };
        }
    }
    let raw_fingerprint = || Sha256::digest(payload).into();
    let reject = |request_id: String, fingerprint, status, body, event_uuid, dead_letter| Command {
        request_id,
        fingerprint,
        reply_key: match event_uuid {
            Some(u) => Some(canonical_key(u)),
            None => echoed_key(msg),
        },
        action: Action::Reject {
            event_uuid,
            status,
            body,
        },
        credentials: credentials.clone(),
        dead_letter,
        refused: None,
    };

    if payload.len() > max_bytes {
        let text = format!(
            "Command value is {} bytes, over the limit of {max_bytes} bytes.",
            payload.len()
        );
        return Command {
            refused: Some("too_large"),
            ..reject(
                fallback_id(),
                raw_fingerprint(),
                400,
                detail(text.clone()),
                None,
                Some(text),
            )
        };
    }
    let (value, surrogates) = match pyjson::parse_document(payload) {
        Ok(doc) => (doc.value, doc.surrogates),
        Err(e) => {
            let text = format!("JSON parse error - {}", e.message);
            return reject(
                fallback_id(),
                raw_fingerprint(),
                400,
                detail(text.clone()),
                None,
                Some(text),
            );
        }
    };
    let fingerprint = fingerprint(&value);
    let mut obj = match value {
        Value::Object(obj) => obj,
        other => {
            let message = match &other {
                Value::Null => "No data provided".to_string(),
                other => format!(
                    "Invalid data. Expected a dictionary, but got {}.",
                    python_type(other)
                ),
            };
            return reject(
                fallback_id(),
                fingerprint,
                400,
                errors("non_field_errors", vec![message.clone()]),
                None,
                Some(message),
            );
        }
    };

    let (request_id, request_id_errors) = match obj.get("request_id") {
        None | Some(Value::Null) => (fallback_id(), None),
        Some(v) => match validate::validate_request_id_of(v, surrogates) {
            Ok(id) => (id, None),
            Err(messages) => (fallback_id(), Some(messages)),
        },
    };
    let Some(event_uuid) = obj.get("event_uuid").and_then(validate::parse_event_uuid) else {
        return reject(
            request_id,
            fingerprint,
            404,
            detail("Not found."),
            None,
            None,
        );
    };
    if let Some(text) = key_mismatch(msg.key.as_deref(), obj.get("event_uuid"), event_uuid) {
        return Command {
            refused: Some("key_mismatch"),
            ..reject(
                request_id,
                fingerprint,
                400,
                detail(text),
                Some(event_uuid),
                None,
            )
        };
    }
    let mut envelope_errors = Map::new();
    let dead_letter = request_id_errors
        .as_ref()
        .map(|m| format!("request_id: {}", m.join(" ")));
    if let Some(messages) = request_id_errors {
        envelope_errors.insert("request_id".into(), strings(messages));
    }
    let expected_version = match obj.get("expected_version") {
        None | Some(Value::Null) => None,
        Some(v) => match validate::validate_expected_version(v) {
            Ok(n) => Some(n),
            Err(messages) => {
                envelope_errors.insert("expected_version".into(), strings(messages));
                None
            }
        },
    };
    if !envelope_errors.is_empty() {
        return reject(
            request_id,
            fingerprint,
            400,
            Value::Object(envelope_errors),
            Some(event_uuid),
            dead_letter,
        );
    }
    // The body is moved out of the parsed value: its JSON fields are not copied.
    match validate::validate_body_owned(obj.swap_remove("body"), surrogates) {
        Ok(body) => Command {
            request_id,
            fingerprint,
            reply_key: Some(canonical_key(event_uuid)),
            action: Action::Apply {
                event_uuid,
                expected_version,
                body: std::sync::Arc::new(body),
            },
            credentials,
            dead_letter: None,
            refused: None,
        },
        Err(errors) => reject(
            request_id,
            fingerprint,
            400,
            Value::Object(errors),
            Some(event_uuid),
            None,
        ),
    }
}

/// The reply key of a command on `event_uuid`: its canonical form.
fn canonical_key(event_uuid: Uuid) -> Vec<u8> {
    crate::domain::reply::uuid_key(event_uuid)
}

/// The command's own key, as the key of a reply that has no event UUID to carry; a key longer
/// than [`crate::domain::reply::MAX_ECHOED_BYTES`] is not echoed.
fn echoed_key(msg: &Incoming) -> Option<Vec<u8>> {
    msg.key
        .clone()
        .filter(|k| k.len() <= crate::domain::reply::MAX_ECHOED_BYTES)
}

/// Why the record key does not do for a command on `event_uuid` (sent as `sent`); `None`: it is
/// the UUID as sent, or in its canonical form. Partitions are chosen by the key's bytes, so only
/// one spelling per event keeps its commands in one partition, in order.
fn key_mismatch(key: Option<&[u8]>, sent: Option<&Value>, event_uuid: Uuid) -> Option<String> {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let canonical: &str = event_uuid.hyphenated().encode_lower(&mut buf);
    let as_sent = sent.and_then(Value::as_str);
    match key {
        Some(k) if k == canonical.as_bytes() || Some(k) == as_sent.map(str::as_bytes) => None,
        Some(k) => Some(format!(
            "The record key must be the event's UUID (\"{canonical}\"), so that the commands of one event stay in order; it is {:?}.",
            String::from_utf8_lossy(k)
        )),
        None => Some(format!(
            "The record key must be the event's UUID (\"{canonical}\"), so that the commands of one event stay in order; the record has no key."
        )),
    }
}

/// The `request-id` header, when it is a usable id (UTF-8, 1..=200 characters, no NUL).
fn header_request_id(msg: &Incoming) -> Option<String> {
    let raw = msg.header(header::REQUEST_ID)?;
    let s = std::str::from_utf8(raw).ok()?;
    let n = s.chars().count();
    ((1..=200).contains(&n) && !s.contains('\0')).then(|| s.to_string())
}

/// SHA-256 of the value with object keys sorted: two serialisations of one command match.
fn fingerprint(v: &Value) -> [u8; 32] {
    let mut out = Vec::with_capacity(256);
    write_sorted(v, &mut out);
    Sha256::digest(&out).into()
}

/// What [`fingerprint`] hashes: `v` as compact JSON with object keys sorted.
fn write_sorted(v: &Value, out: &mut Vec<u8>) {
    // Serialising a string or a scalar into a Vec cannot fail.
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    write(v, out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(v, out);
                }
                out.push(b']');
            }
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    write(v, out)
}

/// Python's `type(data).__name__` for a parsed JSON value.
fn python_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) => {
            if n.to_string().contains(['.', 'e', 'E']) {
                "float"
            } else {
                "int"
            }
        }
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn strings(messages: Vec<String>) -> Value {
    Value::Array(messages.into_iter().map(Value::String).collect())
}

fn errors(field: &str, messages: Vec<String>) -> Value {
    let mut m = Map::new();
    m.insert(field.into(), strings(messages));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes as a processor without authentication does.
    fn dec(m: &Incoming, max_bytes: usize) -> Command {
        decode(m, max_bytes, AuthMode::Disabled)
    }

    fn msg(payload: &str) -> Incoming {
        Incoming {
            topic: "cmds".into(),
            partition: 2,
            offset: 7,
            key: Some(U.as_bytes().to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            headers: vec![],
            timestamp_ms: None,
            headers_refused: None,
        }
    }

    fn rejected(c: &Command) -> (u16, Value) {
        match &c.action {
            Action::Reject { status, body, .. } => (*status, body.clone()),
            Action::Apply { .. } => panic!("expected a rejection, got {c:?}"),
        }
    }

    const U: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    #[test]
    fn a_valid_command_is_applied() {
        let c = dec(
            &msg(&format!(
                r#"{{"request_id":"r1","event_uuid":"{}","expected_version":3,"body":{{"action":"login","app":"a"}}}}"#,
                U.to_uppercase()
            )),
            1 << 20,
        );
        assert_eq!(c.request_id, "r1");
        assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()));
        match c.action {
            Action::Apply {
                event_uuid,
                expected_version,
                body,
            } => {
                assert_eq!(event_uuid.to_string(), U);
                assert_eq!(expected_version, Some(3));
                assert_eq!(body.action, "login");
            }
            other => panic!("{other:?}"),
        }
        assert!(c.dead_letter.is_none());
    }

    #[test]
    fn not_json_is_a_parse_error_with_pythons_text_and_a_dead_letter() {
        let c = dec(&msg("{nope"), 1 << 20);
        assert_eq!(
            rejected(&c),
            (
                400,
                json!({"detail": "JSON parse error - Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"})
            )
        );
        assert_eq!(c.request_id, "cmds/2/7@-1");
        assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()));
        assert!(c.dead_letter.is_some());
    }

    #[test]
    fn empty_and_missing_values_are_parse_errors() {
        for m in [
            msg(""),
            Incoming {
                payload: None,
                ..msg("")
            },
        ] {
            assert_eq!(
                rejected(&dec(&m, 100)).1,
                json!({"detail": "JSON parse error - Expecting value: line 1 column 1 (char 0)"})
            );
        }
    }

    #[test]
    fn non_object_values_get_drfs_non_field_errors() {
        for (v, t) in [
            ("[]", "list"),
            ("\"x\"", "str"),
            ("1", "int"),
            ("1.5", "float"),
            ("true", "bool"),
        ] {
            assert_eq!(
                rejected(&dec(&msg(v), 100)),
                (
                    400,
                    json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {t}.")]})
                )
            );
        }
        assert_eq!(
            rejected(&dec(&msg("null"), 100)).1,
            json!({"non_field_errors": ["No data provided"]})
        );
    }

    #[test]
    fn oversized_values_are_refused_unparsed() {
        let c = dec(&msg("{\"a\": 1}"), 4);
        assert_eq!(
            rejected(&c),
            (
                400,
                json!({"detail": "Command value is 8 bytes, over the limit of 4 bytes."})
            )
        );
    }

    #[test]
    fn missing_or_bad_uuid_is_404_before_the_body_is_looked_at() {
        for v in [
            r#"{"body": 5}"#,
            r#"{"event_uuid": "nope", "body": 5}"#,
            r#"{"event_uuid": 5, "body": {}}"#,
        ] {
            assert_eq!(
                rejected(&dec(&msg(v), 100)),
                (404, json!({"detail": "Not found."}))
            );
        }
    }

    /// A body nested to the limit (python 3.13 takes it, so DRF answers normally) is decoded,
    /// applied, answered and dropped on a thread with the processor's stack.
    #[test]
    fn a_command_nested_to_the_limit_is_handled_on_the_processors_stack() {
        let thread = std::thread::Builder::new().stack_size(pyjson::STACK_BYTES);
        let t = thread.spawn(|| {
            let n = pyjson::MAX_DEPTH - 2; // the envelope and the body are two levels
            let u = Uuid::new_v4();
            let payload = format!(
                r#"{{"event_uuid": "{u}", "body": {{"action": "login", "app": "a", "user": {}1.5{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            );
            let keyed = |payload: &str| Incoming {
                key: Some(u.to_string().into_bytes()),
                ..msg(payload)
            };
            let cmd = dec(&keyed(&payload), 1 << 20);
            assert!(matches!(cmd.action, Action::Apply { .. }), "{:?}", cmd.dead_letter);
            let (reply, applied) = crate::domain::decide::decide(&cmd, None, chrono::Utc::now());
            assert_eq!(reply.status, 201);
            let text = String::from_utf8(reply.bytes.clone()).unwrap();
            assert!(text.contains(&format!("{}1.5{}", "[".repeat(n), "]".repeat(n))));
            let applied = applied.expect("applied");
            assert_eq!(applied.state.version, 1);
            drop(applied);
            let deeper = payload.replacen('[', "[[", 1);
            let cmd = dec(&keyed(&deeper), 1 << 20);
            assert!(matches!(cmd.action, Action::Reject { status: 400, .. }));
        });
        t.unwrap().join().unwrap();
    }

    #[test]
    fn uuid_forms_name_one_event() {
        for form in [
            U.to_string(),
            U.replace('-', ""),
            format!("{{{U}}}"),
            format!("urn:uuid:{U}"),
        ] {
            let c = dec(
                &msg(&format!(
                    r#"{{"event_uuid":"{form}","body":{{"action":"login","app":"a"}}}}"#
                )),
                1000,
            );
            assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()), "{form}");
        }
    }

    #[test]
    fn request_id_falls_back_to_the_header_then_the_coordinates() {
        let mut m = msg(&format!(r#"{{"event_uuid":"{U}"}}"#));
        assert_eq!(dec(&m, 1000).request_id, "cmds/2/7@-1");
        // The same coordinates in a topic created again: another record, another request.
        m.timestamp_ms = Some(1_796_000_000_000);
        assert_eq!(dec(&m, 1000).request_id, "cmds/2/7@1796000000000");
        m.headers
            .push(("request-id".into(), Some(b"from-header".to_vec())));
        assert_eq!(dec(&m, 1000).request_id, "from-header");
    }

    #[test]
    fn the_record_key_must_be_the_event_uuid_as_sent_or_canonical() {
        let value = |form: &str| {
            format!(r#"{{"event_uuid":"{form}","body":{{"action":"login","app":"a"}}}}"#)
        };
        let keyed = |form: &str, key: Option<&str>| Incoming {
            key: key.map(|k| k.as_bytes().to_vec()),
            ..msg(&value(form))
        };
        let upper = U.to_uppercase();
        let braced = format!("{{{U}}}");
        for (form, key) in [
            (U, U),
            (upper.as_str(), upper.as_str()),
            (&braced, U),
            (&braced, &braced),
        ] {
            let c = dec(&keyed(form, Some(key)), 1000);
            assert!(
                matches!(c.action, Action::Apply { .. }),
                "{form} keyed {key}"
            );
            assert_eq!(c.refused, None);
        }
        for (form, key) in [
            (U, Some(upper.as_str())),
            (upper.as_str(), Some(&braced)),
            (U, Some("other")),
            (U, None),
        ] {
            let c = dec(&keyed(form, key), 1000);
            let (status, body) = rejected(&c);
            assert_eq!(status, 400, "{form} keyed {key:?}");
            let text = body["detail"].as_str().unwrap();
            assert!(
                text.starts_with(&format!(
                    "The record key must be the event's UUID (\"{U}\")"
                )),
                "{text}"
            );
            assert_eq!(c.refused, Some("key_mismatch"));
            // Answered on the event's key, so the reply lands beside the event's others.
            assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()));
        }
        // A bad UUID is a 404 whatever the key.
        assert_eq!(rejected(&dec(&keyed("nope", None), 1000)).0, 404);
    }

    #[test]
    fn without_a_bearer_token_the_value_is_not_parsed_where_auth_is_required() {
        for (header, text) in [
            (None, "Authentication credentials were not provided."),
            (Some("Basic abc"), "Unsupported authentication type"),
            (Some("Bearer"), "Malformed header"),
        ] {
            let mut m = msg("{not json at all");
            m.headers
                .extend(header.map(|h| ("authorization".to_string(), Some(h.as_bytes().to_vec()))));
            let c = decode(&m, 1 << 20, AuthMode::Required);
            assert_eq!(rejected(&c), (403, json!({"detail": text})));
            assert!(
                c.dead_letter.is_none(),
                "an unauthenticated record is not dead-lettered"
            );
            assert_eq!(c.request_id, "cmds/2/7@-1");
            assert_eq!(c.scope(AuthMode::Required), None);
        }
        // A bearer token without the shape of an issued one: the store's 403, unparsed.
        let mut m = msg("{not json at all");
        m.headers
            .push(("authorization".into(), Some(b"Bearer t".to_vec())));
        let c = decode(&m, 1 << 20, AuthMode::Required);
        assert_eq!(
            rejected(&c),
            (403, json!({"detail": "Token invalid/expired"}))
        );
        assert_eq!(c.fingerprint, [0; 32], "not even hashed");
        // Where authentication is off, the header means nothing: decoded as usual.
        assert_eq!(rejected(&decode(&m, 1 << 20, AuthMode::Disabled)).0, 400);
        // A well-shaped token is checked by the store; the value is decoded as usual.
        let token = format!("{}{}", auth::TOKEN_PREFIX, "ab".repeat(32));
        let mut m = msg("{not json at all");
        m.headers.push((
            "authorization".into(),
            Some(format!("Bearer {token}").into_bytes()),
        ));
        let c = decode(&m, 1 << 20, AuthMode::Required);
        assert_eq!(rejected(&c).0, 400);
        assert_eq!(c.scope(AuthMode::Required), Some(&auth::hash(&token)[..]));
        assert_eq!(c.scope(AuthMode::Disabled), Some(&[][..]));
    }

    #[test]
    fn a_record_over_the_header_caps_is_refused_unread_and_dead_lettered() {
        for (overflow, text) in [
            (
                HeaderOverflow::Count(100_000),
                "The record has 100000 headers, over the limit of 64; it was not read.",
            ),
            (
                HeaderOverflow::Bytes(70_000),
                "The record's headers are 70000 bytes, over the limit of 65536 bytes; it was not read.",
            ),
        ] {
            let m = Incoming {
                headers_refused: Some(overflow),
                ..msg(&format!(r#"{{"event_uuid":"{U}","body":{{"action":"login","app":"a"}}}}"#))
            };
            for mode in [AuthMode::Required, AuthMode::Disabled] {
                let c = decode(&m, 1 << 20, mode);
                assert_eq!(rejected(&c), (400, json!({"detail": text})));
                assert_eq!(c.dead_letter.as_deref(), Some(text));
                assert_eq!(c.refused, Some(HEADERS_TOO_LARGE));
                assert!(c.headers_refused());
                assert_eq!(c.request_id, "cmds/2/7@-1");
            }
        }
        assert_eq!(HeaderOverflow::of_count(MAX_HEADERS), None);
        assert_eq!(
            HeaderOverflow::of_count(MAX_HEADERS + 1),
            Some(HeaderOverflow::Count(MAX_HEADERS + 1))
        );
        assert_eq!(HeaderOverflow::of_bytes(MAX_HEADER_BYTES), None);
        assert!(HeaderOverflow::of_bytes(MAX_HEADER_BYTES + 1).is_some());
    }

    #[test]
    fn a_parsed_body_is_charged_at_its_parsed_size_not_its_text() {
        // 200,000 small numbers: 400 KB of text, many MB once parsed.
        let items = vec!["1"; 200_000].join(",");
        let c = dec(
            &msg(&format!(
                r#"{{"event_uuid":"{U}","body":{{"action":"login","app":"a","context":{{"k":[{items}]}}}}}}"#
            )),
            1 << 20,
        );
        assert!(matches!(c.action, Action::Apply { .. }));
        let text = items.len();
        assert!(
            c.retained_bytes() > 200_000 * std::mem::size_of::<Value>(),
            "{} for {text} bytes of text",
            c.retained_bytes()
        );
        // A small command is charged little.
        let small = dec(
            &msg(&format!(
                r#"{{"event_uuid":"{U}","body":{{"action":"login","app":"a"}}}}"#
            )),
            1 << 20,
        );
        assert!(small.retained_bytes() < 2048, "{}", small.retained_bytes());
    }

    #[test]
    fn envelope_errors_are_400s_keyed_by_field() {
        let c = dec(
            &msg(&format!(
                r#"{{"request_id":"","event_uuid":"{U}","expected_version":-1,"body":{{}}}}"#
            )),
            1000,
        );
        let (status, body) = rejected(&c);
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"request_id": ["This field may not be blank."], "expected_version": ["Ensure this value is greater than or equal to 0."]})
        );
        assert_eq!(c.request_id, "cmds/2/7@-1");
    }

    #[test]
    fn body_errors_are_drfs() {
        let c = dec(&msg(&format!(r#"{{"event_uuid":"{U}"}}"#)), 1000);
        assert_eq!(
            rejected(&c),
            (
                400,
                json!({"action": ["This field is required."], "app": ["This field is required."]})
            )
        );
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_content() {
        let a = dec(&msg(r#"{"request_id":"x","event_uuid":"nope"}"#), 1000);
        let b = dec(&msg(r#"{"event_uuid":"nope","request_id":"x"}"#), 1000);
        let c = dec(&msg(r#"{"event_uuid":"nope2","request_id":"x"}"#), 1000);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    /// Stored answers keep their fingerprints across releases: what is hashed is pinned here,
    /// compact JSON with every object's keys sorted, strings escaped as serde_json escapes them.
    #[test]
    fn the_fingerprinted_text_is_compact_json_with_sorted_keys() {
        let v = pyjson::parse_str(
            r#"{"b": 1.50, "a": {"d": "x\u0001\"", "c": [1e5, "é\n", null, true, {}]}, "": []}"#,
        )
        .unwrap();
        let text = r#"{"":[],"a":{"c":[100000.0,"é\n",null,true,{}],"d":"x\u0001\""},"b":1.5}"#;
        let mut written = Vec::new();
        write_sorted(&v, &mut written);
        assert_eq!(String::from_utf8(written).unwrap(), text);
        assert_eq!(fingerprint(&v), <[u8; 32]>::from(Sha256::digest(text)));
    }

    mod fuzz {
        //! Property tests over the decoder and the validator: whatever a producer sends, decoding
        //! returns a command (never a panic), and every rejection has a JSON object body.
        use super::super::*;
        use super::dec;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        fn incoming(payload: Vec<u8>) -> Incoming {
            Incoming {
                topic: "t".into(),
                payload: Some(payload),
                ..Incoming::default()
            }
        }

        fn check(c: &Command) {
            assert!(!c.request_id.is_empty());
            if let Action::Reject { status, body, .. } = &c.action {
                assert!([400, 404].contains(status));
                assert!(body.is_object());
            }
        }

        fn scalar() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "[0-9]{19,60}".prop_map(|d| pyjson::parse(d.as_bytes()).unwrap_or(Value::Null)),
                any::<f64>()
                    .prop_map(|f| pyjson::parse(f.to_string().as_bytes()).unwrap_or(Value::Null)),
                any::<String>().prop_map(Value::String),
                prop::sample::select(vec![
                    "login",
                    "custom_",
                    "LOGIN",
                    " ",
                    "",
                    "::1",
                    "10.0.0.1",
                    "2027-01-01T00:00:00Z",
                    "3fa85f64-5717-4562-b3fc-2c963f66afa6"
                ])
                .prop_map(|s| Value::String(s.into())),
            ]
        }

        fn value() -> impl Strategy<Value = serde_json::Value> {
            scalar().prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((any::<String>(), inner), 0..6)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn field() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "user",
                "action",
                "app",
                "context",
                "client_ip",
                "expires",
                "brand",
                "pk",
                "created",
            ])
            .prop_map(str::to_string)
        }

        fn command() -> impl Strategy<Value = serde_json::Value> {
            (
                prop::option::of(value()),
                prop::option::of(value()),
                prop::option::of(value()),
                prop::collection::vec((field(), value()), 0..9),
            )
                .prop_map(|(rid, uuid, ev, body)| {
                    let mut m = Map::new();
                    if let Some(v) = rid {
                        m.insert("request_id".into(), v);
                    }
                    m.insert(
                        "event_uuid".into(),
                        uuid.unwrap_or_else(|| Value::String(Uuid::new_v4().to_string())),
                    );
                    if let Some(v) = ev {
                        m.insert("expected_version".into(), v);
                    }
                    m.insert("body".into(), Value::Object(body.into_iter().collect()));
                    Value::Object(m)
                })
        }

        proptest! {
            #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

            #[test]
            fn arbitrary_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
                check(&dec(&incoming(bytes), 1 << 20));
            }

            #[test]
            fn arbitrary_commands_decode_without_panic(cmd in command()) {
                check(&dec(&incoming(cmd.to_string().into_bytes()), 1 << 20));
            }

            #[test]
            fn mutated_commands_decode_without_panic(cmd in command(), at in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 1..4)) {
                let mut bytes = cmd.to_string().into_bytes();
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, junk);
                check(&dec(&incoming(bytes), 1 << 20));
            }

            #[test]
            fn serialised_values_parse_back_to_themselves(v in value()) {
                let text = v.to_string();
                prop_assert_eq!(pyjson::parse(text.as_bytes()).ok(), Some(v));
            }
        }
    }
}
