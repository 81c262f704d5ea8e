//! The order of checks in [`decide_batch`]: a redelivery in its scope gets its stored reply,
//! then 403 (never stored), then a request id handled before in the scope with other content
//! (422), then the command itself (409 against the version the batch has reached, else
//! 201/200); later commands of a batch see the effects of earlier ones.
use crate::domain::reply::header;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::domain::auth::{self, AuthMode, TokenGrant};
use crate::domain::command::{decode, Command, Incoming, Refusal};
use crate::domain::projection::{self, EventState};

/// The rows a batch writes: (log, views, replies).
fn rows(log: usize, views: usize, replies: usize) -> RowCounts {
    RowCounts {
        log,
        views,
        replies,
    }
}

const U: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

fn command(value: Value, token: Option<&str>) -> (Command, Source) {
    let headers = token
        .map(|t| {
            vec![(
                header::AUTHORIZATION.to_string(),
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

fn settings(auth_mode: AuthMode) -> BatchSettings {
    BatchSettings {
        auth_mode,
        max_reply_bytes: 1_000_000,
    }
}

#[test]
fn forbidden_comes_first_and_is_not_stored() {
    let mut known = StoredState::default();
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
        StoredAnswer {
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
    let (outcomes, effects) = decide_batch(&commands, known, settings(AuthMode::Required), now());
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
    assert_eq!(effects.counts(), rows(0, 0, 0));
}

#[test]
fn a_request_id_seen_before_gets_its_stored_reply_or_a_422() {
    let first = update("r1", None, None);
    let mut known = StoredState::default();
    known.handled.entry(vec![]).or_default().insert(
        "r1".into(),
        StoredAnswer {
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
        decide_batch(&[first, reused], known, settings(AuthMode::Disabled), now());
    assert_eq!(
        statuses(&outcomes),
        [
            (201, OutcomeKind::Duplicate),
            (422, OutcomeKind::ReusedRequestId)
        ]
    );
    assert_eq!(outcomes[0].reply.as_slice(), b"stored bytes");
    assert_eq!(effects.counts(), rows(0, 0, 0));
}

#[test]
fn request_ids_are_scoped_by_credential_and_outlive_its_revocation() {
    let mut known = StoredState::default();
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
            StoredAnswer {
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
    let (outcomes, effects) = decide_batch(&commands, known, settings(AuthMode::Required), now());
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
        StoredState::default(),
        settings(AuthMode::Disabled),
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
    assert_eq!(effects.counts(), rows(3, 1, 4));
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
        StoredState::default(),
        settings(AuthMode::Disabled),
        now(),
    );
    let exact = free[0].reply.len();
    let at = |max_reply_bytes| {
        decide_batch(
            &[big("r1"), update("r2", Some(1), None)],
            StoredState::default(),
            BatchSettings {
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
    assert_eq!(effects.counts(), rows(2, 1, 2));
    let (over, effects) = at(exact - 1);
    // Not applied: the next command finds no event at version 1.
    assert_eq!(
        statuses(&over),
        [(400, OutcomeKind::New), (409, OutcomeKind::New)]
    );
    assert_eq!(
        over[0].refused.map(Refusal::as_str),
        Some("reply_too_large")
    );
    assert_eq!(
        body(&over[0])["detail"],
        format!(
            "The reply to this command would be {exact} bytes, over the limit of {} bytes; the command was not applied.",
            exact - 1
        )
    );
    // Both answers are stored, so a redelivery gets the same 400.
    assert_eq!(effects.counts(), rows(0, 0, 2));
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
    let mut known = StoredState::default();
    known.applied.insert(("cmds".into(), 0), 10);
    known.applied.insert(("cmds".into(), 1), 3);
    // r1's reply is still stored; r2's and r3's were pruned.
    let r1 = at(update("r1", None, None), 0, 9);
    known.handled.entry(vec![]).or_default().insert(
        "r1".into(),
        StoredAnswer {
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
    let (outcomes, effects) = decide_batch(&commands, known, settings(AuthMode::Disabled), now());
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
    assert_eq!(effects.counts(), rows(3, 1, 3));
    let offsets: Vec<(i32, i64)> = effects
        .offsets
        .iter()
        .map(|s| (s.partition, s.offset))
        .collect();
    assert_eq!(offsets, [(0, 11), (1, 4), (2, 0)]);
}

#[test]
fn a_batch_wholly_below_the_applied_offsets_raises_none() {
    let mut known = StoredState::default();
    known.applied.insert(("cmds".into(), 0), 10);
    let commands = [
        at(update("r1", None, None), 0, 4),
        at(update("r2", None, None), 0, 5),
    ];
    let (outcomes, effects) = decide_batch(&commands, known, settings(AuthMode::Disabled), now());
    assert!(outcomes
        .iter()
        .all(|o| o.kind == OutcomeKind::AlreadyApplied));
    assert_eq!(effects.counts(), rows(0, 0, 0));
    assert!(effects.offsets.is_empty());
}

#[test]
fn a_view_is_written_with_the_version_it_was_read_at() {
    let (created, _) = decide_batch(
        &[update("r1", None, None)],
        StoredState::default(),
        settings(AuthMode::Disabled),
        now(),
    );
    assert_eq!(created[0].status, 201);
    let event: Uuid = U.parse().unwrap();
    let mut known = StoredState::default();
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
        settings(AuthMode::Disabled),
        now(),
    );
    assert_eq!(
        statuses(&outcomes),
        [(200, OutcomeKind::New), (200, OutcomeKind::New)]
    );
    assert_eq!(views(&effects), [(7, 9)]);
    assert_eq!(log_versions(&effects), [8, 9]);
}
