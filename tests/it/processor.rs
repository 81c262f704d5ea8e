//! End to end against a real broker and PostgreSQL: a command in, the REST endpoint's answer out,
//! and the change in the log and the view.

use crate::support::{http_status, wait_for_status, TestApp};
use chrono::{DateTime, Duration, Utc};
use event_updater::domain::reply::header;
use event_updater_harness::kafka::Broker;
use serde_json::{json, Value};
use uuid::Uuid;

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a datetime string"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn create_then_update_keeps_omitted_fields_and_ignores_read_only_and_unknown_keys() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4();
    let before = Utc::now();

    let r = app
        .call(&json!({"request_id": "c1", "event_uuid": event.simple().to_string().to_uppercase(),
            "body": {"action": "login", "app": "  authentik.core ", "user": {"pk": 1, "username": "akadmin"},
                     "client_ip": "2001:0DB8:0:0::1", "context": {"b": 1, "a": [1.0, 1e16]}}}))
        .await;
    assert_eq!(r.status(), 201, "{:?}", r.value);
    assert_eq!(r.value["version"], 1);
    assert_eq!(r.value["request_id"], "c1");
    assert_eq!(r.value["event_uuid"], event.to_string());
    assert_eq!(r.key.as_deref(), Some(event.to_string().as_str()));
    let b = r.body();
    let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "pk",
            "user",
            "action",
            "app",
            "context",
            "client_ip",
            "created",
            "expires",
            "brand"
        ]
    );
    assert_eq!(b["pk"], event.to_string());
    assert_eq!(b["app"], "authentik.core");
    assert_eq!(b["client_ip"], "2001:db8::1");
    assert_eq!(b["brand"], json!({}));
    // Sent values come back as sent (Python floats keep their repr), not re-ordered.
    let raw = String::from_utf8(r.raw.clone()).unwrap();
    assert!(
        raw.contains(r#""context":{"b":1,"a":[1.0,1e+16]}"#),
        "{raw}"
    );
    let created = ts(&b["created"]);
    assert!(
        created >= before - Duration::seconds(1) && created <= Utc::now() + Duration::seconds(1)
    );
    assert_eq!(ts(&b["expires"]), created + Duration::days(365));
    assert!(b["created"].as_str().unwrap().ends_with('Z'));

    let r2 = app
        .call(&json!({"request_id": "c2", "event_uuid": format!("urn:uuid:{event}"), "expected_version": 1,
            "body": {"action": "logout", "app": 5, "pk": "ignored", "created": "2000-01-01T00:00:00Z",
                     "unknown": true, "expires": "2030-06-01T12:00:00+02:00"}}))
        .await;
    assert_eq!(r2.status(), 200, "{:?}", r2.value);
    assert_eq!(r2.value["version"], 2);
    let b2 = r2.body();
    assert_eq!(b2["action"], "logout");
    assert_eq!(b2["app"], "5");
    assert_eq!(b2["expires"], "2030-06-01T10:00:00Z");
    assert_eq!(b2["created"], b["created"], "created is read-only");
    assert_eq!(
        b2["user"],
        json!({"pk": 1, "username": "akadmin"}),
        "omitted fields are kept"
    );
    assert_eq!(b2["client_ip"], "2001:db8::1");
    // Kept JSON values read back as PostgreSQL's jsonb gives them (keys re-ordered, 1e16 an int).
    let raw2 = String::from_utf8(r2.raw.clone()).unwrap();
    assert!(
        raw2.contains(r#""context":{"a":[1.0,10000000000000000],"b":1}"#),
        "{raw2}"
    );
    assert!(b2.get("unknown").is_none());
    assert_eq!(app.log_len(event).await, 2);
    assert_eq!(app.assert_view_is_fold_of_log().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn validation_errors_are_drfs_bodies_and_change_nothing() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    let cases = [
        (
            json!({}),
            json!({"action": ["This field is required."], "app": ["This field is required."]}),
        ),
        (
            json!({"action": "LOGIN", "app": "", "client_ip": "999.1.1.1"}),
            json!({"action": ["\"LOGIN\" is not a valid choice."], "app": ["This field may not be blank."],
                   "client_ip": ["Enter a valid IPv4 or IPv6 address."]}),
        ),
        (
            json!({"action": "login", "app": "a", "expires": "tomorrow", "user": null}),
            json!({"user": ["This field may not be null."],
                   "expires": ["Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."]}),
        ),
        (
            json!({"action": ["login"], "app": {"a": true}}),
            json!({"action": ["\"['login']\" is not a valid choice."], "app": ["Not a valid string."]}),
        ),
        (
            json!([1]),
            json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}),
        ),
        (
            json!("x"),
            json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]}),
        ),
        (
            Value::Null,
            json!({"non_field_errors": ["No data provided"]}),
        ),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let r = app
            .call(&json!({"request_id": format!("v{i}"), "event_uuid": event, "body": body}))
            .await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.body(), expected, "{body}");
        assert!(r.value.get("version").is_none());
    }
    assert_eq!(app.log_len(event.parse().unwrap()).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_bad_uuid_is_404_before_the_body_is_validated() {
    let app = TestApp::spawn().await;
    for (i, u) in [json!("not-a-uuid"), json!(5), Value::Null]
        .iter()
        .enumerate()
    {
        let r = app
            .call(&json!({"request_id": format!("n{i}"), "event_uuid": u, "body": 5}))
            .await;
        assert_eq!(r.status(), 404);
        assert_eq!(r.body(), &json!({"detail": "Not found."}));
        assert_eq!(r.value["event_uuid"], Value::Null);
    }
    app.finish().await;
}

#[tokio::test]
async fn a_stale_expected_version_is_409_with_the_current_version() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    let body = json!({"action": "login", "app": "a"});
    assert_eq!(
        app.call(
            &json!({"request_id": "a", "event_uuid": event, "expected_version": 0, "body": body})
        )
        .await
        .status(),
        201
    );
    let r = app
        .call(&json!({"request_id": "b", "event_uuid": event, "expected_version": 0, "body": body}))
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.body()["current_version"], 1);
    assert!(r.body()["detail"].is_string());
    assert!(r.value.get("version").is_none());
    let r = app
        .call(&json!({"request_id": "c", "event_uuid": event, "expected_version": 5, "body": body}))
        .await;
    assert_eq!(
        (r.status(), r.body()["current_version"].as_u64()),
        (409, Some(1))
    );
    let r = app
        .call(&json!({"request_id": "d", "event_uuid": event, "expected_version": 1, "body": body}))
        .await;
    assert_eq!((r.status(), r.value["version"].as_u64()), (200, Some(2)));
    assert_eq!(app.log_len(event.parse().unwrap()).await, 2);
    app.finish().await;
}

