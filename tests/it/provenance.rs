//! Whose record is whose, against the real broker and PostgreSQL: a reply names the command
//! record it answers (and its credential's scope), `event-updater send` takes only the reply to
//! its own record, `dlq replay` republishes only the dead letters that were commands, and a
//! dead letter carries only the allowed command headers.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use event_updater::domain::auth;
use event_updater::domain::reply::header;
use event_updater::domain::reply::scope_tag;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{client, TestApp};

/// Runs `event-updater <args>` with the test's configuration and `env` (120 s at most).
async fn run_tool(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = app.binary();
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("EVENT_UPDATER_TOKEN")
        .env_remove("REPLAY_AUTHORIZATION")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("the binary starts");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the tool finishes within 120 s")
        .expect("the tool's output")
}

fn explain(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Records on every partition of `topic` (the sum of the high watermarks).
fn records_in(app: &TestApp, topic: &str) -> i64 {
    let c: BaseConsumer = client(&app.cfg).create().expect("consumer");
    (0..app.cfg.topic_partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum()
}

/// The next record `consumer` reads: partition, offset and headers (30 s at most).
async fn next_record(consumer: &StreamConsumer) -> (i32, i64, Vec<(String, String)>) {
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("no consumer error");
    let headers = m
        .headers()
        .map(|h| {
            use rdkafka::message::Headers;
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (m.partition(), m.offset(), headers)
}

/// A string of `n` random hex digits: lz4 finds little to compress in it, so a record holding
/// it is about as large on the broker as in memory.
fn incompressible(n: usize) -> String {
    let mut s = String::with_capacity(n + 32);
    while s.len() < n {
        s.push_str(&Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

#[tokio::test]
async fn replies_name_the_command_record_they_answer_and_the_credentials_scope() {
    let app = TestApp::spawn().await;
    let commands = app.new_reader(&app.cfg.command_topic);
    let event = Uuid::new_v4();
    let created = app
        .call(&json!({"request_id": "scoped", "event_uuid": event,
                      "body": {"action": "login", "app": "a"}}))
        .await;
    assert_eq!(created.status(), 201, "{:?}", created.value);
    let (partition, offset, _) = next_record(&commands).await;
    let token = app.authorization.strip_prefix("Bearer ").expect("bearer");
    assert_eq!(
        created.header(header::COMMAND_TOPIC),
        Some(app.cfg.command_topic.as_str())
    );
    assert_eq!(
        created.header(header::COMMAND_PARTITION),
        Some(partition.to_string().as_str())
    );
    assert_eq!(
        created.header(header::COMMAND_OFFSET),
        Some(offset.to_string().as_str())
    );
    let tag = scope_tag(&auth::hash(token));
    assert_eq!(created.header(header::COMMAND_SCOPE), Some(tag.as_str()));
    assert!(
        created.headers.iter().all(|(_, v)| !v.contains(token)),
        "the token is on no header: {:?}",
        created.headers
    );

    // Without credentials, under the same request id: a 403 that names its own record and no
    // scope, so no reader takes it for the reply above.
    app.send_raw_with(
        Some(&event.to_string()),
        Some(b"{}"),
        &[(header::REQUEST_ID, b"scoped")],
        false,
    )
    .await;
    let forbidden = app.reply().await;
    assert_eq!(forbidden.status(), 403);
    assert_eq!(forbidden.header(header::REQUEST_ID), Some("scoped"));
    let (partition, offset, _) = next_record(&commands).await;
    assert_eq!(
        (
            forbidden.header(header::COMMAND_PARTITION),
            forbidden.header(header::COMMAND_OFFSET)
        ),
        (
            Some(partition.to_string().as_str()),
            Some(offset.to_string().as_str())
        )
    );
    assert_eq!(forbidden.header(header::COMMAND_SCOPE), None);

    // A redelivery's stored reply names the record it now answers.
    app.send(&json!({"request_id": "scoped", "event_uuid": event,
                     "body": {"action": "login", "app": "a"}}))
        .await;
    let again = app.reply().await;
    assert_eq!(again.raw, created.raw);
    let (_, offset, _) = next_record(&commands).await;
    assert_eq!(
        again.header(header::COMMAND_OFFSET),
        Some(offset.to_string().as_str())
    );
    drop(commands);
    app.finish().await;
}

#[tokio::test]
async fn send_ignores_replies_that_only_claim_its_request_id() {
    // No processor yet: the commands wait on the topic until it starts, so the replies come
    // in the order the test chooses.
    let app = TestApp::resources_with(|_| {}).await;
    let event = Uuid::new_v4();
    let id = "claimed-id";
    // A record without credentials, under send's request id, ahead of send's command in the
    // same partition (same key): its 403 comes first, filed under that id.
    app.send_raw_with(
        Some(&event.to_string()),
        Some(b"{}"),
        &[(header::REQUEST_ID, id.as_bytes())],
        false,
    )
    .await;
    let token = app
        .authorization
        .strip_prefix("Bearer ")
        .expect("bearer")
        .to_string();
    let mut send = app.binary();
    send.args([
        "send",
        "--event-uuid",
        &event.to_string(),
        "--request-id",
        id,
        "--expected-version",
        "0",
        "--body",
        r#"{"action": "login", "app": "the-real-one"}"#,
        "--timeout-secs",
        "90",
    ])
    .env("RUST_LOG", "warn")
    .env("EVENT_UPDATER_TOKEN", &token)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let send = send.spawn().expect("send starts");
    // Once send's command is on the topic, send reads the reply topic (it positions its reader
    // before it publishes).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while records_in(&app, &app.cfg.command_topic) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "send never published its command"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reply written by hand to the reply topic under that request id.
    let forged = json!({"request_id": id, "event_uuid": event, "status": 200, "version": 7,
                        "body": {"detail": "forged"}});
    app.producer
        .send(
            FutureRecord::to(&app.cfg.reply_topic)
                .key(&event.to_string())
                .payload(&forged.to_string())
                .headers(OwnedHeaders::new().insert(Header {
                    key: header::REQUEST_ID,
                    value: Some(id.as_bytes()),
                })),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the forged reply is written");

    let processor = app.start_child("provenance", &[]).await;
    let out = tokio::time::timeout(Duration::from_secs(120), send.wait_with_output())
        .await
        .expect("send finishes")
        .expect("send's output");
    assert!(out.status.success(), "{}", explain(&out));
    let reply: Value = serde_json::from_slice(&out.stdout).expect("the reply JSON");
    assert_eq!(
        (
            reply["status"].as_u64(),
            reply["version"].as_u64(),
            reply["body"]["app"].as_str()
        ),
        (Some(201), Some(1), Some("the-real-one")),
        "{}",
        explain(&out)
    );
    // Both were seen, reported and passed over.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("Ignoring a spoofed reply").count(),
        2,
        "{}",
        explain(&out)
    );
    processor
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops");
    app.finish().await;
}

#[tokio::test]
async fn dlq_replay_republishes_command_dead_letters_and_never_a_refused_reply() {
    let app = TestApp::spawn().await;
    // The reply topic takes records of at most 20,000 bytes; the dead-letter topic keeps the
    // broker's default, so a refused reply lands there whole.
    let admin: AdminClient<DefaultClientContext> = client(&app.cfg).create().expect("admin");
    let limit = AlterConfig::new(ResourceSpecifier::Topic(&app.cfg.reply_topic))
        .set("max.message.bytes", "20000");
    for r in admin
        .alter_configs([&limit], &AdminOptions::new())
        .await
        .expect("alter the reply topic")
    {
        r.expect("max.message.bytes set");
    }
    // The broker answers describe from the configuration it applies: wait until it shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let described = admin
            .describe_configs(
                [&ResourceSpecifier::Topic(&app.cfg.reply_topic)],
                &AdminOptions::new(),
            )
            .await
            .expect("describe the reply topic");
        let applied = described
            .iter()
            .flatten()
            .any(|r| r.get("max.message.bytes").and_then(|e| e.value.as_deref()) == Some("20000"));
        if applied {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the limit never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(admin);
    let event = Uuid::new_v4();
    let big = app
        .call(
            &json!({"request_id": "big", "event_uuid": event, "expected_version": 0,
                      "body": {"action": "login", "app": "stale",
                               "context": {"pad": incompressible(60_000)}}}),
        )
        .await;
    assert_eq!(big.status(), 500, "{:?}", big.value);
    assert_eq!(big.body()["reply_status"], 201);
    let refused = app.dead_letter().await;
    assert_eq!(refused.header(header::DLQ_KIND), Some("reply"));
    assert_eq!(refused.header(header::DLQ_SOURCE_TOPIC), None);
    assert_eq!(refused.value["status"], 201, "the whole reply is kept");
    assert_eq!(refused.value["body"]["app"], "stale");

    // The event moves on.
    let current = app
        .call(
            &json!({"request_id": "current", "event_uuid": event, "expected_version": 1,
                      "body": {"action": "logout", "app": "current", "context": {}}}),
        )
        .await;
    assert_eq!(
        (current.status(), current.value["version"].as_u64()),
        (200, Some(2))
    );
    // A command the processor cannot use.
    app.send_raw(
        Some("some-key"),
        Some(b"{\"request_id\": oops"),
        &[(header::REQUEST_ID, b"dead-1")],
    )
    .await;
    assert_eq!(app.reply().await.status(), 400);
    let command = app.dead_letter().await;
    assert_eq!(command.header(header::DLQ_KIND), Some("command"));

    let listed = run_tool(&app, &["dlq", "replay", "--dry-run"], &[]).await;
    assert!(listed.status.success(), "{}", explain(&listed));
    let text = String::from_utf8_lossy(&listed.stdout);
    let would = text
        .lines()
        .filter(|l| l.starts_with("would replay "))
        .collect::<Vec<_>>();
    let would_not = text
        .lines()
        .filter(|l| l.starts_with("would not replay "))
        .collect::<Vec<_>>();
    assert!(
        would.len() == 1 && would[0].contains("request-id dead-1"),
        "{}",
        explain(&listed)
    );
    assert!(
        would_not.len() == 1
            && would_not[0].contains("request-id big")
            && would_not[0].contains("dlq-kind: reply"),
        "{}",
        explain(&listed)
    );
    assert!(
        text.contains("\n1 dead letters in "),
        "{}",
        explain(&listed)
    );
    assert!(
        text.contains("1 dead letters in ") && text.contains("are not commands"),
        "{}",
        explain(&listed)
    );
    assert_eq!(
        records_in(&app, &app.cfg.command_topic),
        3,
        "a dry run publishes nothing"
    );

    // The operator replays with a token of their own: under it, no request id is known yet.
    let operator = event_updater::store::tokens::create_token(&app.pool, "operator", None, true)
        .await
        .expect("token");
    let replayed = run_tool(
        &app,
        &["dlq", "replay"],
        &[("REPLAY_AUTHORIZATION", operator.as_str())],
    )
    .await;
    assert!(replayed.status.success(), "{}", explain(&replayed));
    let text = String::from_utf8_lossy(&replayed.stdout);
    assert!(
        text.contains("Replayed 1 dead letters"),
        "{}",
        explain(&replayed)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("not replaying ") && l.contains("request-id big")),
        "{}",
        explain(&replayed)
    );
    // Only the command went back onto the command topic, and it was answered.
    assert_eq!(records_in(&app, &app.cfg.command_topic), 4);
    let answer = app.reply().await;
    assert_eq!(answer.header(header::REQUEST_ID), Some("dead-1"));
    assert_eq!(answer.status(), 400);
    // The event is where the last command left it: the refused reply's snapshot was not
    // applied over it.
    assert_eq!(app.log_len(event).await, 2);
    let app_column: String = sqlx::query_scalar("SELECT app FROM events WHERE event_uuid = $1")
        .bind(event)
        .fetch_one(&app.pool)
        .await
        .expect("app");
    assert_eq!(app_column, "current");
    app.finish().await;
}

#[tokio::test]
async fn a_dead_letter_carries_only_the_allowed_command_headers() {
    let app = TestApp::spawn().await;
    let allowed: [(&str, &[u8]); 6] = [
        (header::REQUEST_ID, b"leaky"),
        (header::CORRELATION_ID, b"corr-7"),
        (
            header::TRACEPARENT,
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        (header::TRACESTATE, b"vendor=1"),
        (header::REPLY_TO, b"nowhere-allowed"),
        (header::CONTENT_TYPE, b"application/json"),
    ];
    let secrets: [(&str, &[u8]); 6] = [
        ("cookie", b"sessionid=secret-cookie"),
        ("proxy-authorization", b"Basic c2VjcmV0"),
        ("x-api-key", b"secret-key"),
        ("X-Api-Key", b"secret-key-2"),
        ("x-custom", b"anything"),
        (header::DLQ_KIND, b"reply"),
    ];
    let headers: Vec<(&str, &[u8])> = allowed.iter().chain(&secrets).copied().collect();
    app.send_raw(Some("k"), Some(b"not json"), &headers).await;
    assert_eq!(app.reply().await.status(), 400);
    let dead = app.dead_letter().await;
    let names: BTreeSet<&str> = dead.headers.iter().map(|(k, _)| k.as_str()).collect();
    for (k, v) in allowed {
        assert!(
            dead.headers
                .iter()
                .any(|(n, got)| n == k && got.as_bytes() == v),
            "{k} is kept: {:?}",
            dead.headers
        );
    }
    for leaked in [
        header::AUTHORIZATION,
        "cookie",
        "proxy-authorization",
        "x-api-key",
        "X-Api-Key",
        "x-custom",
    ] {
        assert!(!names.contains(leaked), "{leaked} leaked: {names:?}");
    }
    for (_, v) in dead.headers.iter() {
        assert!(!v.contains("secret"), "{:?}", dead.headers);
    }
    // The processor's own marks, once each: a made-up `dlq-kind` is not carried over.
    let kinds: Vec<&str> = dead
        .headers
        .iter()
        .filter(|(k, _)| k == header::DLQ_KIND)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(kinds, ["command"]);
    assert_eq!(
        dead.header(header::DLQ_SOURCE_TOPIC),
        Some(app.cfg.command_topic.as_str())
    );
    app.finish().await;
}
