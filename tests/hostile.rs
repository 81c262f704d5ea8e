//! Hostile input: every record gets a clear reply where one can be addressed, records that
//! cannot be decoded get a dead-letter copy with the reason, and the partition keeps flowing.
//! (The differential test, `differential.rs`, compares such input with DRF itself.)

mod common;

use common::TestApp;
use serde_json::json;
use uuid::Uuid;

const LIMIT: usize = 200_000;

#[tokio::test]
async fn undecodable_records_get_a_400_and_a_dead_letter_and_the_partition_flows_on() {
    let app = TestApp::spawn_with(|c| c.max_message_bytes = LIMIT).await;
    let key = Uuid::new_v4().to_string();
    let deep = format!(
        r#"{{"event_uuid": "{key}", "body": {}}}"#,
        "[".repeat(100_000)
    );
    let oversize = format!(
        r#"{{"event_uuid": "{key}", "body": "{}"}}"#,
        "x".repeat(LIMIT)
    );
    let cases: Vec<(Option<Vec<u8>>, String)> = vec![
        (Some(b"\xff\xfe{}".to_vec()), "JSON parse error - 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte".into()),
        (Some(b"hello".to_vec()), "JSON parse error - Expecting value: line 1 column 1 (char 0)".into()),
        (Some(Vec::new()), "JSON parse error - Expecting value: line 1 column 1 (char 0)".into()),
        (None, "JSON parse error - Expecting value: line 1 column 1 (char 0)".into()),
        (Some(deep.into_bytes()), "JSON parse error - maximum recursion depth exceeded while decoding a JSON array from a unicode string".into()),
        (Some(oversize.clone().into_bytes()), format!("Command value is {} bytes, over the limit of {LIMIT} bytes.", oversize.len())),
    ];
    for (i, (value, _)) in cases.iter().enumerate() {
        let id = format!("h{i}");
        app.send_raw(
            Some(&key),
            value.as_deref(),
            &[("request-id", id.as_bytes())],
        )
        .await;
    }
    for (i, (value, detail)) in cases.iter().enumerate() {
        let r = app.reply().await;
        assert_eq!(r.value["request_id"], format!("h{i}"));
        assert_eq!(
            (r.status(), r.body()),
            (400, &json!({"detail": detail})),
            "case {i}"
        );
        let d = app.dead_letter().await;
        assert_eq!(
            d.raw,
            value.clone().unwrap_or_default(),
            "case {i}: the dead letter carries the record as received"
        );
        assert_eq!(d.header("dlq-reason"), Some(detail.as_str()));
        assert_eq!(d.header("dlq-status"), Some("400"));
        assert_eq!(d.key.as_deref(), Some(key.as_str()));
        assert_eq!(
            d.header("authorization"),
            None,
            "credentials never reach the DLQ"
        );
    }
    // Non-object values: DRF's non_field_errors, with a dead letter too.
    for (v, t) in [("[]", "list"), ("7", "int"), ("null", "")] {
        app.send_raw(Some(&key), Some(v.as_bytes()), &[]).await;
        let r = app.reply().await;
        let expected = if t.is_empty() {
            "No data provided".to_string()
        } else {
            format!("Invalid data. Expected a dictionary, but got {t}.")
        };
        assert_eq!(r.body(), &json!({"non_field_errors": [expected]}));
        assert_eq!(app.dead_letter().await.raw, v.as_bytes());
    }
    // The same partition still flows.
    let r = app.call(&json!({"request_id": "after", "event_uuid": key, "body": {"action": "login", "app": "a"}})).await;
    assert_eq!(r.status(), 201);
    app.finish().await;
}