#[tokio::test]
async fn a_redelivered_request_id_gets_the_same_reply_and_no_new_version_and_a_reused_one_422() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    let cmd =
        json!({"request_id": "same", "event_uuid": event, "body": {"action": "login", "app": "a"}});
    let first = app.call(&cmd).await;
    assert_eq!(first.status(), 201);
    // The same command re-serialised with its keys in another order is the same command.
    let again =
        json!({"body": {"app": "a", "action": "login"}, "event_uuid": event, "request_id": "same"});
    let second = app.call(&again).await;
    assert_eq!(second.raw, first.raw, "byte for byte the same reply");
    let bad = app.call(&json!({"request_id": "same", "event_uuid": event, "body": {"action": "logout", "app": "a"}})).await;
    assert_eq!(bad.status(), 422);
    assert!(bad.body()["detail"].as_str().unwrap().contains("same"));
    // A rejected command is remembered too.
    let invalid = json!({"request_id": "inv", "event_uuid": event, "body": {}});
    let r1 = app.call(&invalid).await;
    let r2 = app.call(&invalid).await;
    assert_eq!((r1.status(), &r1.raw), (400, &r2.raw));
    assert_eq!(app.log_len(event.parse().unwrap()).await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_value_that_is_not_json_gets_a_parse_error_and_a_dead_letter() {
    let app = TestApp::spawn().await;
    app.send_raw(
        Some("k1"),
        Some(b"{\"request_id\": oops"),
        &[
            (header::REQUEST_ID, b"hdr-1"),
            (header::CORRELATION_ID, b"corr"),
        ],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.body(),
        &json!({"detail": "JSON parse error - Expecting value: line 1 column 16 (char 15)"})
    );
    assert_eq!(r.value["request_id"], "hdr-1");
    assert_eq!(r.key.as_deref(), Some("k1"));
    assert_eq!(r.header(header::REQUEST_ID), Some("hdr-1"));
    assert_eq!(r.header(header::CORRELATION_ID), Some("corr"));
    let d = app.dead_letter().await;
    assert_eq!(d.raw, b"{\"request_id\": oops");
    assert_eq!(d.key.as_deref(), Some("k1"));
    assert!(d
        .header(header::DLQ_REASON)
        .unwrap()
        .starts_with("JSON parse error"));
    assert_eq!(
        d.header(header::DLQ_SOURCE_TOPIC),
        Some(app.cfg.command_topic.as_str())
    );
    app.finish().await;
}

#[tokio::test]
async fn nul_inside_a_json_string_is_a_400_and_the_partition_keeps_flowing() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    let r = app
        .call(&json!({"request_id": "z1", "event_uuid": event, "body": {"action": "login", "app": "a\u{0}", "context": {"k": "v\u{0}"}}}))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.body(),
        &json!({"app": ["Null characters are not allowed."], "context": ["Null characters are not allowed."]})
    );
    let r = app.call(&json!({"request_id": "z2", "event_uuid": event, "body": {"action": "login", "app": "a"}})).await;
    assert_eq!(r.status(), 201);
    app.finish().await;
}

