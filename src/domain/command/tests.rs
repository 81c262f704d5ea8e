//! Decoding: every check's answer, in the REST endpoint's order, and fuzzing of the decoder.

use super::fingerprint::{fingerprint, write_sorted};
use super::*;
use crate::domain::auth::{self, AuthMode};
use crate::domain::reply::header;
use crate::drf::pyjson;
use serde_json::json;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Decodes as a processor without authentication does.
fn dec(m: &Incoming, max_bytes: usize) -> Command {
    decode(m, max_bytes, AuthMode::Disabled)
}

fn msg(payload: &str) -> Incoming {
    Incoming {
        topic: "cmds".into(),
        partition: 2,
        offset: 7,
        key: Some(U.as_bytes().to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        headers: vec![],
        timestamp_ms: None,
        headers_refused: None,
    }
}

fn rejected(c: &Command) -> (u16, Value) {
    match &c.action {
        Action::Reject { status, body, .. } => (*status, body.clone()),
        Action::Apply { .. } => panic!("expected a rejection, got {c:?}"),
    }
}

const U: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

#[test]
fn a_valid_command_is_applied() {
    let c = dec(
        &msg(&format!(
            r#"{{"request_id":"r1","event_uuid":"{}","expected_version":3,"body":{{"action":"login","app":"a"}}}}"#,
            U.to_uppercase()
        )),
        1 << 20,
    );
    assert_eq!(c.request_id, "r1");
    assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()));
    match c.action {
        Action::Apply {
            event_uuid,
            expected_version,
            body,
        } => {
            assert_eq!(event_uuid.to_string(), U);
            assert_eq!(expected_version, Some(3));
            assert_eq!(body.action, "login");
        }
        other => panic!("{other:?}"),
    }
    assert!(c.dead_letter.is_none());
}

#[test]
fn not_json_is_a_parse_error_with_pythons_text_and_a_dead_letter() {
    let c = dec(&msg("{nope"), 1 << 20);
    assert_eq!(
        rejected(&c),
        (
            400,
            json!({"detail": "JSON parse error - Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"})
        )
    );
    assert_eq!(c.request_id, "cmds/2/7@-1");
    assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()));
    assert!(c.dead_letter.is_some());
}

#[test]
fn empty_and_missing_values_are_parse_errors() {
    for m in [
        msg(""),
        Incoming {
            payload: None,
            ..msg("")
        },
    ] {
        assert_eq!(
            rejected(&dec(&m, 100)).1,
            json!({"detail": "JSON parse error - Expecting value: line 1 column 1 (char 0)"})
        );
    }
}

#[test]
fn non_object_values_get_drfs_non_field_errors() {
    for (v, t) in [
        ("[]", "list"),
        ("\"x\"", "str"),
        ("1", "int"),
        ("1.5", "float"),
        ("true", "bool"),
    ] {
        assert_eq!(
            rejected(&dec(&msg(v), 100)),
            (
                400,
                json!({"non_field_errors": [format!("Invalid data. Expected a dictionary, but got {t}.")]})
            )
        );
    }
    assert_eq!(
        rejected(&dec(&msg("null"), 100)).1,
        json!({"non_field_errors": ["No data provided"]})
    );
}

#[test]
fn oversized_values_are_refused_unparsed() {
    let c = dec(&msg("{\"a\": 1}"), 4);
    assert_eq!(
        rejected(&c),
        (
            400,
            json!({"detail": "Command value is 8 bytes, over the limit of 4 bytes."})
        )
    );
}

#[test]
fn missing_or_bad_uuid_is_404_before_the_body_is_looked_at() {
    for v in [
        r#"{"body": 5}"#,
        r#"{"event_uuid": "nope", "body": 5}"#,
        r#"{"event_uuid": 5, "body": {}}"#,
    ] {
        assert_eq!(
            rejected(&dec(&msg(v), 100)),
            (404, json!({"detail": "Not found."}))
        );
    }
}

