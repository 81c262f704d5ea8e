//! The batch decision ([`decide_batch`]): every command in order, each against what the batch
//! read and what the earlier ones did ([`Batch::decide_one`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::answer::{decide_command, Answer};
use super::effects::{Effects, LogRow, StoredReply, ViewRow};
use super::outcome::{unstored, Outcome, OutcomeKind, Source, ALREADY_APPLIED};
use super::read::{StoredAnswer, StoredState};
use crate::domain::auth::{self, AuthMode, Credentials, TokenGrant};
use crate::domain::command::{Action, Command, Refusal};
use crate::domain::projection::EventState;
use crate::domain::reply::{detail, Reply};

/// The settings a batch is decided under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub auth_mode: AuthMode,
    /// A command whose reply would be longer is not applied and gets a 400 instead.
    pub max_reply_bytes: usize,
}

/// Decides every command of a batch, in order, against what the database knows; later commands
/// of the batch see the effects of earlier ones. Returns one outcome per command and the rows to
/// write. Pure. The order of checks:
/// 1. a redelivery (same scope, request id and content as a stored answer) gets the stored reply,
///    even when its token has been revoked or has expired since: its change is in the log, and
///    the reply was already given to that credential;
/// 2. authentication and permission (403, not stored), as the REST endpoint checks them first;
/// 3. a request id handled before in the same scope with other content: a 422;
/// 4. a record at or below its partition's applied offset whose reply is no longer stored
///    (read again after the retention pruned it): never applied again, the 409
///    [`ALREADY_APPLIED`] (or its first 400/404 again), not stored ([`already_applied`]);
/// 5. the command itself ([`decide_command`]): 409 against the version the batch has reached, else
///    201/200, or its 400/404;
/// 6. a reply longer than `settings.max_reply_bytes` could not be published: the command is not
///    applied and gets a 400 saying so instead (stored like any other answer).
pub fn decide_batch(
    commands: &[(Command, Source)],
    stored: StoredState,
    settings: BatchSettings,
    now: DateTime<Utc>,
) -> (Vec<Outcome>, Effects) {
    let StoredState {
        grants,
        handled,
        states,
        applied,
    } = stored;
    let mut batch = Batch {
        settings,
        now,
        grants,
        handled,
        states,
        // The applied offsets looked up without copying a topic name per command.
        applied_at: applied
            .iter()
            .map(|((t, p), o)| ((t.as_str(), *p), *o))
            .collect(),
        effects: Effects::default(),
        touched: Vec::new(),
        touched_set: HashSet::new(),
    };
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut highest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for (cmd, source) in commands {
        let top = highest
            .entry((source.topic.as_str(), source.partition))
            .or_insert(source.offset);
        *top = (*top).max(source.offset);
        outcomes.push(batch.decide_one(cmd, source));
    }
    let Batch {
        mut effects,
        applied_at,
        mut states,
        touched,
        ..
    } = batch;
    effects.offsets = highest
        .into_iter()
        .filter(|(key, o)| applied_at.get(key).is_none_or(|a| o > a))
        .map(|((topic, partition), offset)| Source {
            topic: topic.to_string(),
            partition,
            offset,
        })
        .collect();
    for (u, read_version) in touched {
        if let Some(state) = states.remove(&u) {
            effects.views.push(ViewRow {
                state,
                read_version,
            });
        }
    }
    (outcomes, effects)
}

/// A batch being decided: what it read, as the commands decided so far have changed it, and
/// what it writes.
struct Batch<'a> {
    settings: BatchSettings,
    now: DateTime<Utc>,
    grants: HashMap<[u8; 32], TokenGrant>,
    /// The stored answers, by scope then request id, with those of the batch's new commands.
    handled: HashMap<Vec<u8>, HashMap<String, StoredAnswer>>,
    /// The events' states, as the batch has changed them.
    states: HashMap<Uuid, EventState>,
    /// The applied offset by (topic, partition).
    applied_at: HashMap<(&'a str, i32), i64>,
    effects: Effects,
    /// The events the batch changed, in the order it first changed them, each with the version
    /// it was read at (0: absent), the view's write guard.
    touched: Vec<(Uuid, i64)>,
    /// The same events, as a set.
    touched_set: HashSet<Uuid>,
}