#[tokio::test]
async fn odd_but_decodable_input_is_answered_as_the_rest_endpoint_would() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4().to_string();

    // Numbers beyond 64 bits are kept exactly in JSON fields...
    let big = "123456789012345678901234567890123456789";
    let raw = format!(
        r#"{{"request_id": "b1", "event_uuid": "{event}", "body": {{"action": "login", "app": "a", "context": {{"n": {big}, "f": 1.5e300}}}}}}"#
    );
    app.send_raw(Some(&event), Some(raw.as_bytes()), &[]).await;
    let r = app.reply().await;
    assert_eq!(r.status(), 201);
    assert!(String::from_utf8_lossy(&r.raw)
        .contains(&format!(r#""context":{{"n":{big},"f":1.5e+300}}"#)));
    // ...and refused where an integer must fit.
    let r = app.call(&json!({"request_id": "b2", "event_uuid": event, "expected_version": 18446744073709551616u128, "body": {"action": "login", "app": "a"}})).await;
    assert_eq!(
        r.body(),
        &json!({"expected_version": ["Ensure this value is less than or equal to 9223372036854775807."]})
    );

    // Duplicate keys: the last value wins, as in Python.
    let raw = format!(
        r#"{{"request_id": "b3", "event_uuid": "{event}", "body": {{"action": "login", "app": "a", "action": "logout"}}}}"#
    );
    app.send_raw(Some(&event), Some(raw.as_bytes()), &[]).await;
    let r = app.reply().await;
    assert_eq!(
        (r.status(), r.body()["action"].as_str()),
        (200, Some("logout"))
    );

    // NUL in strings: DRF's texts, never a database error.
    let r = app.call(&json!({"request_id": "b4", "event_uuid": event, "body": {"action": "lo\u{0}gin", "app": "a", "user": {"k\u{0}": 1}}})).await;
    assert_eq!(
        r.body(),
        &json!({"user": ["Null characters are not allowed."], "action": ["\"lo\u{0}gin\" is not a valid choice."]})
    );

    // A lone surrogate escape is a Python str's character: DRF's field texts (jsonb cannot
    // hold it, so a JSON field gets a 400 rather than authentik's 500).
    let raw = format!(
        r#"{{"request_id": "b5", "event_uuid": "{event}", "x\udfff": 1, "body": {{"action": "login", "app": "\ud800", "context": ["\udc00"]}}}}"#
    );
    app.send_raw(Some(&event), Some(raw.as_bytes()), &[]).await;
    let r = app.reply().await;
    assert_eq!(
        r.body(),
        &json!({"app": ["Surrogate characters are not allowed: U+D800."], "context": ["Surrogate characters are not allowed: U+DC00."]})
    );
    // 1e400 is Python's inf: ignored where ignored, `str()` is "inf".
    let raw = format!(
        r#"{{"request_id": "b6", "event_uuid": "{event}", "n": 1e400, "body": {{"action": "login", "app": -1e400}}}}"#
    );
    app.send_raw(Some(&event), Some(raw.as_bytes()), &[]).await;
    let r = app.reply().await;
    assert_eq!((r.status(), r.body()["app"].as_str()), (200, Some("-inf")));

    // A request_id of 10,000 characters: a 400 under the fallback id, and a dead letter.
    let long = "r".repeat(10_000);
    app.send_raw(
        Some(&event),
        Some(json!({"request_id": long, "event_uuid": event, "body": {"action": "login", "app": "a"}}).to_string().as_bytes()),
        &[("request-id", b"fallback-id")],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(r.value["request_id"], "fallback-id");
    assert_eq!(
        r.body(),
        &json!({"request_id": ["Ensure this field has no more than 200 characters."]})
    );
    assert!(app
        .dead_letter()
        .await
        .header("dlq-reason")
        .unwrap()
        .starts_with("request_id"));

    // Headers with odd bytes: an unusable request-id header falls back to the coordinates;
    // other headers are echoed byte for byte.
    let cmd = json!({"event_uuid": event, "body": {"action": "login", "app": "a"}}).to_string();
    app.send_raw(
        None,
        Some(cmd.as_bytes()),
        &[
            ("request-id", b"\xff\x00"),
            ("correlation-id", b"\xc3\x28\x00"),
        ],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(r.status(), 200);
    let id = r.value["request_id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with(&format!("{}/", app.cfg.command_topic)),
        "{id}"
    );
    assert_eq!(
        r.header("correlation-id"),
        Some(String::from_utf8_lossy(b"\xc3\x28\x00").as_ref())
    );
    // A record without a key is still answered, keyed by the canonical UUID.
    assert_eq!(r.key.as_deref(), Some(event.as_str()));
    app.finish().await;
}
