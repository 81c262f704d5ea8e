//! A micro-benchmark of the domain's CPU per command (test builds only): decode, the batch
//! decision (with its reply bytes) and the feed's records, for the benchmark's own commands on a
//! warm in-memory state. It prints microseconds per command and asserts no time; run it with
//! `cargo test --release --lib -- --ignored --nocapture domain_cost_per_command`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::auth::{self, AuthMode, TokenGrant};
use crate::domain::command::{decode, Command, Incoming};
use crate::domain::decide::{decide_batch, BatchSettings, Source, StoredState};
use crate::domain::feed::{change_record, view_record, LogChange};
use crate::domain::projection::EventState;
use crate::domain::reply::header;
use crate::domain::reply::scope_tag;

const COMMANDS: u64 = 50_000;
const EVENTS: u64 = 5_000;
const BATCH: u64 = 500;
const TOKEN: &str = "eut_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The benchmark binary's command shape (`envelope` in `event-updater-bench`).
fn incoming(i: u64) -> Incoming {
    let event = Uuid::from_u128(0x3fa8_5f64_5717_4562_b3fc_0000_0000_0000 + u128::from(i % EVENTS));
    let value = format!(
        r#"{{"request_id": "bench-{i}", "event_uuid": "{event}", "body": {{"action": "login", "app": "authentik.core", "user": {{"pk": 1}}, "context": {{"n": {i}}}, "client_ip": "10.0.0.1"}}}}"#
    );
    Incoming {
        topic: "event-update-commands".into(),
        partition: (i % 4) as i32,
        offset: i as i64,
        key: Some(event.to_string().into_bytes()),
        payload: Some(value.into_bytes()),
        headers: vec![(
            header::AUTHORIZATION.into(),
            Some(format!("Bearer {TOKEN}").into_bytes()),
        )],
        timestamp_ms: Some(1_796_000_000_000),
        headers_refused: None,
    }
}

#[derive(Default)]
struct Spent {
    decode: Duration,
    decide: Duration,
    records: Duration,
    bytes: usize,
}

/// One batch: decoded, decided against `states` (updated), its records rendered.
fn batch(range: std::ops::Range<u64>, states: &mut HashMap<Uuid, EventState>, spent: &mut Spent) {
    let records: Vec<Incoming> = range.map(incoming).collect();
    let now: DateTime<Utc> = Utc::now();

    let t = Instant::now();
    let commands: Vec<(Command, Source)> = records
        .iter()
        .map(|m| {
            let source = Source {
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
            };
            (decode(m, 1 << 20, AuthMode::Required), source)
        })
        .collect();
    spent.decode += t.elapsed();

    // What the store would read (not the domain's cost).
    let mut known = StoredState::default();
    known.grants.insert(
        auth::hash(TOKEN),
        TokenGrant {
            usable: true,
            can_change_event: true,
        },
    );
    for (c, _) in &commands {
        if let Some(u) = c.action.event_uuid_to_apply() {
            if let Some(s) = states.get(&u) {
                known.states.entry(u).or_insert_with(|| s.clone());
            }
        }
    }
    let rules = BatchSettings {
        auth_mode: AuthMode::Required,
        max_reply_bytes: 1 << 20,
    };

    let t = Instant::now();
    let (outcomes, effects) = decide_batch(&commands, known, rules, now);
    spent.decide += t.elapsed();

    let t = Instant::now();
    let mut bytes = 0;
    for ((c, _), o) in commands.iter().zip(&outcomes) {
        // The reply's `command-scope` header.
        if let Some(s) = c.scope(AuthMode::Required) {
            bytes += scope_tag(s).len();
        }
        bytes += o.reply.len();
    }
    for l in effects.log {
        let c = LogChange {
            event_uuid: l.event_uuid,
            version: l.version,
            change: l.change,
            applied_at: now,
            request_id: l.request_id,
            scope: Some(l.scope),
            topic: l.source.topic,
            partition: l.source.partition,
            offset: l.source.offset,
        };
        bytes += change_record(&c).len();
    }
    for v in &effects.views {
        bytes += view_record(&v.state).len();
    }
    spent.records += t.elapsed();
    spent.bytes += bytes;

    for v in effects.views {
        states.insert(v.state.event_uuid, v.state);
    }
}

#[test]
#[ignore = "a measurement, run by hand with --release"]
fn domain_cost_per_command() {
    let mut states = HashMap::new();
    let mut warm = Spent::default();
    // Warm: every event exists, as in a drain of a log already written to.
    for start in (0..EVENTS).step_by(BATCH as usize) {
        batch(start..start + BATCH, &mut states, &mut warm);
    }
    let mut spent = Spent::default();
    for start in (EVENTS..EVENTS + COMMANDS).step_by(BATCH as usize) {
        batch(start..start + BATCH, &mut states, &mut spent);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / COMMANDS as f64;
    let total = spent.decode + spent.decide + spent.records;
    println!(
        "domain cost per command over {COMMANDS} commands ({EVENTS} events, batches of {BATCH}): \
         decode {:.2} µs, decide {:.2} µs, records {:.2} µs, total {:.2} µs ({} bytes out)",
        per(spent.decode),
        per(spent.decide),
        per(spent.records),
        per(total),
        spent.bytes
    );
}