/// A body nested to the limit (python 3.13 takes it, so DRF answers normally) is decoded,
/// applied, answered and dropped on a thread with the processor's stack.
#[test]
fn a_command_nested_to_the_limit_is_handled_on_the_processors_stack() {
    let thread = std::thread::Builder::new().stack_size(pyjson::STACK_BYTES);
    let t = thread.spawn(|| {
            let n = pyjson::MAX_DEPTH - 2; // the envelope and the body are two levels
            let u = Uuid::new_v4();
            let payload = format!(
                r#"{{"event_uuid": "{u}", "body": {{"action": "login", "app": "a", "user": {}1.5{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            );
            let keyed = |payload: &str| Incoming {
                key: Some(u.to_string().into_bytes()),
                ..msg(payload)
            };
            let cmd = dec(&keyed(&payload), 1 << 20);
            assert!(matches!(cmd.action, Action::Apply { .. }), "{:?}", cmd.dead_letter);
            let (reply, applied) = crate::domain::decide::decide_command(&cmd, None, chrono::Utc::now());
            assert_eq!(reply.status, 201);
            let text = String::from_utf8(reply.bytes.clone()).unwrap();
            assert!(text.contains(&format!("{}1.5{}", "[".repeat(n), "]".repeat(n))));
            let applied = applied.expect("applied");
            assert_eq!(applied.state.version, 1);
            drop(applied);
            let deeper = payload.replacen('[', "[[", 1);
            let cmd = dec(&keyed(&deeper), 1 << 20);
            assert!(matches!(cmd.action, Action::Reject { status: 400, .. }));
        });
    t.unwrap().join().unwrap();
}

#[test]
fn uuid_forms_name_one_event() {
    for form in [
        U.to_string(),
        U.replace('-', ""),
        format!("{{{U}}}"),
        format!("urn:uuid:{U}"),
    ] {
        let c = dec(
            &msg(&format!(
                r#"{{"event_uuid":"{form}","body":{{"action":"login","app":"a"}}}}"#
            )),
            1000,
        );
        assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()), "{form}");
    }
}

