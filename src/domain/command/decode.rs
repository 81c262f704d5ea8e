//! [`decode`]: the checks of a record in the REST endpoint's order, one step each, every step
//! either passing what it read on or answering the record ([`Rejection`]).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::decoded::{Action, Command, Refusal};
use super::fingerprint::fingerprint;
use super::record::{fallback_request_id, Incoming};
use crate::domain::auth::{self, AuthMode, Credentials};
use crate::domain::reply::{detail, header};
use crate::drf::pyjson::{self, DocValue, Document};
use crate::drf::validate;

/// Decodes `msg`. Values over `max_bytes` are refused without being parsed, and so are values
/// of commands without a bearer token where `auth_mode` requires one.
pub fn decode(msg: &Incoming, max_bytes: usize, auth_mode: AuthMode) -> Command {
    let payload = msg.payload.as_deref().unwrap_or_default();
    if let Some(overflow) = msg.headers_refused {
        // Nothing of the headers was read: no credentials, no request id, no reply-to.
        let unread = AnswerKeys {
            msg,
            credentials: Credentials::Missing,
            request_id: Some(fallback_request_id(msg)),
            fingerprint: Sha256::digest(payload).into(),
            event_uuid: None,
        };
        return unread.answer(Rejection {
            refused: Some(Refusal::HeadersTooLarge),
            ..Rejection::not_a_command(overflow.text())
        });
    }
    let mut keys = AnswerKeys {
        msg,
        credentials: auth::credentials(msg.header(header::AUTHORIZATION)),
        request_id: None,
        fingerprint: [0; 32],
        event_uuid: None,
    };
    match checked(&mut keys, payload, max_bytes, auth_mode) {
        Ok(command) => command,
        Err(rejection) => keys.answer(rejection),
    }
}

/// What a record's answer is keyed and filed under, as far as the checks that passed have
/// found: a later check that fails answers under these.
struct AnswerKeys<'a> {
    msg: &'a Incoming,
    credentials: Credentials,
    /// The value's usable `request_id` (`None`: the header's, else [`fallback_request_id`]).
    request_id: Option<String>,
    /// Zero before the value is read; its bytes' hash until it is parsed; then [`fingerprint`].
    fingerprint: [u8; 32],
    /// The event the value names, once it names a usable one.
    event_uuid: Option<Uuid>,
}

impl AnswerKeys<'_> {
    /// The request id: the value's, else the `request-id` header's, else the coordinates.
    fn take_request_id(&mut self) -> String {
        self.request_id.take().unwrap_or_else(|| {
            header_request_id(self.msg).unwrap_or_else(|| fallback_request_id(self.msg))
        })
    }

    /// The command answered with `rejection`, keyed on the event where there is one.
    fn answer(mut self, rejection: Rejection) -> Command {
        Command {
            request_id: self.take_request_id(),
            fingerprint: self.fingerprint,
            reply_key: match self.event_uuid {
                Some(u) => Some(canonical_key(u)),
                None => echoed_key(self.msg),
            },
            action: Action::Reject {
                event_uuid: self.event_uuid,
                status: rejection.status,
                body: rejection.body,
            },
            credentials: self.credentials,
            dead_letter: rejection.dead_letter,
            refused: rejection.refused,
        }
    }
}

/// A record answered by decoding alone (400, 403, 404): the answer, whether it is
/// dead-lettered, and the envelope rule it broke.
struct Rejection {
    status: u16,
    body: Value,
    dead_letter: Option<String>,
    refused: Option<Refusal>,
}

impl Rejection {
    /// `{"detail": text}`, not dead-lettered.
    fn detail(status: u16, text: impl Into<String>) -> Rejection {
        Rejection {
            status,
            body: detail(text),
            dead_letter: None,
            refused: None,
        }
    }

    /// A 400 `{"detail": text}` for a record that is not a command: dead-lettered with `text`.
    fn not_a_command(text: String) -> Rejection {
        Rejection {
            dead_letter: Some(text.clone()),
            ..Rejection::detail(400, text)
        }
    }

    /// A 400 with DRF's error body.
    fn errors(body: Map<String, Value>) -> Rejection {
        Rejection {
            status: 400,
            body: Value::Object(body),
            dead_letter: None,
            refused: None,
        }
    }
}

/// The checks after the header caps, in the REST endpoint's order; `keys` learns what the
/// command is known by as they pass.
fn checked(
    keys: &mut AnswerKeys,
    payload: &[u8],
    max_bytes: usize,
    auth_mode: AuthMode,
) -> Result<Command, Rejection> {
    authenticated(keys.msg, &keys.credentials, auth_mode)?;
    keys.fingerprint = Sha256::digest(payload).into();
    let mut doc = parsed(payload, max_bytes)?;
    keys.fingerprint = fingerprint(&doc.value);
    dictionary(&doc.value)?;
    let (request_id, request_id_errors) = request_id(doc.as_value().get("request_id"));
    keys.request_id = request_id;
    let event_uuid = event_uuid(doc.value.get("event_uuid"))?;
    keys.event_uuid = Some(event_uuid);
    keyed_by_event(keys.msg, doc.value.get("event_uuid"), event_uuid)?;
    let expected_version = envelope(doc.value.get("expected_version"), request_id_errors)?;
    // The body is moved out of the parsed value: its JSON fields are not copied.
    let body = doc
        .value
        .as_object_mut()
        .and_then(|obj| obj.swap_remove("body"));
    let body = body.map(|value| Document {
        value,
        surrogates: doc.surrogates,
    });
    let body = validate::validate_body_owned(body).map_err(Rejection::errors)?;
    Ok(Command {
        request_id: keys.take_request_id(),
        fingerprint: keys.fingerprint,
        reply_key: Some(canonical_key(event_uuid)),
        action: Action::Apply {
            event_uuid,
            expected_version,
            body: std::sync::Arc::new(body),
        },
        credentials: keys.credentials.clone(),
        dead_letter: None,
        refused: None,
    })
}

