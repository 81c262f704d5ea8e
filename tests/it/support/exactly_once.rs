//! What the fault tests (tests/it/faults.rs, tests/it/containers/) share: a seeded load of valid
//! and invalid commands over a set of events, sending it paced so that faults land while it
//! flows, and the promise checked afterwards (nothing lost, nothing doubled, every command
//! answered, versions 1..n per event in production order, the view a fold of the log).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::Message;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{replies, Collector, TestApp};

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), seeded per test and printed, so that a failing
/// schedule can be replayed with `FAULT_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = env_or("FAULT_SEED", 0).max(1);
        let seed = if seed == 1 {
            u64::from(std::process::id()) ^ 0x9E37_79B9_7F4A_7C15
        } else {
            seed
        };
        println!("FAULT_SEED={seed}");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The commands of a test: 90% valid updates and 10% invalid bodies over `events` events.
pub struct Load {
    pub records: Vec<(String, Vec<u8>)>,
    pub ids: Vec<String>,
    pub valid: HashSet<String>,
    /// Valid request ids per event, in the order they were produced.
    pub order: HashMap<String, Vec<String>>,
}

/// The fault tests' load: `FAULT_COMMANDS` (3,000) commands divided by `divisor`, over
/// `FAULT_EVENTS` (200) events.
pub fn fault_load(rng: &mut Rng, divisor: u64) -> Load {
    load(
        rng,
        env_or("FAULT_COMMANDS", 3000) / divisor,
        env_or("FAULT_EVENTS", 200),
    )
}

pub fn load(rng: &mut Rng, n: u64, events: u64) -> Load {
    let uuids: Vec<String> = (0..events).map(|_| Uuid::new_v4().to_string()).collect();
    let mut l = Load {
        records: Vec::new(),
        ids: Vec::new(),
        valid: HashSet::new(),
        order: HashMap::new(),
    };
    for i in 0..n {
        let event = &uuids[usize::try_from(rng.below(events)).unwrap_or(0)];
        let id = format!("L{i}");
        let valid = rng.below(10) != 0;
        let action = if valid { "model_updated" } else { "LOGIN" };
        let cmd = json!({"request_id": id, "event_uuid": event,
            "body": {"action": action, "app": format!("a{i}"), "context": {"i": i}}});
        l.records
            .push((event.clone(), cmd.to_string().into_bytes()));
        l.ids.push(id.clone());
        if valid {
            l.valid.insert(id.clone());
            l.order.entry(event.clone()).or_default().push(id);
        }
    }
    l
}

/// Sends the load in slices of 100, `pause` apart, so that faults land while it flows.
pub async fn send_paced(app: &TestApp, l: &Load, pause: Duration) {
    for chunk in l.records.chunks(100) {
        app.send_many(chunk).await;
        tokio::time::sleep(pause).await;
    }
}

/// Waits until every command of `l` has a reply; after `bound`, panics with where each missing
/// one stands (see [`explain_missing`]).
pub async fn wait_for_all_or_explain(
    app: &TestApp,
    collector: &Collector,
    l: &Load,
    bound: Duration,
) {
    let missing = collector.wait_for_all_or_missing(&l.ids, bound).await;
    if !missing.is_empty() {
        let why = explain_missing(app, &missing).await;
        panic!(
            "{} of {} commands have no reply after {bound:?}:\n{why}",
            missing.len(),
            l.ids.len()
        );
    }
}

