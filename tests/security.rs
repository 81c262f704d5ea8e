//! Who may write: the contract's 403s, in the REST endpoint's order, and `reply-to` routing.

mod common;

use common::TestApp;
use event_updater::auth;
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
    let no_perm = auth::create_token(&app.pool, "reader", None, false)
        .await
        .unwrap();
    let expired = auth::create_token(
        &app.pool,
        "old",
        Some(chrono::Utc::now() - chrono::Duration::days(1)),
        true,
    )
    .await
    .unwrap();
    let revoked = auth::create_token(&app.pool, "gone", None, true)
        .await
        .unwrap();
    auth::revoke_token(&app.pool, "gone").await.unwrap();

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
        app.send_raw(
            Some(&event),
            Some(&cmd(id, &event)),
            &[("authorization", header.as_bytes())],
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
    app.send_raw_with(None, Some(b"not json"), &[("request-id", b"x2")], false)
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
        &[("reply-to", team_topic.as_bytes())],
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
        &[("reply-to", b"someone-elses-topic")],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(
        (r.value["request_id"].clone(), r.status()),
        (Value::from("r2"), 200)
    );

    // A 403 never goes to a reply-to topic, allowed or not: an unauthenticated sender cannot
    // place a reply carrying someone's request id on a topic that others read.
    app.send_raw(
        Some(&event),
        Some(&cmd("r3", &event)),
        &[
            ("reply-to", team_topic.as_bytes()),
            ("authorization", b"Bearer not-a-token"),
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