impl Batch<'_> {
    /// One command's outcome, in the order of checks of [`decide_batch`]; a new answer is
    /// recorded in the batch's state and effects, for the commands after it.
    fn decide_one(&mut self, cmd: &Command, source: &Source) -> Outcome {
        let auth_mode = self.settings.auth_mode;
        let scope = cmd.scope(auth_mode);
        let stored = scope.and_then(|s| self.handled.get(s)?.get(&cmd.request_id));
        if let Some(h) = stored.filter(|h| h.fingerprint.as_slice() == cmd.fingerprint) {
            return Outcome {
                status: h.status,
                reply: h.reply.clone(),
                kind: OutcomeKind::Duplicate,
                refused: None,
                dead_letter: None,
                change: h.change,
            };
        }
        let stored = stored.is_some();
        // A record refused for its headers was not read, so it has no credentials to check:
        // where it has no scope its 400 is answered unstored (and dead-lettered) rather than
        // turned into a 403 that would hide why.
        if let (true, None, Action::Reject { status, body, .. }) =
            (cmd.headers_refused(), scope, &cmd.action)
        {
            return Outcome {
                refused: cmd.refused,
                ..unstored(cmd, *status, body.clone(), OutcomeKind::New)
            };
        }
        if auth_mode == AuthMode::Required {
            let grant = match &cmd.credentials {
                Credentials::Bearer(h) => self.grants.get(h).copied(),
                _ => None,
            };
            if let Some(text) = auth::denial(&cmd.credentials, grant) {
                return unstored(cmd, 403, detail(text), OutcomeKind::Forbidden);
            }
        }
        // Past the 403, a command has a scope (its token's, or the one scope without auth).
        // (Only a bearer token passes the check where auth is required, so this is a 403 too.)
        let Some(scope) = scope else {
            let text = "Authentication credentials were not provided.";
            return unstored(cmd, 403, detail(text), OutcomeKind::Forbidden);
        };
        if stored {
            let text = format!(
                "request_id {:?} was already used for a different command.",
                cmd.request_id
            );
            return unstored(cmd, 422, detail(text), OutcomeKind::ReusedRequestId);
        }
        let current = cmd
            .action
            .event_uuid_to_apply()
            .and_then(|u| self.states.get(&u));
        if let Some(at) = self
            .applied_at
            .get(&(source.topic.as_str(), source.partition))
            .copied()
            .filter(|&a| source.offset <= a)
        {
            return already_applied(cmd, source, at, current);
        }
        let (mut reply, mut applied) = decide_command(cmd, current, self.now);
        let mut refused = cmd.refused;
        let max_reply_bytes = self.settings.max_reply_bytes;
        if reply.bytes.len() > max_reply_bytes {
            let text = format!(
                "The reply to this command would be {} bytes, over the limit of {} bytes; the \
                 command was not applied.",
                reply.bytes.len(),
                max_reply_bytes
            );
            reply = Answer::of(Reply {
                request_id: cmd.request_id.clone(),
                event_uuid: cmd.action.event_uuid(),
                status: 400,
                version: None,
                body: detail(text),
            });
            applied = None;
            refused = Some(Refusal::ReplyTooLarge);
        }
        let change = applied
            .as_ref()
            .map(|a| (a.state.event_uuid, a.state.version));
        if let Some(applied) = applied {
            let u = applied.state.event_uuid;
            self.effects.log.push(LogRow {
                event_uuid: u,
                version: applied.state.version,
                request_id: cmd.request_id.clone(),
                change: applied.change,
                source: source.clone(),
                scope: scope.to_vec(),
            });
            if self.touched_set.insert(u) {
                // Its first change in the batch: applied to the version read, one above it.
                self.touched.push((u, applied.state.version - 1));
            }
            self.states.insert(u, applied.state);
        }
        let bytes = Arc::new(reply.bytes);
        self.effects.replies.push(StoredReply {
            scope: scope.to_vec(),
            request_id: cmd.request_id.clone(),
            fingerprint: cmd.fingerprint,
            event_uuid: reply.event_uuid,
            status: reply.status,
            version: reply.version,
            reply: bytes.clone(),
            source: source.clone(),
        });
        let answer = StoredAnswer {
            fingerprint: cmd.fingerprint.to_vec(),
            status: reply.status,
            reply: bytes.clone(),
            change,
        };
        // The scope's map exists after its first command: no copy of the scope per command.
        match self.handled.get_mut(scope) {
            Some(ids) => {
                ids.insert(cmd.request_id.clone(), answer);
            }
            None => {
                self.handled
                    .entry(scope.to_vec())
                    .or_default()
                    .insert(cmd.request_id.clone(), answer);
            }
        }
        Outcome {
            status: reply.status,
            reply: bytes,
            kind: OutcomeKind::New,
            refused: refused.filter(|_| reply.status == 400),
            dead_letter: None,
            change,
        }
    }
}

/// The answer to a record at or below its partition's applied offset `applied` whose stored
/// reply is gone, kind [`OutcomeKind::AlreadyApplied`], not stored (it writes nothing, and a
/// later redelivery gets the same answer):
/// - a command to apply: a 409, as for the other commands that are not applied,
///   `{"detail": ALREADY_APPLIED + " Record t/p/o; the partition is applied up to offset N.",
///   "current_version": C}`, `C` the event's version now (0: it does not exist);
/// - a record refused before it reached the log (400, 404): the same answer as the first time
///   (decoding is deterministic), which never changed anything.
pub fn already_applied(
    cmd: &Command,
    source: &Source,
    applied: i64,
    current: Option<&EventState>,
) -> Outcome {
    if let Action::Reject { status, body, .. } = &cmd.action {
        return unstored(cmd, *status, body.clone(), OutcomeKind::AlreadyApplied);
    }
    let text = format!(
        "{ALREADY_APPLIED} Record {}/{}/{}; the partition is applied up to offset {applied}.",
        source.topic, source.partition, source.offset
    );
    let body = json!({"detail": text, "current_version": current.map_or(0, |s| s.version)});
    unstored(cmd, 409, body, OutcomeKind::AlreadyApplied)
}