/// The promise, checked on what `collector` read (it is stopped first) once `faults` (said
/// in the output) were injected: nothing lost, nothing doubled, every command answered
/// (identically if twice), versions 1..n per event in production order, the view a fold of the
/// log.
pub async fn assert_exactly_once(app: &TestApp, l: &Load, collector: Collector, faults: &str) {
    let replies = collector.stop().await;
    println!("faults injected: {faults}");
    let mut redelivered = 0;
    let mut version_of: HashMap<&str, u64> = HashMap::new();
    for id in &l.ids {
        let copies = replies
            .get(id)
            .unwrap_or_else(|| panic!("no reply for {id}"));
        assert!(
            copies.iter().all(|c| c.value == copies[0].value),
            "{id}: replies differ"
        );
        redelivered += copies.len() - 1;
        let v: Value = serde_json::from_slice(&copies[0].value).expect("reply JSON");
        let status = v["status"].as_u64().unwrap_or(0);
        if l.valid.contains(id) {
            assert!(status == 200 || status == 201, "{id}: {v}");
            version_of.insert(id, v["version"].as_u64().expect("version"));
        } else {
            assert_eq!(status, 400, "{id}: {v}");
        }
    }
    for (event, ids) in &l.order {
        let versions: Vec<u64> = ids.iter().map(|id| version_of[id.as_str()]).collect();
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "{event}: versions in production order");
    }
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT request_id FROM event_log GROUP BY request_id HAVING count(*) > 1) d",
    )
    .fetch_one(&app.pool)
    .await
    .expect("query");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
        .fetch_one(&app.pool)
        .await
        .expect("query");
    let answered: i64 = sqlx::query_scalar("SELECT count(*) FROM command_replies")
        .fetch_one(&app.pool)
        .await
        .expect("query");
    assert_eq!(doubled, 0, "request ids applied twice");
    assert_eq!(logged as usize, l.valid.len(), "log rows = valid commands");
    assert_eq!(
        answered as usize,
        l.ids.len(),
        "one stored reply per request id"
    );
    let events = app.assert_view_is_fold_of_log().await;
    println!(
        "checked: {} commands ({} valid) over {events} events; lost 0, doubled 0, missing replies 0; {redelivered} replies delivered twice (identical)",
        l.ids.len(),
        l.valid.len()
    );
}

/// For commands without a reply: where each sits on the command topic, the group's committed
/// offset of its partition, and what the database stored for it. Tells a command the processors
/// never answered (committed past: an offset moved ahead of an answer; or not reached) from a
/// reply published but not read.
pub async fn explain_missing(app: &TestApp, missing: &[String]) -> String {
    let wanted: HashSet<&str> = missing.iter().map(String::as_str).collect();
    let wanted = &wanted;
    // Where each one is on `topic`, read again from the beginning by a reader of its own.
    let find = |topic: String| async move {
        let mut found: HashMap<String, (i32, i64)> = HashMap::new();
        let reader = app.new_reader(&topic);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while found.len() < wanted.len() && std::time::Instant::now() < deadline {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), reader.recv()).await
            else {
                continue;
            };
            let id = replies::request_id(&m);
            if wanted.contains(id.as_str()) {
                found.insert(id, (m.partition(), m.offset()));
            }
        }
        found
    };
    let position = find(app.cfg.command_topic.clone()).await;
    let published = find(app.cfg.reply_topic.clone()).await;
    let committed: HashMap<i32, String> = app
        .committed_offsets()
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| (e.partition(), format!("{:?}", e.offset())))
                .collect()
        })
        .unwrap_or_default();
    let stored: Vec<(String, i16, i32, i64)> = sqlx::query_as(
        "SELECT request_id, status, source_partition, source_offset FROM command_replies WHERE request_id = ANY($1)",
    )
    .bind(missing)
    .fetch_all(&app.pool)
    .await
    .expect("stored replies");
    let stored: HashMap<String, (i16, i32, i64)> = stored
        .into_iter()
        .map(|(id, s, p, o)| (id, (s, p, o)))
        .collect();
    let mut out = String::new();
    for id in missing {
        let at = position
            .get(id)
            .map_or("not found on the command topic".to_string(), |(p, o)| {
                format!(
                    "partition {p} offset {o} (committed: {})",
                    committed.get(p).map_or("?", String::as_str)
                )
            });
        let db = stored.get(id).map_or(
            "no stored reply (never applied)".to_string(),
            |(s, p, o)| format!("stored reply {s} (from partition {p} offset {o})"),
        );
        let reply = published.get(id).map_or(
            "no reply on the reply topic".to_string(),
            |(p, o)| format!("a reply IS on the reply topic (partition {p} offset {o}): the collector missed it"),
        );
        out.push_str(&format!("{id}: {at}; {db}; {reply}\n"));
    }
    out
}
