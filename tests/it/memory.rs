//! Memory under heavy and hostile input: the processor, a child process, stays under a stated
//! peak RSS ([`RSS_BOUND`], below the 256 MiB limit of `deploy/k8s/deployment.yaml`) through a
//! flood of records with 100,000 empty headers each, through commands whose replies are near
//! 1 MB (and their redelivery, every stored reply loaded again), and through a flood of
//! made-up tokens on 1 MB values; and it answers a valid command after each.
//!
//! Each test holds a lock on the `events` table while its records are fetched (the processor's
//! reads wait on it, as they would on a stalled database), so that everything the processor
//! admits is in flight at once: what it holds then is what its budget lets in.

use std::time::{Duration, Instant};

use event_updater::domain::reply::header;
use event_updater_harness::process::Processor;
use event_updater_harness::replies::Collector;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::support::TestApp;

/// The peak RSS the processor must stay under in every test here.
const RSS_BOUND: u64 = 200 * 1024 * 1024;

/// The longest the `events` table is held while records are fetched.
const HOLD: Duration = Duration::from_secs(10);

/// The processor's settings here: its statements wait out the lock (a lock timeout would
/// answer them 500 instead).
const PATIENT: &[(&str, &str)] = &[("DATABASE_LOCK_TIMEOUT", "60s")];

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Locks `events` (every batch reads it) on a connection of the test's own, until
/// [`release`].
async fn hold_events(app: &TestApp) -> PgConnection {
    let mut conn = PgConnection::connect(&app.cfg.database_url)
        .await
        .expect("a connection of the test's own");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .expect("lock events");
    conn
}

