//! The batch decision, pure: given a batch's commands and what the database knows of them (the
//! grants of their tokens, the stored answers of their request ids, the current state of their
//! events), the outcome of every command and the rows to write ([`Effects`]). No I/O: the
//! store loads [`Known`], calls [`decide_batch`] and writes the [`Effects`]; the benchmark calls
//! the same function.
//!
//! Invariants the store relies on:
//! - Commands are decided in the order given, each seeing the effects of earlier ones, so
//!   per-partition order holds.
//! - A record at or below its partition's applied offset ([`Known::applied`]) is never applied
//!   again: it gets its stored reply when one is kept, else the 409 [`ALREADY_APPLIED`] (not
//!   stored). [`Effects::offsets`] carries, per partition, the batch's highest offset where it is
//!   above the stored one, so the store raises it in the same write as the batch's rows.
//! - Every new outcome except 403 and 422 has exactly one stored reply; a redelivery is answered
//!   with those bytes.
//! - An event touched by the batch has one view row, with the version it was read at (0: absent).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::auth::{self, AuthMode, Credentials, TokenGrant};
use crate::domain::command::{Action, Command};
use crate::domain::projection::{self, EventState};
use crate::domain::reply::{detail, envelope_bytes, Reply};

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
    /// The envelope rule a new 400 enforced (`key_mismatch`, `too_large`, `reply_too_large`).
    pub refused: Option<&'static str>,
    /// Why the command is copied to the dead-letter topic although it was decoded (its
    /// `dlq-reason`): the database kept failing it and it was answered 500. Set by the consumer
    /// on a new outcome only; a decision never sets it.
    pub dead_letter: Option<String>,
    /// The change the command appended to the log, as (event, version), for the change feed:
    /// set when it was applied now, and on a redelivery of a command that was applied (a
    /// duplicate of a stored 200 or 201), whose change is published again.
    pub change: Option<(Uuid, i64)>,
}

/// The settings a batch is decided under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub auth_mode: AuthMode,
    /// A command whose reply would be longer is not applied and gets a 400 instead.
    pub max_reply_bytes: usize,
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
/// applied offset and its stored reply is no longer kept (see [`already_applied`]).
pub const ALREADY_APPLIED: &str = "This record was handled before and its stored reply is no longer kept; it was not applied again.";

/// A request id's stored answer.
#[derive(Debug)]
pub struct Handled {
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
pub struct Known {
    /// By token hash.
    pub grants: HashMap<[u8; 32], TokenGrant>,
    /// By scope, then request id.
    pub handled: HashMap<Vec<u8>, HashMap<String, Handled>>,
    /// By event.
    pub states: HashMap<Uuid, EventState>,
    /// The highest offset applied, by command topic and partition (absent: none yet).
    pub applied: HashMap<(String, i32), i64>,
}

impl Known {
    /// The stored answer of `cmd`'s request id in its scope.
    pub fn handled(&self, cmd: &Command, auth_mode: AuthMode) -> Option<&Handled> {
        let scope = cmd.scope(auth_mode)?;
        self.handled.get(scope)?.get(&cmd.request_id)
    }