#[test]
fn request_id_falls_back_to_the_header_then_the_coordinates() {
    let mut m = msg(&format!(r#"{{"event_uuid":"{U}"}}"#));
    assert_eq!(dec(&m, 1000).request_id, "cmds/2/7@-1");
    // The same coordinates in a topic created again: another record, another request.
    m.timestamp_ms = Some(1_796_000_000_000);
    assert_eq!(dec(&m, 1000).request_id, "cmds/2/7@1796000000000");
    m.headers
        .push((header::REQUEST_ID.into(), Some(b"from-header".to_vec())));
    assert_eq!(dec(&m, 1000).request_id, "from-header");
}

#[test]
fn the_record_key_must_be_the_event_uuid_as_sent_or_canonical() {
    let value =
        |form: &str| format!(r#"{{"event_uuid":"{form}","body":{{"action":"login","app":"a"}}}}"#);
    let keyed = |form: &str, key: Option<&str>| Incoming {
        key: key.map(|k| k.as_bytes().to_vec()),
        ..msg(&value(form))
    };
    let upper = U.to_uppercase();
    let braced = format!("{{{U}}}");
    for (form, key) in [
        (U, U),
        (upper.as_str(), upper.as_str()),
        (&braced, U),
        (&braced, &braced),
    ] {
        let c = dec(&keyed(form, Some(key)), 1000);
        assert!(
            matches!(c.action, Action::Apply { .. }),
            "{form} keyed {key}"
        );
        assert_eq!(c.refused, None);
    }
    for (form, key) in [
        (U, Some(upper.as_str())),
        (upper.as_str(), Some(&braced)),
        (U, Some("other")),
        (U, None),
    ] {
        let c = dec(&keyed(form, key), 1000);
        let (status, body) = rejected(&c);
        assert_eq!(status, 400, "{form} keyed {key:?}");
        let text = body["detail"].as_str().unwrap();
        assert!(
            text.starts_with(&format!(
                "The record key must be the event's UUID (\"{U}\")"
            )),
            "{text}"
        );
        assert_eq!(c.refused.map(Refusal::as_str), Some("key_mismatch"));
        // Answered on the event's key, so the reply lands beside the event's others.
        assert_eq!(c.reply_key.as_deref(), Some(U.as_bytes()));
    }
    // A bad UUID is a 404 whatever the key.
    assert_eq!(rejected(&dec(&keyed("nope", None), 1000)).0, 404);
}

#[test]
fn without_a_bearer_token_the_value_is_not_parsed_where_auth_is_required() {
    for (header, text) in [
        (None, "Authentication credentials were not provided."),
        (Some("Basic abc"), "Unsupported authentication type"),
        (Some("Bearer"), "Malformed header"),
    ] {
        let mut m = msg("{not json at all");
        m.headers.extend(header.map(|h| {
            (
                header::AUTHORIZATION.to_string(),
                Some(h.as_bytes().to_vec()),
            )
        }));
        let c = decode(&m, 1 << 20, AuthMode::Required);
        assert_eq!(rejected(&c), (403, json!({"detail": text})));
        assert!(
            c.dead_letter.is_none(),
            "an unauthenticated record is not dead-lettered"
        );
        assert_eq!(c.request_id, "cmds/2/7@-1");
        assert_eq!(c.scope(AuthMode::Required), None);
    }
    // A bearer token without the shape of an issued one: the store's 403, unparsed.
    let mut m = msg("{not json at all");
    m.headers
        .push((header::AUTHORIZATION.into(), Some(b"Bearer t".to_vec())));
    let c = decode(&m, 1 << 20, AuthMode::Required);
    assert_eq!(
        rejected(&c),
        (403, json!({"detail": "Token invalid/expired"}))
    );
    assert_eq!(c.fingerprint, [0; 32], "not even hashed");
    // Where authentication is off, the header means nothing: decoded as usual.
    assert_eq!(rejected(&decode(&m, 1 << 20, AuthMode::Disabled)).0, 400);
    // A well-shaped token is checked by the store; the value is decoded as usual.
    let token = format!("{}{}", auth::TOKEN_PREFIX, "ab".repeat(32));
    let mut m = msg("{not json at all");
    m.headers.push((
        header::AUTHORIZATION.into(),
        Some(format!("Bearer {token}").into_bytes()),
    ));
    let c = decode(&m, 1 << 20, AuthMode::Required);
    assert_eq!(rejected(&c).0, 400);
    assert_eq!(c.scope(AuthMode::Required), Some(&auth::hash(&token)[..]));
    assert_eq!(c.scope(AuthMode::Disabled), Some(&[][..]));
}

/// The `reason` label values of `event_updater_commands_refused_total`, which dashboards and
/// alerts read.
#[test]
fn refusals_are_counted_under_their_label_values() {
    let labels: Vec<&str> = Refusal::ALL.into_iter().map(Refusal::as_str).collect();
    assert_eq!(
        labels,
        [
            "headers_too_large",
            "too_large",
            "key_mismatch",
            "reply_too_large"
        ]
    );
}

#[test]
fn a_record_over_the_header_caps_is_refused_unread_and_dead_lettered() {
    for (overflow, text) in [
        (
            HeaderOverflow::Count(100_000),
            "The record has 100000 headers, over the limit of 64; it was not read.",
        ),
        (
            HeaderOverflow::Bytes(70_000),
            "The record's headers are 70000 bytes, over the limit of 65536 bytes; it was not read.",
        ),
    ] {
        let m = Incoming {
            headers_refused: Some(overflow),
            ..msg(&format!(
                r#"{{"event_uuid":"{U}","body":{{"action":"login","app":"a"}}}}"#
            ))
        };
        for mode in [AuthMode::Required, AuthMode::Disabled] {
            let c = decode(&m, 1 << 20, mode);
            assert_eq!(rejected(&c), (400, json!({"detail": text})));
            assert_eq!(c.dead_letter.as_deref(), Some(text));
            assert_eq!(c.refused.map(Refusal::as_str), Some("headers_too_large"));
            assert!(c.headers_refused());
            assert_eq!(c.request_id, "cmds/2/7@-1");
        }
    }
    assert_eq!(HeaderOverflow::of_count(MAX_HEADERS), None);
    assert_eq!(
        HeaderOverflow::of_count(MAX_HEADERS + 1),
        Some(HeaderOverflow::Count(MAX_HEADERS + 1))
    );
    assert_eq!(HeaderOverflow::of_bytes(MAX_HEADER_BYTES), None);
    assert!(HeaderOverflow::of_bytes(MAX_HEADER_BYTES + 1).is_some());
}

#[test]
fn a_parsed_body_is_charged_at_its_parsed_size_not_its_text() {
    // 200,000 small numbers: 400 KB of text, many MB once parsed.
    let items = vec!["1"; 200_000].join(",");
    let c = dec(
        &msg(&format!(
            r#"{{"event_uuid":"{U}","body":{{"action":"login","app":"a","context":{{"k":[{items}]}}}}}}"#
        )),
        1 << 20,
    );
    assert!(matches!(c.action, Action::Apply { .. }));
    let text = items.len();
    assert!(
        c.retained_bytes() > 200_000 * std::mem::size_of::<Value>(),
        "{} for {text} bytes of text",
        c.retained_bytes()
    );
    // A small command is charged little.
    let small = dec(
        &msg(&format!(
            r#"{{"event_uuid":"{U}","body":{{"action":"login","app":"a"}}}}"#
        )),
        1 << 20,
    );
    assert!(small.retained_bytes() < 2048, "{}", small.retained_bytes());
}

#[test]
fn envelope_errors_are_400s_keyed_by_field() {
    let c = dec(
        &msg(&format!(
            r#"{{"request_id":"","event_uuid":"{U}","expected_version":-1,"body":{{}}}}"#
        )),
        1000,
    );
    let (status, body) = rejected(&c);
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"request_id": ["This field may not be blank."], "expected_version": ["Ensure this value is greater than or equal to 0."]})
    );
    assert_eq!(c.request_id, "cmds/2/7@-1");
}

