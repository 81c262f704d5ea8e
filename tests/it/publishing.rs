//! Publishing to a topic that cannot take records: the reply topic or the dead-letter topic
//! deleted under the running processor (the broker does not create topics by itself). The
//! processor reports the topic unusable (`/readyz` 503 saying which, a gauge naming it), loses
//! no command while the reply topic is away, and never lets a missing dead-letter topic hold a
//! command up; once the topic is back, it is ready again. And the producer's settings: one that
//! would make it unsafe stops the start, and no secret of the configuration reaches the log.

use std::time::Duration;

use event_updater::domain::reply::header;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::Offset;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{client, http_get, wait_for_status, TestApp};

/// Bound on each wait for the processor to notice a change (generous: a slow CI machine).
pub(crate) const NOTICE: Duration = Duration::from_secs(60);

fn admin(app: &TestApp) -> AdminClient<DefaultClientContext> {
    client(&app.cfg).create().expect("admin client")
}

pub(crate) async fn delete_topic(app: &TestApp, topic: &str) {
    let results = admin(app)
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .expect("delete topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
}

/// Creates `topic` again, retrying while the broker still finishes deleting it.
pub(crate) async fn recreate_topic(app: &TestApp, topic: &str) {
    let admin = admin(app);
    let new = NewTopic::new(topic, app.cfg.topic_partitions, TopicReplication::Fixed(1));
    let deadline = std::time::Instant::now() + NOTICE;
    loop {
        let result = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .expect("create topics")
            .remove(0);
        match result {
            Ok(_) => return,
            Err((_, e)) if std::time::Instant::now() < deadline => {
                eprintln!("create {topic}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err((_, e)) => panic!("create {topic}: {e}"),
        }
    }
}

/// The value of the `event_updater_topic_unusable` gauge for `topic`, if `/metrics` has one.
async fn unusable_gauge(app: &TestApp, destination: &str, topic: &str) -> Option<f64> {
    let addr = app.app.as_ref().expect("in process").http_addr();
    let metrics = http_get(addr, "/metrics").await;
    let series =
        format!("event_updater_topic_unusable{{destination=\"{destination}\",topic=\"{topic}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("a gauge value"))
}

/// The value of `event_updater_dead_letters_dropped_total` for `topic` (0 when absent).
async fn dropped_dead_letters(app: &TestApp, topic: &str) -> f64 {
    let addr = app.app.as_ref().expect("in process").http_addr();
    let metrics = http_get(addr, "/metrics").await;
    let series = format!("event_updater_dead_letters_dropped_total{{topic=\"{topic}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a counter value"))
}

/// Waits until the group's committed offsets on the command topic add up to `n` (the topic's
/// partitions all began at 0): every one of the first `n` records is answered and stored past.
pub(crate) async fn wait_for_committed(app: &TestApp, n: i64) {
    let deadline = std::time::Instant::now() + NOTICE;
    loop {
        let committed: i64 = app
            .committed_offsets()
            .expect("committed offsets")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .sum();
        if committed == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group has committed {committed} of {n} records after {NOTICE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn command(request_id: &str, event: &str) -> Value {
    json!({"request_id": request_id, "event_uuid": event, "body": {"action": "login", "app": "a"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_reply_topic_makes_the_service_unready_and_no_command_is_lost() {
    let app = TestApp::spawn().await;
    let addr = app.app.as_ref().unwrap().http_addr();
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    let first = app
        .call(&command("before", &Uuid::new_v4().to_string()))
        .await;
    assert_eq!(first.status(), 201);
    let reply_topic = app.cfg.reply_topic.clone();

    delete_topic(&app, &reply_topic).await;
    // Commands sent while the reply topic is gone: applied, their replies held.
    let events: Vec<String> = (0..6).map(|_| Uuid::new_v4().to_string()).collect();
    let ids: Vec<String> = (0..events.len())
        .map(|i| format!("meanwhile-{i}"))
        .collect();
    for (id, event) in ids.iter().zip(&events) {
        app.send(&command(id, event)).await;
    }
    wait_for_status(addr, "/readyz", 503, NOTICE).await;
    let why = http_get(addr, "/readyz").await;
    assert!(why.contains("reply topic"), "{why}");
    assert_eq!(unusable_gauge(&app, "reply", &reply_topic).await, Some(1.0));

    recreate_topic(&app, &reply_topic).await;
    let collector = app.collect_replies();
    collector
        .wait_for_all(&ids, NOTICE)
        .await
        .expect("every command sent while the reply topic was gone is answered");
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    assert_eq!(unusable_gauge(&app, "reply", &reply_topic).await, Some(0.0));
    wait_for_committed(&app, 1 + ids.len() as i64).await;
    let replies = collector.stop().await;
    for (id, event) in ids.iter().zip(&events) {
        let r: Value = serde_json::from_slice(&replies[id][0].value).unwrap();
        assert_eq!(
            (r["status"].as_u64(), r["version"].as_u64()),
            (Some(201), Some(1)),
            "{id}"
        );
        let event: Uuid = event.parse().unwrap();
        assert_eq!(app.log_len(event).await, 1, "{id} applied once");
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_never_holds_a_command_up() {
    let app = TestApp::spawn().await;
    let addr = app.app.as_ref().unwrap().http_addr();
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    let dlq = app.cfg.dlq_topic.clone();

    delete_topic(&app, &dlq).await;
    // One event, so both commands are in one partition: the valid one comes after the one
    // that is dead-lettered, in the same lane.
    let event = Uuid::new_v4().to_string();
    app.send_raw(
        Some(&event),
        Some(b"not json"),
        &[(header::REQUEST_ID, b"undecodable")],
    )
    .await;
    app.send(&command("valid", &event)).await;
    let collector = app.collect_replies();
    let ids = ["undecodable".to_string(), "valid".to_string()];
    collector
        .wait_for_all(&ids, NOTICE)
        .await
        .expect("both commands are answered although their dead letter cannot be delivered");
    // And the offsets move on past them: the dead letter holds nothing up.
    wait_for_committed(&app, 2).await;
    // Defined state: the dead letter is dropped, counted and logged, the service not ready.
    wait_for_status(addr, "/readyz", 503, NOTICE).await;
    let why = http_get(addr, "/readyz").await;
    assert!(why.contains("dead-letter topic"), "{why}");
    assert_eq!(unusable_gauge(&app, "dlq", &dlq).await, Some(1.0));
    assert!(dropped_dead_letters(&app, &dlq).await >= 1.0);

    // The topic comes back: ready again, and the next dead letter is delivered.
    recreate_topic(&app, &dlq).await;
    wait_for_status(addr, "/readyz", 200, NOTICE).await;
    assert_eq!(unusable_gauge(&app, "dlq", &dlq).await, Some(0.0));
    app.send_raw(
        Some(&event),
        Some(b"still not json"),
        &[(header::REQUEST_ID, b"after")],
    )
    .await;
    let reader = app.new_reader(&dlq);
    let d = TestApp::read_from(&reader).await;
    assert_eq!(d.raw, b"still not json");
    drop(reader);

    let replies = collector.stop().await;
    let status = |id: &str| -> u64 {
        let r: Value = serde_json::from_slice(&replies[id][0].value).unwrap();
        r["status"].as_u64().unwrap()
    };
    assert_eq!((status("undecodable"), status("valid")), (400, 201));
    app.finish().await;
}

#[tokio::test]
async fn unsafe_producer_settings_stop_the_start_and_secrets_stay_out_of_the_log() {
    let app = TestApp::resources_with(|_| {}).await;
    // The local PostgreSQL trusts loopback connections: the password is accepted and ignored.
    let database_url = format!("{}?password=hunter2", app.cfg.database_url);

    let migrated = app
        .binary()
        .arg("migrate")
        .env("DATABASE_URL", &database_url)
        .output()
        .await
        .expect("event-updater migrate runs");
    let said = String::from_utf8_lossy(&migrated.stdout).into_owned();
    assert!(migrated.status.success(), "{said}");
    assert!(said.contains("password=***"), "{said}");

    let mut serve = app.binary();
    serve
        .arg("serve")
        .env("DATABASE_URL", &database_url)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env(
            "KAFKA_PROPERTIES",
            "sasl.oauthbearer.config=principal=svc secret=hunter3;enable.idempotence=false",
        )
        .kill_on_drop(true);
    let out = tokio::time::timeout(NOTICE, serve.output())
        .await
        .expect("the start is refused, not run")
        .expect("event-updater serve runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("enable.idempotence=false"), "{log}");
    for secret in ["hunter2", "hunter3"] {
        assert!(
            !log.contains(secret) && !said.contains(secret),
            "{secret}: {log}"
        );
    }
    app.finish().await;
}
