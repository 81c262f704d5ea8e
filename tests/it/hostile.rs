//! Hostile input: every record gets a clear reply where one can be addressed, records that
//! cannot be decoded get a dead-letter copy with the reason, and the partition keeps flowing.
//! (The differential test, `differential.rs`, compares such input with DRF itself.)

use crate::support::TestApp;
use event_updater::domain::reply::header;
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
            &[(header::REQUEST_ID, id.as_bytes())],
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
        assert_eq!(d.header(header::DLQ_REASON), Some(detail.as_str()));
        assert_eq!(d.header(header::DLQ_STATUS), Some("400"));
        assert_eq!(d.key.as_deref(), Some(key.as_str()));
        assert_eq!(
            d.header(header::AUTHORIZATION),
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
        &[(header::REQUEST_ID, b"fallback-id")],
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
        .header(header::DLQ_REASON)
        .unwrap()
        .starts_with("request_id"));

    // Headers with odd bytes: an unusable request-id header falls back to the coordinates;
    // other headers are echoed byte for byte.
    let cmd = json!({"event_uuid": event, "body": {"action": "login", "app": "a"}}).to_string();
    app.send_raw(
        Some(&event),
        Some(cmd.as_bytes()),
        &[
            (header::REQUEST_ID, b"\xff\x00"),
            (header::CORRELATION_ID, b"\xc3\x28\x00"),
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
        r.header(header::CORRELATION_ID),
        Some(String::from_utf8_lossy(b"\xc3\x28\x00").as_ref())
    );
    assert_eq!(r.key.as_deref(), Some(event.as_str()));
    app.finish().await;
}

/// `event_updater_commands_refused_total{reason}` as the in-process processor's `/metrics`
/// shows it (the recorder is the test process's: other tests' processors count there too),
/// once it reaches `at_least` or 30 s passed: a batch is counted once its acker has every
/// acknowledgement, which may be just after its replies were read.
async fn refused(app: &TestApp, reason: &str, at_least: u64) -> u64 {
    let series = format!("event_updater_commands_refused_total{{reason=\"{reason}\"}} ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text =
            crate::support::http_get(app.app.as_ref().unwrap().http_addr(), "/metrics").await;
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n >= at_least || std::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_record_key_other_than_the_event_uuid_is_a_400_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let event = Uuid::new_v4();
    let canonical = event.to_string();
    let upper = canonical.to_uppercase();
    let cmd = |id: &str, spelled: &str| {
        json!({"request_id": id, "event_uuid": spelled, "body": {"action": "login", "app": "a"}})
            .to_string()
            .into_bytes()
    };
    let text = |what: &str| {
        format!("The record key must be the event's UUID (\"{canonical}\"), so that the commands of one event stay in order; {what}.")
    };
    // Another spelling of the same event as key: it could land in another partition.
    app.send_raw(Some(&upper), Some(&cmd("k1", &canonical)), &[])
        .await;
    // No key at all: the partition is the producer's choice.
    app.send_raw(None, Some(&cmd("k2", &canonical)), &[]).await;
    // Another event's UUID.
    let other = Uuid::new_v4().to_string();
    app.send_raw(Some(&other), Some(&cmd("k3", &canonical)), &[])
        .await;
    let expected = [
        text(&format!("it is {upper:?}")),
        text("the record has no key"),
        text(&format!("it is {other:?}")),
    ];
    let mut got = app.replies(3).await;
    got.sort_by_key(|r| r.value["request_id"].as_str().unwrap().to_string());
    for (r, detail) in got.iter().zip(&expected) {
        assert_eq!((r.status(), r.body()), (400, &json!({"detail": detail})));
        // Answered under the event's canonical key, beside its other replies.
        assert_eq!(r.key.as_deref(), Some(canonical.as_str()));
    }
    assert_eq!(app.log_len(event).await, 0);
    assert!(refused(&app, "key_mismatch", 3).await >= 3);
    // The UUID as sent, and its canonical form, are both fine as keys.
    app.send_raw(Some(&upper), Some(&cmd("k4", &upper)), &[])
        .await;
    assert_eq!(app.reply().await.status(), 201);
    app.send_raw(Some(&canonical), Some(&cmd("k5", &upper)), &[])
        .await;
    assert_eq!(app.reply().await.status(), 200);
    app.finish().await;
}

/// A command value with `pad` (an envelope key the processor ignores) grown to `size` bytes.
fn padded(id: &str, event: &str, body: serde_json::Value, size: usize) -> Vec<u8> {
    let bare = json!({"request_id": id, "event_uuid": event, "pad": "", "body": body}).to_string();
    assert!(bare.len() <= size);
    let v = json!({"request_id": id, "event_uuid": event, "pad": "p".repeat(size - bare.len()), "body": body});
    let bytes = v.to_string().into_bytes();
    assert_eq!(bytes.len(), size);
    bytes
}

#[tokio::test]
async fn commands_and_replies_just_under_and_just_over_their_limits() {
    const MESSAGE: usize = 60_000;
    const REPLY: usize = 30_000;
    let app = TestApp::spawn_with(|c| {
        c.max_message_bytes = MESSAGE;
        c.max_reply_bytes = REPLY;
    })
    .await;
    let event = Uuid::new_v4().to_string();
    let small = json!({"action": "login", "app": "a"});
    // A value of exactly MAX_MESSAGE_BYTES is taken; one byte more is refused unparsed.
    app.send_raw(
        Some(&event),
        Some(&padded("m1", &event, small.clone(), MESSAGE)),
        &[],
    )
    .await;
    let r = app.reply().await;
    assert_eq!((r.status(), r.value["version"].as_u64()), (201, Some(1)));
    app.send_raw(
        Some(&event),
        Some(&padded("m2", &event, small.clone(), MESSAGE + 1)),
        &[],
    )
    .await;
    let r = app.reply().await;
    assert_eq!(
        (r.status(), r.body()),
        (
            400,
            &json!({"detail": format!("Command value is {} bytes, over the limit of {MESSAGE} bytes.", MESSAGE + 1)})
        )
    );
    // Replies echo the body: one a little under MAX_REPLY_BYTES is sent whole...
    let body = |n: usize| json!({"action": "login", "app": "a", "context": {"pad": "c".repeat(n)}});
    app.send_raw(
        Some(&event),
        Some(&padded("r1", &event, body(REPLY - 1_000), 40_000)),
        &[],
    )
    .await;
    let r = app.reply().await;
    assert_eq!((r.status(), r.value["version"].as_u64()), (200, Some(2)));
    assert!(
        r.raw.len() <= REPLY && r.raw.len() > REPLY - 1_000,
        "{}",
        r.raw.len()
    );
    // ...one a little over is not applied, and the 400 says why (stored: a redelivery gets it
    // again).
    let over = padded("r2", &event, body(REPLY + 10), 40_000);
    for _ in 0..2 {
        app.send_raw(Some(&event), Some(&over), &[]).await;
        let r = app.reply().await;
        assert_eq!(r.status(), 400);
        let detail = r.body()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.starts_with("The reply to this command would be ")
                && detail.ends_with(&format!(
                    " bytes, over the limit of {REPLY} bytes; the command was not applied."
                )),
            "{detail}"
        );
    }
    assert_eq!(app.log_len(event.parse().unwrap()).await, 2);
    assert!(refused(&app, "reply_too_large", 1).await >= 1);
    app.finish().await;
}