#[tokio::test]
async fn thirty_quick_updates_to_one_event_are_versions_1_to_30_in_order() {
    thirty_quick_updates(TestApp::spawn().await).await;
}

#[tokio::test]
async fn thirty_quick_updates_with_one_command_per_transaction() {
    thirty_quick_updates(TestApp::spawn_with(|c| c.max_batch = 1).await).await;
}

async fn thirty_quick_updates(app: TestApp) {
    let event = Uuid::new_v4().to_string();
    for i in 0..30 {
        app.send(&json!({"request_id": format!("q{i}"), "event_uuid": event,
            "body": {"action": "model_updated", "app": format!("app-{i}")}}))
            .await;
    }
    let replies = app.replies(30).await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.value["request_id"], format!("q{i}"));
        assert_eq!(r.value["version"], i + 1);
        assert_eq!(r.status(), if i == 0 { 201 } else { 200 });
        assert_eq!(r.body()["app"], format!("app-{i}"));
    }
    assert_eq!(app.log_len(event.parse().unwrap()).await, 30);
    app.assert_view_is_fold_of_log().await;
    app.finish().await;
}

#[tokio::test]
async fn the_view_equals_a_fold_of_the_log_across_many_events() {
    let app = TestApp::spawn_with(|c| c.max_batch = 64).await;
    let events: Vec<String> = (0..10).map(|_| Uuid::new_v4().to_string()).collect();
    let mut n = 0;
    for round in 0..5 {
        for (i, e) in events.iter().enumerate() {
            let mut body = json!({"action": "custom_", "app": format!("r{round}")});
            match (round + i) % 4 {
                0 => body["context"] = json!({"round": round, "z": [1, {"y": null}]}),
                1 => body["client_ip"] = json!(format!("10.0.{round}.{i}")),
                2 => body["expires"] = json!(format!("2031-01-0{}T00:00:00", round + 1)),
                _ => body["brand"] = json!([round, "b"]),
            }
            app.send(
                &json!({"request_id": format!("f{round}-{i}"), "event_uuid": e, "body": body}),
            )
            .await;
            n += 1;
        }
    }
    let replies = app.replies(n).await;
    assert!(replies.iter().all(|r| [200, 201].contains(&r.status())));
    assert_eq!(app.assert_view_is_fold_of_log().await, 10);
    app.finish().await;
}