/// Keeps the lock for [`HOLD`] (less once the processor is far past the bound: it is failing
/// anyway), so that the processor fetches what it will, then releases it.
async fn release_after_hold(mut conn: PgConnection, child: &Processor) {
    let until = Instant::now() + HOLD;
    while Instant::now() < until {
        if child.peak_rss().unwrap_or(0) > 3 * RSS_BOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query("COMMIT")
        .execute(&mut conn)
        .await
        .expect("release events");
}
/// Stops `child` and asserts that its peak RSS stayed under [`RSS_BOUND`], printing it with
/// `what` it went through.
async fn stopped_within_bound(child: Processor, stop_within: Duration, what: &str) {
    let peak = child.peak_rss().expect("peak RSS");
    child
        .stop(stop_within)
        .await
        .expect("the processor stops cleanly");
    println!(
        "peak RSS of the processor {what}: {:.1} MiB (bound {:.0} MiB)",
        mib(peak),
        mib(RSS_BOUND)
    );
    assert!(peak < RSS_BOUND, "{what}: peak RSS {:.1} MiB", mib(peak));
}

/// The status and body of the first reply of each of `ids`.
fn first_replies(collector: &Collector, ids: &[String]) -> Vec<(u64, Value)> {
    ids.iter()
        .map(|id| {
            let r = &collector.get(id).expect("a reply")[0];
            let v: Value = serde_json::from_slice(&r.value).expect("a JSON reply");
            (v["status"].as_u64().unwrap_or(0), v["body"].clone())
        })
        .collect()
}

/// Sends a valid command and waits for its reply; its status.
async fn a_valid_command_is_answered(app: &TestApp, collector: &Collector, id: &str) -> u64 {
    let event = Uuid::new_v4().to_string();
    app.send(
        &json!({"request_id": id, "event_uuid": event, "body": {"action": "login", "app": "a"}}),
    )
    .await;
    collector
        .wait_for_all(&[id.to_string()], Duration::from_secs(60))
        .await
        .expect("the valid command is answered");
    first_replies(collector, &[id.to_string()])[0].0
}

#[tokio::test]
async fn a_flood_of_records_with_100000_empty_headers_is_refused_in_bounded_memory() {
    const RECORDS: usize = 300;
    // librdkafka reads at most 100,000 headers of a record (it reads more as none).
    const HEADERS: usize = 100_000;
    const TIMESTAMP: i64 = 1_796_000_000_000;
    let app = TestApp::resources_with(|_| {}).await;
    let collector = app.collect_replies();
    let dead = Collector::start(app.new_reader(&app.cfg.dlq_topic));
    let child = app.start_child("headers", PATIENT).await;
    let lock = hold_events(&app).await;

    let event = Uuid::new_v4().to_string();
    let value = json!({"event_uuid": event, "body": {"action": "login", "app": "a"}}).to_string();
    // Empty headers, no credentials: about 200 KB a record on the wire.
    let mut headers = OwnedHeaders::new_with_capacity(HEADERS);
    for _ in 0..HEADERS {
        headers = headers.insert(Header {
            key: "",
            value: None::<&[u8]>,
        });
    }
    let mut ids = Vec::with_capacity(RECORDS);
    for _ in 0..RECORDS / 50 {
        let sends = (0..50).map(|_| {
            app.producer.send(
                FutureRecord::to(&app.cfg.command_topic)
                    .key(event.as_str())
                    .payload(value.as_str())
                    .timestamp(TIMESTAMP)
                    .headers(headers.clone()),
                Timeout::After(Duration::from_secs(120)),
            )
        });
        for r in futures::future::join_all(sends).await {
            let d = r.map_err(|(e, _)| e).expect("record delivered");
            let (partition, offset) = (d.partition, d.offset);
            // Its headers unread, it is filed under its coordinates.
            ids.push(format!(
                "{}/{partition}/{offset}@{TIMESTAMP}",
                app.cfg.command_topic
            ));
        }
    }
    release_after_hold(lock, &child).await;
    let missing = collector
        .wait_for_all_or_missing(&ids, Duration::from_secs(300))
        .await;
    let after = a_valid_command_is_answered(&app, &collector, "after-headers").await;
    stopped_within_bound(
        child,
        Duration::from_secs(30),
        &format!("through {RECORDS} records of {HEADERS} empty headers"),
    )
    .await;
    assert!(missing.is_empty(), "{} records unanswered", missing.len());
    let text = format!(
        "The record has {HEADERS} headers, over the limit of {}; it was not read.",
        event_updater::domain::command::MAX_HEADERS
    );
    for (status, body) in first_replies(&collector, &ids) {
        assert_eq!((status, body), (400, json!({ "detail": text })));
    }
    dead.wait_for_all(&ids, Duration::from_secs(60))
        .await
        .expect("every refused record is dead-lettered");
    assert_eq!(after, 201);
    collector.stop().await;
    dead.stop().await;
    app.finish().await;
}

#[tokio::test]
async fn replies_near_1_mb_and_their_redelivery_stay_in_bounded_memory() {
    const EVENTS: usize = 6;
    const UPDATES: usize = 30;
    // Each event's context: every reply about it carries it.
    const CONTEXT: usize = 800_000;
    let app = TestApp::resources_with(|_| {}).await;
    let collector = app.collect_replies();
    let child = app.start_child("replies", PATIENT).await;
    let events: Vec<String> = (0..EVENTS).map(|_| Uuid::new_v4().to_string()).collect();
    let creates: Vec<(String, Vec<u8>)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let v = json!({"request_id": format!("create-{i}"), "event_uuid": e,
                "body": {"action": "login", "app": "a", "context": {"pad": "x".repeat(CONTEXT)}}});
            (e.clone(), v.to_string().into_bytes())
        })
        .collect();
    let create_ids: Vec<String> = (0..EVENTS).map(|i| format!("create-{i}")).collect();
    app.send_many(&creates).await;
    collector
        .wait_for_all(&create_ids, Duration::from_secs(120))
        .await
        .expect("the events are created");

    // Small commands, each answered with its event's 800 KB: held back, then all at once.
    let lock = hold_events(&app).await;
    let mut updates = Vec::new();
    let mut ids = create_ids.clone();
    for j in 0..UPDATES {
        for (i, e) in events.iter().enumerate() {
            let id = format!("update-{i}-{j}");
            let v = json!({"request_id": id, "event_uuid": e, "body": {"action": "logout", "app": "b"}});
            updates.push((e.clone(), v.to_string().into_bytes()));
            ids.push(id);
        }
    }
    app.send_many(&updates).await;
    release_after_hold(lock, &child).await;
    let missing = collector
        .wait_for_all_or_missing(&ids, Duration::from_secs(300))
        .await;
    stopped_within_bound(
        child,
        Duration::from_secs(60),
        &format!(
            "answering {} commands with replies of {} KB",
            ids.len(),
            CONTEXT / 1000
        ),
    )
    .await;
    assert!(missing.is_empty(), "{} commands unanswered", missing.len());

    // Redelivery: a new group reads the command topic from its start, so every command is
    // answered again from its stored reply, each loaded from the database.
    let group = format!("{}-again", app.cfg.kafka_group_id);
    let child = app
        .start_child(
            "replies-again",
            &[PATIENT, &[("KAFKA_GROUP_ID", group.as_str())]].concat(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let twice = |id: &String| collector.get(id).map_or(0, |r| r.len()) >= 2;
    while !ids.iter().all(twice) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unanswered = ids.iter().filter(|id| !twice(id)).count();
    let after = a_valid_command_is_answered(&app, &collector, "after-replies").await;
    stopped_within_bound(
        child,
        Duration::from_secs(60),
        "answering them again from their stored replies",
    )
    .await;
    assert_eq!(unanswered, 0, "commands not answered again");
    for id in &ids {
        let r = collector.get(id).expect("replies");
        assert_eq!(
            r[0].value, r[1].value,
            "{id}: the stored reply, byte for byte"
        );
        assert!(
            r[0].value.len() > CONTEXT,
            "{id}: the reply carries the event"
        );
    }
    let statuses: Vec<u64> = first_replies(&collector, &ids)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(statuses[..EVENTS].iter().all(|s| *s == 201));
    assert!(statuses[EVENTS..].iter().all(|s| *s == 200));
    assert_eq!(after, 201);
    collector.stop().await;
    app.finish().await;
}

#[tokio::test]
async fn a_made_up_token_is_refused_before_its_value_is_parsed_in_bounded_memory() {
    const RECORDS: usize = 120;
    // Within the producer's default record limit (1,000,000 bytes with headers).
    const BYTES: usize = 900_000;
    let app = TestApp::resources_with(|_| {}).await;
    let collector = app.collect_replies();
    let child = app.start_child("fake-token", PATIENT).await;
    let event = Uuid::new_v4().to_string();

    // A command whose value names its request id, under a made-up token and without a
    // `request-id` header: unparsed, its 403 is filed under its coordinates, not under the id
    // in its value.
    const TIMESTAMP: i64 = 1_796_000_000_000;
    let named = json!({"request_id": "in-the-value", "event_uuid": event,
        "body": {"action": "login", "app": "a"}})
    .to_string();
    let d = app
        .producer
        .send(
            FutureRecord::to(&app.cfg.command_topic)
                .key(event.as_str())
                .payload(named.as_str())
                .timestamp(TIMESTAMP)
                .headers(OwnedHeaders::new().insert(Header {
                    key: header::AUTHORIZATION,
                    value: Some("Bearer x"),
                })),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("record delivered");
    let coordinates = format!(
        "{}/{}/{}@{TIMESTAMP}",
        app.cfg.command_topic, d.partition, d.offset
    );
    collector
        .wait_for_count(1, Duration::from_secs(60))
        .await
        .expect("a reply");
    assert_eq!(
        collector.get("in-the-value").map(|r| r.len()),
        None,
        "the value was parsed"
    );
    assert_eq!(
        first_replies(&collector, std::slice::from_ref(&coordinates))[0],
        (403, json!({"detail": "Token invalid/expired"}))
    );

    // JSON values that would parse into a tree of nearly half a million nodes each, under a
    // made-up token, while the database is held.
    let mut value = format!(
        r#"{{"event_uuid": "{event}", "body": {{"action": "login", "app": "a", "context": {{"k": ["#
    )
    .into_bytes();
    while value.len() < BYTES - 8 {
        value.extend_from_slice(b"1,");
    }
    value.extend_from_slice(b"1]}}}");
    let lock = hold_events(&app).await;
    let ids: Vec<String> = (0..RECORDS).map(|i| format!("fake-{i}")).collect();
    for chunk in ids.chunks(20) {
        let sends = chunk.iter().map(|id| {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: header::AUTHORIZATION,
                    value: Some("Bearer x"),
                })
                .insert(Header {
                    key: header::REQUEST_ID,
                    value: Some(id.as_str()),
                });
            app.producer.send(
                FutureRecord::to(&app.cfg.command_topic)
                    .key(event.as_str())
                    .payload(value.as_slice())
                    .headers(headers),
                Timeout::After(Duration::from_secs(120)),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("record delivered");
        }
    }
    release_after_hold(lock, &child).await;
    let missing = collector
        .wait_for_all_or_missing(&ids, Duration::from_secs(300))
        .await;
    let after = a_valid_command_is_answered(&app, &collector, "after-tokens").await;
    stopped_within_bound(
        child,
        Duration::from_secs(30),
        &format!("through {RECORDS} values of 900 KB under made-up tokens"),
    )
    .await;
    assert!(missing.is_empty(), "{} records unanswered", missing.len());
    for (status, body) in first_replies(&collector, &ids) {
        assert_eq!(
            (status, body),
            (403, json!({"detail": "Token invalid/expired"}))
        );
    }
    assert_eq!(after, 201);

    // A token of the issued shape that the store does not know: only the database knows its
    // standing, so its value is parsed (and charged at its parsed size), then it gets its 403.
    let unknown = format!(
        "Bearer {}{}",
        event_updater::domain::auth::TOKEN_PREFIX,
        "0".repeat(event_updater::domain::auth::TOKEN_HEX_DIGITS)
    );
    let child = app.start_child("fake-token-shaped", PATIENT).await;
    app.send_raw(
        Some(&event),
        Some(named.replace("in-the-value", "shaped").as_bytes()),
        &[(header::AUTHORIZATION, unknown.as_bytes())],
    )
    .await;
    // Parsed: its 403 is filed under the id its value names.
    collector
        .wait_for_all(&["shaped".to_string()], Duration::from_secs(60))
        .await
        .expect("a reply");
    assert_eq!(
        first_replies(&collector, &["shaped".to_string()])[0],
        (403, json!({"detail": "Token invalid/expired"}))
    );
    child
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    collector.stop().await;
    app.finish().await;
}