#[tokio::test]
async fn a_reply_the_broker_refuses_goes_to_the_dlq_and_a_short_error_reply_answers() {
    // The producer's limit set lower than the replies (a topic whose `max.message.bytes` is
    // below MAX_REPLY_BYTES refuses them the same way, from the broker).
    let app = TestApp::spawn_with(|c| {
        c.kafka_properties
            .push(("message.max.bytes".into(), "20000".into()))
    })
    .await;
    let event = Uuid::new_v4().to_string();
    let cmd = json!({"request_id": "big", "event_uuid": event,
                     "body": {"action": "login", "app": "a", "context": {"pad": "c".repeat(25_000)}}});
    app.send(&cmd).await;
    let r = app.reply().await;
    assert_eq!(r.value["request_id"], "big");
    assert_eq!(r.status(), 500);
    assert_eq!(
        (
            r.body()["reply_status"].as_u64(),
            r.body()["reply_version"].as_u64()
        ),
        (Some(201), Some(1))
    );
    assert!(r.header(header::REPLY_REFUSED).is_some());
    // The command was applied once; its reply is on the dead-letter topic (here without its
    // value, which the same limit refuses too), with the reason.
    assert_eq!(app.log_len(event.parse().unwrap()).await, 1);
    let d = app.dead_letter().await;
    assert_eq!(d.header(header::REQUEST_ID), Some("big"));
    assert!(d
        .header(header::DLQ_REASON)
        .unwrap()
        .starts_with("reply refused by the broker: "));
    assert_eq!(d.header(header::DLQ_STATUS), Some("201"));
    assert!(d.header(header::DLQ_VALUE_DROPPED).is_some());
    // The partition flows on (a PUT keeps fields it leaves out: this one empties the context).
    let r = app.call(&json!({"request_id": "small", "event_uuid": event, "body": {"action": "login", "app": "a", "context": {}}})).await;
    assert_eq!((r.status(), r.value["version"].as_u64()), (200, Some(2)));
    app.finish().await;
}