/// Where authentication is required, a record without a bearer token, or with one that has not
/// an issued token's shape, gets the 403 the store would give it, before anything else (the
/// value is neither parsed nor hashed). A well-shaped token is checked by the store.
fn authenticated(
    msg: &Incoming,
    credentials: &Credentials,
    auth_mode: AuthMode,
) -> Result<(), Rejection> {
    if auth_mode != AuthMode::Required {
        return Ok(());
    }
    let shaped = msg
        .header(header::AUTHORIZATION)
        .is_some_and(auth::bearer_has_issued_shape);
    let well_shaped_bearer = matches!(credentials, Credentials::Bearer(_)) && shaped;
    match auth::denial(credentials, None).filter(|_| !well_shaped_bearer) {
        Some(text) => Err(Rejection::detail(403, text)),
        None => Ok(()),
    }
}

/// The value within `max_bytes` (refused unparsed beyond), parsed as DRF's `JSONParser` parses
/// it (else DRF's parse error); both are dead-lettered.
fn parsed(payload: &[u8], max_bytes: usize) -> Result<Document, Rejection> {
    if payload.len() > max_bytes {
        let text = format!(
            "Command value is {} bytes, over the limit of {max_bytes} bytes.",
            payload.len()
        );
        return Err(Rejection {
            refused: Some(Refusal::TooLarge),
            ..Rejection::not_a_command(text)
        });
    }
    pyjson::parse_document(payload)
        .map_err(|e| Rejection::not_a_command(format!("JSON parse error - {}", e.message)))
}

/// The value must be a dictionary: else DRF's `non_field_errors`, dead-lettered.
fn dictionary(value: &Value) -> Result<(), Rejection> {
    match validate::not_a_dictionary(value) {
        None => Ok(()),
        Some(message) => Err(Rejection {
            dead_letter: Some(message.clone()),
            ..Rejection::errors(validate::non_field_error(message))
        }),
    }
}

/// The value's `request_id` where it is usable, else the messages for it (none where it is
/// absent or null: the command then goes by the header's id or its coordinates).
fn request_id(sent: Option<DocValue>) -> (Option<String>, Option<Vec<String>>) {
    match sent.filter(|v| !v.value.is_null()) {
        None => (None, None),
        Some(v) => match validate::validate_request_id(v) {
            Ok(id) => (Some(id), None),
            Err(messages) => (None, Some(messages)),
        },
    }
}

/// The event the value names: a 404 where it names no usable one (the body is not looked at).
fn event_uuid(sent: Option<&Value>) -> Result<Uuid, Rejection> {
    sent.and_then(validate::parse_event_uuid)
        .ok_or_else(|| Rejection::detail(404, "Not found."))
}

/// The record key must be the event's UUID ([`key_mismatch`]): else a 400.
fn keyed_by_event(msg: &Incoming, sent: Option<&Value>, event_uuid: Uuid) -> Result<(), Rejection> {
    match key_mismatch(msg.key.as_deref(), sent, event_uuid) {
        None => Ok(()),
        Some(text) => Err(Rejection {
            refused: Some(Refusal::KeyMismatch),
            ..Rejection::detail(400, text)
        }),
    }
}

/// The envelope's other fields: `expected_version`, beside the request id's messages found
/// before. Any message is a 400 keyed by field, dead-lettered when the request id is unusable.
fn envelope(
    expected_version: Option<&Value>,
    request_id_errors: Option<Vec<String>>,
) -> Result<Option<i64>, Rejection> {
    let mut errors = Map::new();
    let dead_letter = request_id_errors
        .as_ref()
        .map(|m| format!("request_id: {}", m.join(" ")));
    if let Some(messages) = request_id_errors {
        errors.insert("request_id".into(), strings(messages));
    }
    let expected_version = match expected_version {
        None | Some(Value::Null) => None,
        Some(v) => match validate::validate_expected_version(v) {
            Ok(n) => Some(n),
            Err(messages) => {
                errors.insert("expected_version".into(), strings(messages));
                None
            }
        },
    };
    if errors.is_empty() {
        return Ok(expected_version);
    }
    Err(Rejection {
        dead_letter,
        ..Rejection::errors(errors)
    })
}

fn strings(messages: Vec<String>) -> Value {
    Value::Array(messages.into_iter().map(Value::String).collect())
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
    let what_it_is = match key {
        Some(k) if k == canonical.as_bytes() || Some(k) == as_sent.map(str::as_bytes) => {
            return None
        }
        Some(k) => format!("it is {:?}", String::from_utf8_lossy(k)),
        None => "the record has no key".to_owned(),
    };
    Some(format!(
        "The record key must be the event's UUID (\"{canonical}\"), so that the commands of one \
         event stay in order; {what_it_is}."
    ))
}

/// The `request-id` header, when it is a usable id (UTF-8, 1..=200 characters, no NUL).
fn header_request_id(msg: &Incoming) -> Option<String> {
    let raw = msg.header(header::REQUEST_ID)?;
    let s = std::str::from_utf8(raw).ok()?;
    let n = s.chars().count();
    ((1..=200).contains(&n) && !s.contains('\0')).then(|| s.to_string())
}