#[tokio::test]
async fn replies_echo_correlation_id_and_traceparent_and_health_is_served() {
    let app = TestApp::spawn().await;
    let addr = app.app.as_ref().unwrap().http_addr();
    let event = Uuid::new_v4().to_string();
    let cmd =
        json!({"request_id": "h1", "event_uuid": event, "body": {"action": "login", "app": "a"}});
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    app.send_raw(
        Some(&event),
        Some(cmd.to_string().as_bytes()),
        &[
            (header::CORRELATION_ID, b"c-42"),
            (header::TRACEPARENT, tp.as_bytes()),
        ],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.header(header::REQUEST_ID), Some("h1"));
    assert_eq!(r.header(header::CORRELATION_ID), Some("c-42"));
    // The trace is continued: same trace id and flags, the processor's span as the parent.
    let continued = r.header(header::TRACEPARENT).unwrap();
    assert_eq!(&continued[..36], &tp[..36]);
    assert_eq!(&continued[52..], "-01");
    assert_eq!(continued.len(), tp.len());
    assert_ne!(continued, tp);
    assert_eq!(http_status(addr, "/healthz").await, 200);
    assert_eq!(http_status(addr, "/readyz").await, 200);
    assert_eq!(http_status(addr, "/metrics").await, 200);
    app.finish().await;
}

#[tokio::test]
async fn offsets_are_committed_once_commands_are_answered() {
    use rdkafka::Offset;
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    for i in 0..5 {
        app.send(&json!({"request_id": format!("o{i}"), "event_uuid": event, "body": {"action": "login", "app": "a"}}))
            .await;
    }
    let replies = app.replies(5).await;
    // The auto-commit interval is half a second.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let committed = app.committed_offsets().expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 5, "{committed:?}");
    assert_eq!(replies.len(), 5);
    app.finish().await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    let cmd = json!({"request_id": "m1", "event_uuid": event, "expected_version": 0, "body": {"action": "login", "app": "a"}});
    app.call(&cmd).await;
    app.call(&cmd).await;
    app.call(&json!({"request_id": "m2", "event_uuid": event, "expected_version": 0, "body": {"action": "login", "app": "a"}}))
        .await;
    let addr = app.app.as_ref().unwrap().http_addr();
    let names = [
        "event_updater_commands_total{",
        "event_updater_command_latency_seconds_bucket{",
        "event_updater_batch_size_bucket{",
        "event_updater_db_transaction_seconds_bucket{",
        "event_updater_records_published_total{topic=\"reply\"}",
        "event_updater_version_conflicts_total",
        "event_updater_duplicates_total",
        "event_updater_assigned_partitions",
    ];
    // A batch is counted once its acker has every acknowledgement (its change feed records
    // too), which may be just after its reply was read.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !text.contains(n))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} missing from /metrics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.finish().await;
}

