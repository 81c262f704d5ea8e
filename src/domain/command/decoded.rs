//! What decoding makes of a record: a [`Command`] with its [`Action`], the [`Refusal`] of one that
//! broke an envelope rule, and the measure of what a decoded command holds ([`heap_bytes`]).

use serde_json::Value;
use uuid::Uuid;

use crate::domain::auth::{AuthMode, Credentials};
use crate::drf::validate::ValidBody;

/// A decoded command, ready for the transaction.
#[derive(Debug, Clone)]
pub struct Command {
    /// The idempotency key, within the command's [`scope`](Command::scope): the value's
    /// `request_id`, else the `request-id` header, else
    /// [`fallback_request_id`](super::fallback_request_id).
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
    /// The envelope rule the command broke (counted by `event_updater_commands_refused_total`).
    pub refused: Option<Refusal>,
}

impl Command {
    /// Whether the record was refused for its headers, before they (and its credentials) were
    /// read: it has nothing to authenticate, and is answered 400 and dead-lettered.
    pub fn headers_refused(&self) -> bool {
        self.refused == Some(Refusal::HeadersTooLarge)
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

/// The envelope rule a command broke, answered with a 400: the `reason` label of
/// `event_updater_commands_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Its record's headers are over [`MAX_HEADERS`](super::MAX_HEADERS) or
    /// [`MAX_HEADER_BYTES`](super::MAX_HEADER_BYTES).
    HeadersTooLarge,
    /// Its value is over the processor's `MAX_MESSAGE_BYTES`.
    TooLarge,
    /// Its record key is not its event's UUID.
    KeyMismatch,
    /// Its reply would be over the processor's `MAX_REPLY_BYTES`.
    ReplyTooLarge,
}

impl Refusal {
    /// Every refusal, in the order above.
    pub const ALL: [Refusal; 4] = [
        Refusal::HeadersTooLarge,
        Refusal::TooLarge,
        Refusal::KeyMismatch,
        Refusal::ReplyTooLarge,
    ];

    /// The metric's label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::TooLarge => "too_large",
            Refusal::KeyMismatch => "key_mismatch",
            Refusal::ReplyTooLarge => "reply_too_large",
        }
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
