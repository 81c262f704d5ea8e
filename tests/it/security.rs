//! Who may write: the contract's 403s, in the REST endpoint's order, request ids scoped by
//! credential, `reply-to` routing, and a flood of unauthenticated records.

use std::time::Duration;

use crate::support::TestApp;
use event_updater::domain::auth;
use event_updater::domain::reply::header;
use event_updater::store::tokens;
use event_updater_harness::kafka::Broker;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use uuid::Uuid;

fn cmd(request_id: &str, event: &str) -> Vec<u8> {
    json!({"request_id": request_id, "event_uuid": event, "body": {"action": "login", "app": "a"}})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn commands_without_a_usable_token_get_the_contracts_403s() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();
    let no_perm = tokens::create_token(&app.pool, "reader", None, false)
        .await
        .unwrap();
    let expired = tokens::create_token(
        &app.pool,
        "old",
        Some(chrono::Utc::now() - chrono::Duration::days(1)),
        true,
    )
    .await
    .unwrap();
    let revoked = tokens::create_token(&app.pool, "gone", None, true)
        .await
        .unwrap();
    tokens::revoke_token(&app.pool, "gone").await.unwrap();

    app.send_raw_with(Some(&event), Some(&cmd("s1", &event)), &[], false)
        .await;
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "s2",
            "Basic dXNlcjpwYXNz".into(),
            "Unsupported authentication type",
        ),
        ("s3", bearer("not-a-token"), "Token invalid/expired"),
        ("s4", bearer(&expired), "Token invalid/expired"),
        ("s5", bearer(&revoked), "Token invalid/expired"),
        (
            "s6",
            bearer(&no_perm),
            "You do not have permission to perform this action.",
        ),
    ];
    for (id, header, _) in &cases {
        // A command without a bearer token is answered without its value being read: its 403
        // carries the `request-id` header's id.
        app.send_raw(
            Some(&event),
            Some(&cmd(id, &event)),
            &[
                (header::AUTHORIZATION, header.as_bytes()),
                (header::REQUEST_ID, id.as_bytes()),
            ],
        )
        .await;
    }
    let r = app.reply().await;
    assert_eq!(
        (r.status(), r.body()),
        (
            403,
            &json!({"detail": "Authentication credentials were not provided."})
        )
    );
    for (id, _, text) in &cases {
        let r = app.reply().await;
        assert_eq!(r.value["request_id"], *id);
        assert_eq!(
            (r.status(), r.body()),
            (403, &json!({"detail": text})),
            "{id}"
        );
        // The token never appears in a reply.
        assert!(!String::from_utf8_lossy(&r.raw).contains("eut_"));
    }
    assert_eq!(app.log_len(event.parse().unwrap()).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn authentication_comes_before_the_uuid_and_the_body_and_a_403_is_not_remembered() {
    let app = TestApp::spawn().await;
    // 403 before 404 and before a JSON parse error.
    app.send_raw_with(
        None,
        Some(br#"{"request_id": "x1", "event_uuid": "nope"}"#),
        &[],
        false,
    )
    .await;
    app.send_raw_with(
        None,
        Some(b"not json"),
        &[(header::REQUEST_ID, b"x2")],
        false,
    )
    .await;
    for _ in 0..2 {
        let r = app.reply().await;
        assert_eq!(r.status(), 403, "{:?}", r.value);
    }
    // The same request id, now with a token, is handled: a 403 does not claim the id.
    let event = Uuid::new_v4().to_string();
    app.send_raw_with(Some(&event), Some(&cmd("x3", &event)), &[], false)
        .await;
    assert_eq!(app.reply().await.status(), 403);
    app.send_raw(Some(&event), Some(&cmd("x3", &event)), &[])
        .await;
    let r = app.reply().await;
    assert_eq!((r.status(), r.value["version"].as_u64()), (201, Some(1)));
    app.finish().await;
}

#[tokio::test]
async fn with_auth_disabled_no_header_is_needed() {
    let app = TestApp::spawn_with(|c| c.auth_mode = auth::AuthMode::Disabled).await;
    let event = Uuid::new_v4().to_string();
    app.send_raw_with(Some(&event), Some(&cmd("d1", &event)), &[], false)
        .await;
    assert_eq!(app.reply().await.status(), 201);
    app.finish().await;
}

#[tokio::test]
async fn reply_to_is_honoured_only_for_allowed_topics() {
    let mut app = TestApp::spawn_with(|c| c.reply_to_allow = vec!["*-team-replies".into()]).await;
    let (team_topic, team_reader) = app.extra_topic("team-replies").await;
    let event = Uuid::new_v4().to_string();
    app.send_raw(
        Some(&event),
        Some(&cmd("r1", &event)),
        &[(header::REPLY_TO, team_topic.as_bytes())],
    )
    .await;
    let r = TestApp::read_from(&team_reader).await;
    assert_eq!(
        (r.value["request_id"].clone(), r.status()),
        (Value::from("r1"), 201)
    );

    app.send_raw(
        Some(&event),
        Some(&cmd("r2", &event)),
        &[(header::REPLY_TO, b"someone-elses-topic")],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(
        (r.value["request_id"].clone(), r.status()),
        (Value::from("r2"), 200)
    );

    // A 403 never goes to a reply-to topic, allowed or not: an unauthenticated sender cannot
    // place a reply carrying someone's request id on a topic that others read. (A made-up
    // token's command is not parsed: its 403 is filed under the `request-id` header's id.)
    app.send_raw(
        Some(&event),
        Some(&cmd("r3", &event)),
        &[
            (header::REPLY_TO, team_topic.as_bytes()),
            (header::AUTHORIZATION, b"Bearer not-a-token"),
            (header::REQUEST_ID, b"r3"),
        ],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(
        (r.value["request_id"].clone(), r.status()),
        (Value::from("r3"), 403)
    );
    drop(team_reader);
    app.finish().await;
}

#[tokio::test]
async fn request_ids_are_scoped_by_credential_and_a_redelivery_outlives_a_revoked_token() {
    let app = TestApp::spawn().await;
    let alice = format!(
        "Bearer {}",
        tokens::create_token(&app.pool, "alice", None, true)
            .await
            .unwrap()
    );
    let bob = format!(
        "Bearer {}",
        tokens::create_token(&app.pool, "bob", None, true)
            .await
            .unwrap()
    );
    let (e1, e2) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let as_ = |who: &str| vec![(header::AUTHORIZATION, who.as_bytes().to_vec())];
    let send = |event: &str, value: Vec<u8>, who: &str| {
        let (event, headers) = (event.to_string(), as_(who));
        let app = &app;
        async move {
            let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            app.send_raw(Some(&event), Some(&value), &h).await;
            app.reply().await
        }
    };
    let first = send(&e1, cmd("same", &e1), &alice).await;
    assert_eq!(
        (first.status(), first.value["version"].as_u64()),
        (201, Some(1))
    );
    // Bob's "same" is another request: applied, not a 422 and not alice's reply.
    let r = send(&e2, cmd("same", &e2), &bob).await;
    assert_eq!(
        (r.status(), r.value["event_uuid"].as_str()),
        (201, Some(e2.as_str()))
    );
    // Within alice's scope the id is taken.
    let other =
        json!({"request_id": "same", "event_uuid": e1, "body": {"action": "logout", "app": "a"}});
    let r = send(&e1, other.to_string().into_bytes(), &alice).await;
    assert_eq!(r.status(), 422);

    // Alice's token is revoked; her command is redelivered (a crash before its offset was
    // committed): the stored reply, byte for byte, and no second change.
    tokens::revoke_token(&app.pool, "alice").await.unwrap();
    let again = send(&e1, cmd("same", &e1), &alice).await;
    assert_eq!(again.raw, first.raw);
    assert_eq!(app.log_len(e1.parse().unwrap()).await, 1);
    // Anything new from the revoked token is a 403.
    let r = send(&e1, cmd("new", &e1), &alice).await;
    assert_eq!(
        (r.status(), r.body()),
        (403, &json!({"detail": "Token invalid/expired"}))
    );
    assert_eq!(app.log_len(e1.parse().unwrap()).await, 1);
    assert_eq!(app.log_len(e2.parse().unwrap()).await, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_one_mib_records_is_answered_in_bounded_memory() {
    const RECORDS: usize = 2000;
    const BYTES: usize = 1 << 20;
    // A broker of the test's own holds the 2 GiB, and its data goes with it; the shared broker
    // is spared. Its records may be up to 2 MB.
    const PARTITIONS: usize = 12;
    let broker = Broker::start("flood", &[("message.max.bytes", "2000000")])
        .await
        .expect("a broker of the test's own");
    let app = TestApp::resources_with(|c| {
        c.topic_partitions = PARTITIONS as i32;
        c.kafka_bootstrap_servers = broker.bootstrap_servers();
    })
    .await;
    let collector = app.collect_replies();
    // The operator asks librdkafka to prefetch up to 2 GiB; the processor keeps its own bound.
    let child = app
        .start_child(
            "flood",
            &[(
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000;heartbeat.interval.ms=500;queued.max.messages.kbytes=2097151;fetch.max.bytes=524288000;max.partition.fetch.bytes=524288000",
            )],
        )
        .await;
    let producer: FutureProducer = crate::support::client(&app.cfg)
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let event = Uuid::new_v4().to_string();
    // A JSON-looking value: parsing it would cost a tree of a million-odd nodes.
    let mut value =
        format!(r#"{{"event_uuid": "{event}", "body": {{"context": {{"k": ["#).into_bytes();
    while value.len() < BYTES - 8 {
        value.extend_from_slice(b"1,");
    }
    value.extend_from_slice(b"1]}}}");
    value.resize(BYTES, b' ');
    let ids: Vec<String> = (0..RECORDS).map(|i| format!("flood-{i}")).collect();
    for (c, chunk) in ids.chunks(50).enumerate() {
        let sends = chunk.iter().enumerate().map(|(i, id)| {
            let headers = OwnedHeaders::new().insert(Header {
                key: header::REQUEST_ID,
                value: Some(id.as_bytes()),
            });
            producer.send(
                FutureRecord::to(&app.cfg.command_topic)
                    .partition(((c * 50 + i) % PARTITIONS) as i32)
                    .key(event.as_str())
                    .payload(value.as_slice())
                    .headers(headers),
                Timeout::After(Duration::from_secs(120)),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("flood record delivered");
        }
    }
    collector
        .wait_for_all(&ids, Duration::from_secs(300))
        .await
        .expect("replies");
    // A valid command after the flood, on the same partition, is applied.
    app.send(&json!({"request_id": "after-flood", "event_uuid": event, "body": {"action": "login", "app": "a"}}))
        .await;
    collector
        .wait_for_all(&["after-flood".to_string()], Duration::from_secs(60))
        .await
        .expect("replies");
    let peak = child.peak_rss().expect("peak RSS");
    child
        .stop(Duration::from_secs(30))
        .await
        .expect("the processor stops cleanly");
    let replies = collector.stop().await;
    for id in &ids {
        let r: Value = serde_json::from_slice(&replies[id][0].value).unwrap();
        assert_eq!(
            (r["status"].as_u64(), &r["body"]),
            (
                Some(403),
                &json!({"detail": "Authentication credentials were not provided."})
            ),
            "{id}"
        );
    }
    let after: Value = serde_json::from_slice(&replies["after-flood"][0].value).unwrap();
    assert_eq!(after["status"], 201);
    println!(
        "peak RSS of the processor during the flood: {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(peak < 150 * 1024 * 1024, "peak RSS {peak} bytes");
    app.finish().await;
    drop(broker);
}