/// Writers that race on the same events (as a zombie and the partition's new owner would):
/// batches decided on rows read without locks are fenced by the database, decided again under
/// row locks, and every command is applied exactly once with versions 1..n.
#[tokio::test]
async fn racing_writers_on_the_same_events_are_fenced_and_apply_each_command_once() {
    use event_updater::domain::auth::AuthMode;
    use event_updater::domain::command::{decode, Incoming};
    use event_updater::domain::decide::{BatchSettings, OutcomeKind, Source};
    use event_updater::store;

    let app = TestApp::resources_with(|_| {}).await;
    let pool = store::connect_for_processing(
        &app.cfg.database_url,
        4,
        store::SessionTimeouts::from_config(&app.cfg),
    )
    .await
    .expect("pool");
    let events: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    const WRITERS: usize = 4;
    const BATCHES: usize = 15;
    let writers = (0..WRITERS).map(|w| {
        let (pool, events) = (pool.clone(), events.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for b in 0..BATCHES {
                let commands: Vec<_> = events
                    .iter()
                    .enumerate()
                    .map(|(e, u)| {
                        let value = json!({"request_id": format!("w{w}-b{b}-e{e}"), "event_uuid": u,
                                           "body": {"action": "login", "app": format!("w{w}b{b}")}});
                        let m = Incoming {
                            topic: "race".into(),
                            key: Some(u.to_string().into_bytes()),
                            payload: Some(value.to_string().into_bytes()),
                            ..Incoming::default()
                        };
                        // Each writer reads a partition of its own, in offset order.
                        let source = Source {
                            topic: "race".into(),
                            partition: w as i32,
                            offset: (b * events.len() + e) as i64,
                        };
                        (decode(&m, 1 << 20, AuthMode::Disabled), source)
                    })
                    .collect();
                let outcomes = loop {
                    match store::apply_batch(
                        &pool,
                        &commands,
                        BatchSettings {
                            auth_mode: AuthMode::Disabled,
                            max_reply_bytes: 1_000_000,
                        },
                        Utc::now(),
                    )
                    .await
                    {
                        Ok(o) => break o,
                        // Both writers on the locking path: the processor retries the same way.
                        Err(store::StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                };
                statuses.extend(outcomes.iter().map(|o| (o.status, o.kind)));
            }
            statuses
        })
    });
    let mut statuses = Vec::new();
    for w in futures::future::join_all(writers).await {
        statuses.extend(w.expect("writer"));
    }
    let n = (WRITERS * BATCHES) as i64;
    assert_eq!(statuses.len() as i64, n * events.len() as i64);
    assert!(
        statuses
            .iter()
            .all(|(s, k)| matches!(s, 200 | 201) && *k == OutcomeKind::New),
        "{statuses:?}"
    );
    for u in &events {
        let versions: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM event_log WHERE event_uuid = $1 ORDER BY version",
        )
        .bind(u)
        .fetch_all(&app.pool)
        .await
        .expect("versions");
        assert_eq!(versions, (1..=n).collect::<Vec<_>>());
        let creates = statuses.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(creates, events.len(), "one create per event");
    }
    let replies: i64 = sqlx::query_scalar("SELECT count(*) FROM command_replies")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(replies, n * events.len() as i64);
    app.assert_view_is_fold_of_log().await;
    pool.close().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_whether_the_reply_producer_reaches_a_broker() {
    // A broker of the test's own, which it kills (-9) and starts again on the same data.
    let mut broker = Broker::start("readiness", &[])
        .await
        .expect("a broker of the test's own");
    let app = TestApp::spawn_with(|c| c.kafka_bootstrap_servers = broker.bootstrap_servers()).await;
    let addr = app.app.as_ref().unwrap().http_addr();
    wait_for_status(addr, "/readyz", 200, std::time::Duration::from_secs(60)).await;
    broker.kill9().await.expect("kill -9 of Kafka");
    // Nothing could be answered: not ready (but live: nothing is broken for good).
    wait_for_status(addr, "/readyz", 503, std::time::Duration::from_secs(60)).await;
    assert_eq!(http_status(addr, "/healthz").await, 200);
    broker.restart().await.expect("Kafka restarts on its data");
    wait_for_status(addr, "/readyz", 200, std::time::Duration::from_secs(60)).await;
    // (A fresh reader: the test's own reader saw the outage as an error.)
    let collector = app.collect_replies();
    let event = Uuid::new_v4().to_string();
    app.send(&json!({"request_id": "after-outage", "event_uuid": event, "body": {"action": "login", "app": "a"}}))
        .await;
    let id = "after-outage".to_string();
    collector
        .wait_for_all(
            std::slice::from_ref(&id),
            std::time::Duration::from_secs(60),
        )
        .await
        .expect("replies");
    let replies = collector.stop().await;
    let r: Value = serde_json::from_slice(&replies[&id][0].value).unwrap();
    assert_eq!(r["status"], 201);
    app.finish().await;
    drop(broker);
}
