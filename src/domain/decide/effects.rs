//! What a batch writes, decided in memory ([`Effects`]): its rows, one statement's worth.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::outcome::Source;
use crate::domain::projection::EventState;

/// What a batch writes, decided in memory: its log rows, the final view of each event it
/// touched (with the version the batch read it at, which fences the write), and its stored
/// replies. The store writes it in one statement.
#[derive(Debug, Default)]
pub struct Effects {
    pub log: Vec<LogRow>,
    pub views: Vec<ViewRow>,
    pub replies: Vec<StoredReply>,
    /// Per (topic, partition), the batch's highest offset, where it is above the stored one;
    /// sorted by topic and partition.
    pub offsets: Vec<Source>,
}

impl Effects {
    /// How many rows of each kind the batch writes.
    pub fn counts(&self) -> RowCounts {
        RowCounts {
            log: self.log.len(),
            views: self.views.len(),
            replies: self.replies.len(),
        }
    }
}

/// How many rows of each kind a batch writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Log rows (accepted commands).
    pub log: usize,
    /// View rows (events changed).
    pub views: usize,
    /// Stored replies.
    pub replies: usize,
}

/// One accepted command's row of the log.
#[derive(Debug)]
pub struct LogRow {
    pub event_uuid: Uuid,
    pub version: i64,
    pub request_id: String,
    /// The fields the command set.
    pub change: Value,
    pub source: Source,
    /// The command's scope (see [`Command::scope`](crate::domain::command::Command::scope)).
    pub scope: Vec<u8>,
}

/// An event's view after the batch; `read_version` is the version the batch read it at (0: it
/// did not exist).
#[derive(Debug)]
pub struct ViewRow {
    pub state: EventState,
    pub read_version: i64,
}

/// A command's answer, stored under its scope and request id.
#[derive(Debug)]
pub struct StoredReply {
    pub scope: Vec<u8>,
    pub request_id: String,
    pub fingerprint: [u8; 32],
    pub event_uuid: Option<Uuid>,
    pub status: u16,
    pub version: Option<i64>,
    pub reply: Arc<Vec<u8>>,
    pub source: Source,
}