#[test]
fn body_errors_are_drfs() {
    let c = dec(&msg(&format!(r#"{{"event_uuid":"{U}"}}"#)), 1000);
    assert_eq!(
        rejected(&c),
        (
            400,
            json!({"action": ["This field is required."], "app": ["This field is required."]})
        )
    );
}

#[test]
fn fingerprint_ignores_key_order_but_not_content() {
    let a = dec(&msg(r#"{"request_id":"x","event_uuid":"nope"}"#), 1000);
    let b = dec(&msg(r#"{"event_uuid":"nope","request_id":"x"}"#), 1000);
    let c = dec(&msg(r#"{"event_uuid":"nope2","request_id":"x"}"#), 1000);
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_ne!(a.fingerprint, c.fingerprint);
}

/// Stored answers keep their fingerprints across releases: what is hashed is pinned here,
/// compact JSON with every object's keys sorted, strings escaped as serde_json escapes them.
#[test]
fn the_fingerprinted_text_is_compact_json_with_sorted_keys() {
    let v = pyjson::parse_str(
        r#"{"b": 1.50, "a": {"d": "x\u0001\"", "c": [1e5, "é\n", null, true, {}]}, "": []}"#,
    )
    .unwrap();
    let text = r#"{"":[],"a":{"c":[100000.0,"é\n",null,true,{}],"d":"x\u0001\""},"b":1.5}"#;
    let mut written = Vec::new();
    write_sorted(&v, &mut written);
    assert_eq!(String::from_utf8(written).unwrap(), text);
    assert_eq!(fingerprint(&v), <[u8; 32]>::from(Sha256::digest(text)));
}

mod fuzz {
    //! Property tests over the decoder and the validator: whatever a producer sends, decoding
    //! returns a command (never a panic), and every rejection has a JSON object body.
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    fn incoming(payload: Vec<u8>) -> Incoming {
        Incoming {
            topic: "t".into(),
            payload: Some(payload),
            ..Incoming::default()
        }
    }

    fn check(c: &Command) {
        assert!(!c.request_id.is_empty());
        if let Action::Reject { status, body, .. } = &c.action {
            assert!([400, 404].contains(status));
            assert!(body.is_object());
        }
    }

    fn scalar() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[0-9]{19,60}".prop_map(|d| pyjson::parse(d.as_bytes()).unwrap_or(Value::Null)),
            any::<f64>()
                .prop_map(|f| pyjson::parse(f.to_string().as_bytes()).unwrap_or(Value::Null)),
            any::<String>().prop_map(Value::String),
            prop::sample::select(vec![
                "login",
                "custom_",
                "LOGIN",
                " ",
                "",
                "::1",
                "10.0.0.1",
                "2027-01-01T00:00:00Z",
                "3fa85f64-5717-4562-b3fc-2c963f66afa6"
            ])
            .prop_map(|s| Value::String(s.into())),
        ]
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        scalar().prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn field() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "user",
            "action",
            "app",
            "context",
            "client_ip",
            "expires",
            "brand",
            "pk",
            "created",
        ])
        .prop_map(str::to_string)
    }

    fn command() -> impl Strategy<Value = serde_json::Value> {
        (
            prop::option::of(value()),
            prop::option::of(value()),
            prop::option::of(value()),
            prop::collection::vec((field(), value()), 0..9),
        )
            .prop_map(|(rid, uuid, ev, body)| {
                let mut m = Map::new();
                if let Some(v) = rid {
                    m.insert("request_id".into(), v);
                }
                m.insert(
                    "event_uuid".into(),
                    uuid.unwrap_or_else(|| Value::String(Uuid::new_v4().to_string())),
                );
                if let Some(v) = ev {
                    m.insert("expected_version".into(), v);
                }
                m.insert("body".into(), Value::Object(body.into_iter().collect()));
                Value::Object(m)
            })
    }

    proptest! {
        #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

        #[test]
        fn arbitrary_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            check(&dec(&incoming(bytes), 1 << 20));
        }

        #[test]
        fn arbitrary_commands_decode_without_panic(cmd in command()) {
            check(&dec(&incoming(cmd.to_string().into_bytes()), 1 << 20));
        }

        #[test]
        fn mutated_commands_decode_without_panic(cmd in command(), at in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 1..4)) {
            let mut bytes = cmd.to_string().into_bytes();
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, junk);
            check(&dec(&incoming(bytes), 1 << 20));
        }

        #[test]
        fn serialised_values_parse_back_to_themselves(v in value()) {
            let text = v.to_string();
            prop_assert_eq!(pyjson::parse(text.as_bytes()).ok(), Some(v));
        }
    }
}
