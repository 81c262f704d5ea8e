//! How each command of a batch ended ([`Outcome`]), and where it came from ([`Source`]).

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::domain::command::{Command, Refusal};
use crate::domain::reply::Reply;

/// Where a command came from; written to the log and to the stored reply.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How one command of a batch ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    /// The reply value.
    pub reply: Arc<Vec<u8>>,
    pub kind: OutcomeKind,
    /// The envelope rule a new 400 enforced.
    pub refused: Option<Refusal>,
    /// Why the command is copied to the dead-letter topic although it was decoded (its
    /// `dlq-reason`): the database kept failing it and it was answered 500. Set by the consumer
    /// on a new outcome only; a decision never sets it.
    pub dead_letter: Option<String>,
    /// The change the command appended to the log, as (event, version), for the change feed:
    /// set when it was applied now, and on a redelivery of a command that was applied (a
    /// duplicate of a stored 200 or 201), whose change is published again.
    pub change: Option<(Uuid, i64)>,
}

/// Whether an outcome was decided now or earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Handled for the first time (applied, or rejected and stored).
    New,
    /// The request id was handled before with the same content: the stored reply.
    Duplicate,
    /// The request id was handled before with other content: a 422, not stored.
    ReusedRequestId,
    /// Authentication or permission failed: a 403, not stored (an unauthenticated producer
    /// must not be able to claim a request id).
    Forbidden,
    /// The record is at or below its partition's applied offset and no stored reply is kept
    /// for it (the retention pruned it): the 409 [`ALREADY_APPLIED`], not applied, not stored.
    AlreadyApplied,
}

/// The start of the `detail` of the 409 a record gets when it is at or below its partition's
/// applied offset and its stored reply is no longer kept (see
/// [`already_applied`](super::already_applied)).
pub const ALREADY_APPLIED: &str = "This record was handled before and its stored reply is no longer kept; it was not applied again.";

/// `cmd`'s answer as an outcome whose reply is not stored with the request id (403, 422; and
/// an error reply the store could not keep).
pub fn unstored(cmd: &Command, status: u16, body: Value, kind: OutcomeKind) -> Outcome {
    let event_uuid = cmd.action.event_uuid();
    let reply = Reply {
        request_id: cmd.request_id.clone(),
        event_uuid,
        status,
        version: None,
        body,
    };
    Outcome {
        status,
        reply: Arc::new(reply.to_bytes()),
        kind,
        refused: None,
        dead_letter: None,
        change: None,
    }
}