    /// Whether the record at `source` is at or below its partition's applied offset.
    pub fn already_applied(&self, source: &Source) -> bool {
        covering(&self.applied, source).is_some()
    }
}

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
    /// (log rows, view rows, stored replies).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.log.len(), self.views.len(), self.replies.len())
    }
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
    /// The command's scope (see [`Command::scope`]).
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
/// 5. the command itself ([`decide`]): 409 against the version the batch has reached, else
///    201/200, or its 400/404;
/// 6. a reply longer than `rules.max_reply_bytes` could not be published: the command is not
///    applied and gets a 400 saying so instead (stored like any other answer).
pub fn decide_batch(
    commands: &[(Command, Source)],
    known: Known,
    rules: Rules,
    now: DateTime<Utc>,
) -> (Vec<Outcome>, Effects) {
    let auth_mode = rules.auth_mode;
    let Known {
        grants,
        mut handled,
        mut states,
        applied,
    } = known;

    // The applied offsets looked up without copying a topic name per command.
    let applied_at: HashMap<(&str, i32), i64> = applied
        .iter()
        .map(|((t, p), o)| ((t.as_str(), *p), *o))
        .collect();
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut effects = Effects::default();
    // The events the batch changed, in the order it first changed them, each with the version
    // it was read at (0: absent), the view's write guard (and the events as a set).
    let mut touched: Vec<(Uuid, i64)> = Vec::new();
    let mut touched_set: HashSet<Uuid> = HashSet::new();
    let mut highest: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
    for (cmd, source) in commands {
        let top = highest
            .entry((source.topic.as_str(), source.partition))
            .or_insert(source.offset);
        *top = (*top).max(source.offset);
        let scope = cmd.scope(auth_mode);
        let stored = scope.and_then(|s| handled.get(s)?.get(&cmd.request_id));
        if let Some(h) = stored.filter(|h| h.fingerprint.as_slice() == cmd.fingerprint) {
            outcomes.push(Outcome {
                status: h.status,
                reply: h.reply.clone(),
                kind: OutcomeKind::Duplicate,
                refused: None,
                dead_letter: None,
                change: h.change,
            });
            continue;
        }
        // A record refused for its headers was not read, so it has no credentials to check:
        // where it has no scope its 400 is answered unstored (and dead-lettered) rather than
        // turned into a 403 that would hide why.
        if let (true, None, Action::Reject { status, body, .. }) =
            (cmd.headers_refused(), scope, &cmd.action)
        {
            outcomes.push(Outcome {
                refused: cmd.refused,
                ..unstored(cmd, *status, body.clone(), OutcomeKind::New)
            });
            continue;
        }
        if auth_mode == AuthMode::Required {
            let grant = match &cmd.credentials {
                Credentials::Bearer(h) => grants.get(h).copied(),
                _ => None,
            };
            if let Some(text) = auth::denial(&cmd.credentials, grant) {
                outcomes.push(unstored(cmd, 403, detail(text), OutcomeKind::Forbidden));
                continue;
            }
        }
        // Past the 403, a command has a scope (its token's, or the one scope without auth).
        // (Only a bearer token passes the check where auth is required, so this is a 403 too.)
        let Some(scope) = scope else {
            let text = "Authentication credentials were not provided.";
            outcomes.push(unstored(cmd, 403, detail(text), OutcomeKind::Forbidden));
            continue;
        };
        if stored.is_some() {
            let text = format!(
                "request_id {:?} was already used for a different command.",
                cmd.request_id
            );
            outcomes.push(unstored(
                cmd,
                422,
                detail(text),
                OutcomeKind::ReusedRequestId,
            ));
            continue;
        }
        if let Some(at) = applied_at
            .get(&(source.topic.as_str(), source.partition))
            .copied()
            .filter(|&a| source.offset <= a)
        {
            let current = cmd
                .action
                .event_uuid_to_apply()
                .and_then(|u| states.get(&u));
            outcomes.push(already_applied(cmd, source, at, current));
            continue;
        }
        let current = cmd
            .action
            .event_uuid_to_apply()
            .and_then(|u| states.get(&u));
        let (mut reply, mut applied) = decide(cmd, current, now);
        let mut refused = cmd.refused;
        if reply.bytes.len() > rules.max_reply_bytes {
            let text = format!(
                "The reply to this command would be {} bytes, over the limit of {} bytes; the command was not applied.",
                reply.bytes.len(),
                rules.max_reply_bytes
            );
            reply = Answer::of(Reply {
                request_id: cmd.request_id.clone(),
                event_uuid: cmd.action.event_uuid(),
                status: 400,
                version: None,
                body: detail(text),
            });
            applied = None;
            refused = Some("reply_too_large");
        }
        let bytes = reply.bytes;
        let change = applied
            .as_ref()
            .map(|a| (a.state.event_uuid, a.state.version));
        if let Some(applied) = applied {
            let u = applied.state.event_uuid;
            effects.log.push(LogRow {
                event_uuid: u,
                version: applied.state.version,
                request_id: cmd.request_id.clone(),
                change: applied.change,
                source: source.clone(),
                scope: scope.to_vec(),
            });
            if touched_set.insert(u) {
                // Its first change in the batch: applied to the version read, one above it.
                touched.push((u, applied.state.version - 1));
            }
            states.insert(u, applied.state);
        }
        let bytes = Arc::new(bytes);
        effects.replies.push(StoredReply {
            scope: scope.to_vec(),
            request_id: cmd.request_id.clone(),
            fingerprint: cmd.fingerprint,
            event_uuid: reply.event_uuid,
            status: reply.status,
            version: reply.version,
            reply: bytes.clone(),
            source: source.clone(),
        });
        let answer = Handled {
            fingerprint: cmd.fingerprint.to_vec(),
            status: reply.status,
            reply: bytes.clone(),
            change,
        };
        // The scope's map exists after its first command: no copy of the scope per command.
        match handled.get_mut(scope) {
            Some(ids) => {
                ids.insert(cmd.request_id.clone(), answer);
            }
            None => {
                handled
                    .entry(scope.to_vec())
                    .or_default()
                    .insert(cmd.request_id.clone(), answer);
            }
        }
        outcomes.push(Outcome {
            status: reply.status,
            reply: bytes,
            kind: OutcomeKind::New,
            refused: refused.filter(|_| reply.status == 400),
            dead_letter: None,
            change,
        });
    }
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
    fn of(reply: Reply) -> Answer {
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
pub fn decide(
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

/// The applied offset of `source`'s partition, where it covers `source` (is at or above it).
fn covering(applied: &HashMap<(String, i32), i64>, source: &Source) -> Option<i64> {
    applied
        .get(&(source.topic.clone(), source.partition))
        .copied()
        .filter(|&a| source.offset <= a)
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

#[cfg(test)]
mod tests {
    //! The order of checks in [`decide_batch`]: a redelivery in its scope gets its stored reply,
    //! then 403 (never stored), then a request id handled before in the scope with other content
    //! (422), then the command itself (409 against the version the batch has reached, else
    //! 201/200); later commands of a batch see the effects of earlier ones.
    use super::*;
    use crate::domain::command::{decode, Incoming};
    use serde_json::json;

    const U: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

    fn command(value: Value, token: Option<&str>) -> (Command, Source) {
        let headers = token
            .map(|t| {
                vec![(
                    "authorization".to_string(),
                    Some(format!("Bearer {t}").into_bytes()),
                )]
            })
            .unwrap_or_default();
        let m = Incoming {
            topic: "cmds".into(),
            key: value["event_uuid"].as_str().map(|u| u.as_bytes().to_vec()),
            payload: Some(value.to_string().into_bytes()),
            headers,
            ..Incoming::default()
        };
        (decode(&m, 1 << 20, AuthMode::Disabled), Source::default())
    }

    fn update(id: &str, expected: Option<i64>, token: Option<&str>) -> (Command, Source) {
        let mut v = json!({"request_id": id, "event_uuid": U,
                           "body": {"action": "login", "app": "a"}});
        if let Some(e) = expected {
            v["expected_version"] = json!(e);
        }
        command(v, token)
    }

    fn statuses(outcomes: &[Outcome]) -> Vec<(u16, OutcomeKind)> {
        outcomes.iter().map(|o| (o.status, o.kind)).collect()
    }

    fn body(o: &Outcome) -> Value {
        serde_json::from_slice::<Value>(&o.reply).unwrap()["body"].clone()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    /// (version read at, version written) of each view row.
    fn views(e: &Effects) -> Vec<(i64, i64)> {
        e.views
            .iter()
            .map(|v| (v.read_version, v.state.version))
            .collect()
    }

    fn log_versions(e: &Effects) -> Vec<i64> {
        e.log.iter().map(|l| l.version).collect()
    }

    fn rules(auth_mode: AuthMode) -> Rules {
        Rules {
            auth_mode,
            max_reply_bytes: 1_000_000,
        }
    }

    #[test]
    fn forbidden_comes_first_and_is_not_stored() {
        let mut known = Known::default();
        known.grants.insert(
            auth::hash("revoked"),
            TokenGrant {
                usable: false,
                can_change_event: true,
            },
        );
        known.grants.insert(
            auth::hash("read-only"),
            TokenGrant {
                usable: true,
                can_change_event: false,
            },
        );
        // A request id handled before for another credential does not help one without any.
        known.handled.entry(vec![]).or_default().insert(
            "r1".into(),
            Handled {
                fingerprint: update("r1", None, None).0.fingerprint.to_vec(),
                status: 201,
                reply: Arc::new(b"{}".to_vec()),
                change: None,
            },
        );
        let commands = [
            update("r1", None, None),
            update("r2", None, Some("unknown")),
            update("r3", None, Some("revoked")),
            update("r4", None, Some("read-only")),
        ];
        let (outcomes, effects) = decide_batch(&commands, known, rules(AuthMode::Required), now());
        assert!(outcomes
            .iter()
            .all(|o| (o.status, o.kind) == (403, OutcomeKind::Forbidden)));
        let texts: Vec<Value> = outcomes.iter().map(|o| body(o)["detail"].clone()).collect();
        assert_eq!(
            texts,
            [
                "Authentication credentials were not provided.",
                "Token invalid/expired",
                "Token invalid/expired",
                "You do not have permission to perform this action."
            ]
        );
        assert_eq!(effects.counts(), (0, 0, 0));
    }

    #[test]
    fn a_request_id_seen_before_gets_its_stored_reply_or_a_422() {
        let first = update("r1", None, None);
        let mut known = Known::default();
        known.handled.entry(vec![]).or_default().insert(
            "r1".into(),
            Handled {
                fingerprint: first.0.fingerprint.to_vec(),
                status: 201,
                reply: Arc::new(b"stored bytes".to_vec()),
                change: None,
            },
        );
        let reused = command(
            json!({"request_id": "r1", "event_uuid": U, "body": {"action": "logout", "app": "a"}}),
            None,
        );
        let (outcomes, effects) =
            decide_batch(&[first, reused], known, rules(AuthMode::Disabled), now());
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::Duplicate),
                (422, OutcomeKind::ReusedRequestId)
            ]
        );
        assert_eq!(outcomes[0].reply.as_slice(), b"stored bytes");
        assert_eq!(effects.counts(), (0, 0, 0));
    }

    #[test]
    fn request_ids_are_scoped_by_credential_and_outlive_its_revocation() {
        let mut known = Known::default();
        for (token, usable) in [("alice", true), ("bob", true), ("revoked", false)] {
            known.grants.insert(
                auth::hash(token),
                TokenGrant {
                    usable,
                    can_change_event: true,
                },
            );
        }
        // `revoked` applied r1 just before a crash, then its token was revoked.
        let applied = update("r1", None, Some("revoked"));
        known
            .handled
            .entry(auth::hash("revoked").to_vec())
            .or_default()
            .insert(
                "r1".into(),
                Handled {
                    fingerprint: applied.0.fingerprint.to_vec(),
                    status: 201,
                    reply: Arc::new(b"stored for revoked".to_vec()),
                    change: None,
                },
            );
        let commands = [
            // The redelivery: its stored reply, although the token no longer works.
            applied,
            // The same id with other content from the revoked token: a 403, not a 422.
            update("r1", Some(5), Some("revoked")),
            // The same id from other credentials: other requests, applied.
            update("r1", None, Some("alice")),
            update("r1", None, Some("bob")),
            // Within alice's scope the id is now taken.
            update("r1", Some(9), Some("alice")),
            update("r1", None, Some("alice")),
        ];
        let (outcomes, effects) = decide_batch(&commands, known, rules(AuthMode::Required), now());
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::Duplicate),
                (403, OutcomeKind::Forbidden),
                (201, OutcomeKind::New),
                (200, OutcomeKind::New),
                (422, OutcomeKind::ReusedRequestId),
                (201, OutcomeKind::Duplicate)
            ]
        );
        assert_eq!(outcomes[0].reply.as_slice(), b"stored for revoked");
        assert_eq!(outcomes[5].reply, outcomes[2].reply);
        let scopes: Vec<&[u8]> = effects.replies.iter().map(|r| r.scope.as_slice()).collect();
        assert_eq!(scopes, [&auth::hash("alice")[..], &auth::hash("bob")[..]]);
    }

    #[test]
    fn later_commands_see_earlier_ones_and_versions_follow_on() {
        let commands = [
            update("r1", Some(0), None),
            update("r2", Some(1), None),
            update("r3", Some(1), None),
            update("r2", Some(1), None),
            update("r4", None, None),
        ];
        let (outcomes, effects) = decide_batch(
            &commands,
            Known::default(),
            rules(AuthMode::Disabled),
            now(),
        );
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::New),
                (200, OutcomeKind::New),
                (409, OutcomeKind::New),
                (200, OutcomeKind::Duplicate),
                (200, OutcomeKind::New)
            ]
        );
        assert_eq!(body(&outcomes[2])["current_version"], json!(2));
        // Three changes, one view row (read at version 0: a create), four stored replies.
        assert_eq!(effects.counts(), (3, 1, 4));
        assert_eq!(views(&effects), [(0, 3)]);
        assert_eq!(log_versions(&effects), [1, 2, 3]);
    }

    #[test]
    fn a_reply_over_the_limit_is_a_400_and_the_command_is_not_applied() {
        let big = |id: &str| {
            command(
                json!({"request_id": id, "event_uuid": U,
                       "body": {"action": "login", "app": "a", "context": {"pad": "x".repeat(5000)}}}),
                None,
            )
        };
        // The size of the reply at no limit, then the limit at exactly that size and one less.
        let (free, _) = decide_batch(
            &[big("r1")],
            Known::default(),
            rules(AuthMode::Disabled),
            now(),
        );
        let exact = free[0].reply.len();
        let at = |max_reply_bytes| {
            decide_batch(
                &[big("r1"), update("r2", Some(1), None)],
                Known::default(),
                Rules {
                    auth_mode: AuthMode::Disabled,
                    max_reply_bytes,
                },
                now(),
            )
        };
        let (fits, effects) = at(exact);
        assert_eq!(
            statuses(&fits),
            [(201, OutcomeKind::New), (200, OutcomeKind::New)]
        );
        assert_eq!(fits[0].reply, free[0].reply);
        assert_eq!(effects.counts(), (2, 1, 2));
        let (over, effects) = at(exact - 1);
        // Not applied: the next command finds no event at version 1.
        assert_eq!(
            statuses(&over),
            [(400, OutcomeKind::New), (409, OutcomeKind::New)]
        );
        assert_eq!(over[0].refused, Some("reply_too_large"));
        assert_eq!(
            body(&over[0])["detail"],
            format!(
                "The reply to this command would be {exact} bytes, over the limit of {} bytes; the command was not applied.",
                exact - 1
            )
        );
        // Both answers are stored, so a redelivery gets the same 400.
        assert_eq!(effects.counts(), (0, 0, 2));
    }

    fn at(cmd: (Command, Source), partition: i32, offset: i64) -> (Command, Source) {
        let source = Source {
            topic: "cmds".into(),
            partition,
            offset,
        };
        (cmd.0, source)
    }

    #[test]
    fn a_record_at_or_below_its_partitions_applied_offset_is_not_applied_again() {
        let mut known = Known::default();
        known.applied.insert(("cmds".into(), 0), 10);
        known.applied.insert(("cmds".into(), 1), 3);
        // r1's reply is still stored; r2's and r3's were pruned.
        let r1 = at(update("r1", None, None), 0, 9);
        known.handled.entry(vec![]).or_default().insert(
            "r1".into(),
            Handled {
                fingerprint: r1.0.fingerprint.to_vec(),
                status: 201,
                reply: Arc::new(b"stored".to_vec()),
                change: None,
            },
        );
        let commands = [
            r1,
            at(update("r2", None, None), 0, 10),
            // Below the applied offset, with other content under a stored id: its 422 again.
            at(update("r1", Some(4), None), 1, 2),
            // Above: applied (a create, the event being absent).
            at(update("r3", None, None), 0, 11),
            at(update("r4", None, None), 1, 4),
            // A partition with no applied offset stored yet.
            at(update("r5", None, None), 2, 0),
            // A record refused when first read (its body invalid): the same 400 again.
            at(
                command(
                    json!({"request_id": "r6", "event_uuid": U, "body": {"app": "a"}}),
                    None,
                ),
                0,
                8,
            ),
        ];
        let (outcomes, effects) = decide_batch(&commands, known, rules(AuthMode::Disabled), now());
        assert_eq!(
            statuses(&outcomes),
            [
                (201, OutcomeKind::Duplicate),
                (409, OutcomeKind::AlreadyApplied),
                (422, OutcomeKind::ReusedRequestId),
                (201, OutcomeKind::New),
                (200, OutcomeKind::New),
                (200, OutcomeKind::New),
                (400, OutcomeKind::AlreadyApplied),
            ]
        );
        assert_eq!(outcomes[0].reply.as_slice(), b"stored");
        assert_eq!(
            body(&outcomes[6]),
            json!({"action": ["This field is required."]})
        );
        assert_eq!(
            body(&outcomes[1]),
            json!({"detail": format!("{ALREADY_APPLIED} Record cmds/0/10; the partition is applied up to offset 10."),
                   "current_version": 0})
        );
        // Only the three new commands are written; the offsets rise to the batch's highest in
        // each partition (partition 2 had none stored).
        assert_eq!(effects.counts(), (3, 1, 3));
        let offsets: Vec<(i32, i64)> = effects
            .offsets
            .iter()
            .map(|s| (s.partition, s.offset))
            .collect();
        assert_eq!(offsets, [(0, 11), (1, 4), (2, 0)]);
    }

    #[test]
    fn a_batch_wholly_below_the_applied_offsets_raises_none() {
        let mut known = Known::default();
        known.applied.insert(("cmds".into(), 0), 10);
        let commands = [
            at(update("r1", None, None), 0, 4),
            at(update("r2", None, None), 0, 5),
        ];
        let (outcomes, effects) = decide_batch(&commands, known, rules(AuthMode::Disabled), now());
        assert!(outcomes
            .iter()
            .all(|o| o.kind == OutcomeKind::AlreadyApplied));
        assert_eq!(effects.counts(), (0, 0, 0));
        assert!(effects.offsets.is_empty());
    }

    #[test]
    fn a_view_is_written_with_the_version_it_was_read_at() {
        let (created, _) = decide_batch(
            &[update("r1", None, None)],
            Known::default(),
            rules(AuthMode::Disabled),
            now(),
        );
        assert_eq!(created[0].status, 201);
        let event: Uuid = U.parse().unwrap();
        let mut known = Known::default();
        let state = projection::apply(
            event,
            None,
            &crate::drf::validate::validate_body(Some(&json!({"action": "login", "app": "a"})))
                .unwrap(),
            now(),
        )
        .state;
        known.states.insert(
            event,
            EventState {
                version: 7,
                ..state
            },
        );
        let (outcomes, effects) = decide_batch(
            &[update("r2", None, None), update("r3", Some(8), None)],
            known,
            rules(AuthMode::Disabled),
            now(),
        );
        assert_eq!(
            statuses(&outcomes),
            [(200, OutcomeKind::New), (200, OutcomeKind::New)]
        );
        assert_eq!(views(&effects), [(7, 9)]);
        assert_eq!(log_versions(&effects), [8, 9]);
    }
}
