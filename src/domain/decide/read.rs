//! What the database holds that a batch's decisions need, read by the store before the batch is
//! decided ([`StoredState`]).

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::outcome::Source;
use crate::domain::auth::{AuthMode, TokenGrant};
use crate::domain::command::Command;
use crate::domain::projection::EventState;

/// A request id's stored answer.
#[derive(Debug)]
pub struct StoredAnswer {
    /// SHA-256 of the command's content (see [`Command::fingerprint`]).
    pub fingerprint: Vec<u8>,
    pub status: u16,
    pub reply: Arc<Vec<u8>>,
    /// The change the command appended (event, version), where it was applied (200, 201).
    pub change: Option<(Uuid, i64)>,
}

/// What the database knows that a batch's decisions need: the standing of the tokens its
/// commands present, the stored answers of its request ids (by scope, then request id: see
/// [`Command::scope`]), and the current state of its events (an event that is absent does not
/// exist).
#[derive(Debug, Default)]
pub struct StoredState {
    /// By token hash.
    pub grants: HashMap<[u8; 32], TokenGrant>,
    /// By scope, then request id.
    pub handled: HashMap<Vec<u8>, HashMap<String, StoredAnswer>>,
    /// By event.
    pub states: HashMap<Uuid, EventState>,
    /// The highest offset applied, by command topic and partition (absent: none yet).
    pub applied: HashMap<(String, i32), i64>,
}

impl StoredState {
    /// The stored answer of `cmd`'s request id in its scope.
    pub fn handled(&self, cmd: &Command, auth_mode: AuthMode) -> Option<&StoredAnswer> {
        let scope = cmd.scope(auth_mode)?;
        self.handled.get(scope)?.get(&cmd.request_id)
    }

    /// Whether the record at `source` is at or below its partition's applied offset.
    pub fn already_applied(&self, source: &Source) -> bool {
        covering(&self.applied, source).is_some()
    }
}

/// The applied offset of `source`'s partition, where it covers `source` (is at or above it).
fn covering(applied: &HashMap<(String, i32), i64>, source: &Source) -> Option<i64> {
    applied
        .get(&(source.topic.clone(), source.partition))
        .copied()
        .filter(|&a| source.offset <= a)
}
