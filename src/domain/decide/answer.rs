//! One new, authenticated command decided against its event's state ([`decide_command`]): its
//! reply, and what it did where it was accepted.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::command::{Action, Command};
use crate::domain::projection::{self, EventState};
use crate::domain::reply::{envelope_bytes, Reply};

/// A reply as decided: its envelope's fields and its record value.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub event_uuid: Option<Uuid>,
    pub status: u16,
    pub version: Option<i64>,
    /// The reply's value ([`Reply::to_bytes`]).
    pub bytes: Vec<u8>,
}

impl Answer {
    pub(super) fn of(reply: Reply) -> Answer {
        Answer {
            bytes: reply.to_bytes(),
            event_uuid: reply.event_uuid,
            status: reply.status,
            version: reply.version,
        }
    }
}

/// Decides a new, authenticated command against its event's current state (`None`: the event
/// does not exist): the reply, and for an accepted command what it did. Pure; the caller writes.
/// An accepted command's reply is written straight from the event
/// ([`projection::Applied::response`]), never built as a `Value`.
pub fn decide_command(
    cmd: &Command,
    current: Option<&EventState>,
    now: DateTime<Utc>,
) -> (Answer, Option<projection::Applied>) {
    let reply = |event_uuid, status, version, body| {
        Answer::of(Reply {
            request_id: cmd.request_id.clone(),
            event_uuid,
            status,
            version,
            body,
        })
    };
    match &cmd.action {
        Action::Reject {
            event_uuid,
            status,
            body,
        } => (reply(*event_uuid, *status, None, body.clone()), None),
        Action::Apply {
            event_uuid,
            expected_version,
            body,
        } => {
            let current_version = current.map_or(0, |s| s.version);
            match expected_version {
                Some(expected) if *expected != current_version => (
                    reply(
                        Some(*event_uuid),
                        409,
                        None,
                        conflict_body(*expected, current_version),
                    ),
                    None,
                ),
                _ => {
                    let mut applied = projection::apply(*event_uuid, current, body, now);
                    let status = if applied.created { 201 } else { 200 };
                    let body = std::mem::take(&mut applied.response);
                    let version = Some(applied.state.version);
                    let bytes = envelope_bytes(
                        &cmd.request_id,
                        Some(*event_uuid),
                        status,
                        version,
                        |out| out.extend_from_slice(&body),
                    );
                    let answer = Answer {
                        event_uuid: Some(*event_uuid),
                        status,
                        version,
                        bytes,
                    };
                    (answer, Some(applied))
                }
            }
        }
    }
}

/// The 409 body: DRF's `detail` plus the version the event is at.
fn conflict_body(expected: i64, current: i64) -> Value {
    let text = if current == 0 {
        format!("Version conflict: expected version {expected}, but the event does not exist.")
    } else if expected == 0 {
        format!(
            "Version conflict: expected the event not to exist, but it is at version {current}."
        )
    } else {
        format!(
            "Version conflict: expected version {expected}, but the event is at version {current}."
        )
    };
    json!({"detail": text, "current_version": current})
}
