//! Every reply the real processor publishes validates against the reply schema, the commands
//! sent are judged by the command schema as the processor judges them, and the reply schema
//! refuses the replies the contract rules out.

use std::collections::BTreeMap;

use event_updater::domain::reply::header;
use serde_json::{json, Value};
use uuid::Uuid;

use super::documents::{asyncapi, errors, header_schema, schema, validator};
use crate::support::{Received, TestApp};

/// Replies the processor must never produce are refused by the schema (it is not vacuous),
/// and the contract's own examples pass.
#[test]
fn the_reply_schema_refuses_what_the_contract_rules_out() {
    let v = validator("reply");
    let u = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let event = json!({"pk": u, "user": {"pk": 1, "username": "akadmin"}, "action": "login",
        "app": "authentik.core", "context": {}, "client_ip": "10.0.0.1",
        "created": "2026-11-27T20:05:42.163000Z", "expires": "2027-01-01T00:00:00Z", "brand": {}});
    let ok = json!({"request_id": "b8f7c3d2-producer-chosen-id", "event_uuid": u, "status": 200,
        "version": 4, "body": event});
    assert_eq!(errors(&v, &ok), Vec::<String>::new());

    // `ok` with the member at `pointer` set (added where missing).
    let with = |pointer: &str, value: Value| {
        let mut r = ok.clone();
        let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
        r.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect(pointer)
            .insert(last.to_string(), value);
        r
    };
    let without = |key: &str, r: &Value| {
        let mut r = r.clone();
        let (parent, last) = key.rsplit_once('/').unwrap();
        let obj = if parent.is_empty() {
            &mut r
        } else {
            r.pointer_mut(parent).unwrap()
        };
        obj.as_object_mut().unwrap().remove(last);
        r
    };
    let bad = [
        ("200 without version", without("/version", &ok)),
        ("201 at version 4", with("/status", json!(201))),
        ("200 at version 1", with("/version", json!(1))),
        ("status 500", with("/status", json!(500))),
        (
            "upper-case event_uuid",
            with("/event_uuid", json!(u.to_uppercase())),
        ),
        ("null event_uuid on 200", with("/event_uuid", Value::Null)),
        ("event without brand", without("/body/brand", &ok)),
        ("event with an extra field", with("/body/extra", json!(1))),
        (
            "created with +00:00",
            with("/body/created", json!("2026-11-27T20:05:42+00:00")),
        ),
        (
            "expires with 3 fraction digits",
            with("/body/expires", json!("2027-01-01T00:00:00.123Z")),
        ),
        ("action not a choice", with("/body/action", json!("LOGIN"))),
        ("user null", with("/body/user", Value::Null)),
        ("blank app", with("/body/app", json!(""))),
        ("a top-level extra key", with("/extra", json!(true))),
        (
            "404 with a version",
            json!({"request_id": "r", "event_uuid": null, "status": 404, "version": 1,
                   "body": {"detail": "Not found."}}),
        ),
        (
            "404 with another text",
            json!({"request_id": "r", "event_uuid": null, "status": 404, "body": {"detail": "Nope"}}),
        ),
        (
            "409 without current_version",
            json!({"request_id": "r", "event_uuid": u, "status": 409,
                   "body": {"detail": "Version conflict: x"}}),
        ),
        (
            "400 with a message that is not a list",
            json!({"request_id": "r", "event_uuid": u, "status": 400, "body": {"action": "x"}}),
        ),
        (
            "400 with an empty body",
            json!({"request_id": "r", "event_uuid": u, "status": 400, "body": {}}),
        ),
        (
            "403 with a text DRF does not use",
            json!({"request_id": "r", "event_uuid": null, "status": 403, "body": {"detail": "No."}}),
        ),
        (
            "422 without detail",
            json!({"request_id": "r", "event_uuid": u, "status": 422, "body": {}}),
        ),
        (
            "empty request_id",
            json!({"request_id": "", "event_uuid": null, "status": 404, "body": {"detail": "Not found."}}),
        ),
    ];
    for (what, reply) in bad {
        assert!(
            !v.is_valid(&reply),
            "the schema accepts a reply with {what}: {reply}"
        );
    }
}

/// What a test command should get, and whether the command schema can tell it is wrong.
struct Case {
    what: &'static str,
    /// The record's value (raw, so that not-JSON can be sent too).
    value: Vec<u8>,
    key: Option<String>,
    headers: Vec<(&'static str, String)>,
    /// `false`: no `authorization` header at all.
    default_auth: bool,
    status: u64,
    /// Whether the value is valid against command.schema.json (None: it is not JSON).
    schema_valid: Option<bool>,
}

fn case(what: &'static str, command: Value, status: u64, schema_valid: bool) -> Case {
    Case {
        what,
        key: command["event_uuid"].as_str().map(str::to_string),
        value: command.to_string().into_bytes(),
        headers: Vec::new(),
        default_auth: true,
        status,
        schema_valid: Some(schema_valid),
    }
}

fn raw(what: &'static str, value: &[u8], status: u64, schema_valid: Option<bool>) -> Case {
    Case {
        what,
        key: Some("raw-key".into()),
        value: value.to_vec(),
        headers: Vec::new(),
        default_auth: true,
        status,
        schema_valid,
    }
}

async fn run(app: &TestApp, c: &Case) -> Received {
    let headers: Vec<(&str, &[u8])> = c.headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    app.send_raw_with(c.key.as_deref(), Some(&c.value), &headers, c.default_auth)
        .await;
    app.reply().await
}

#[tokio::test]
async fn every_real_reply_validates_and_commands_are_judged_as_the_processor_judges_them() {
    const LIMIT: usize = 4096;
    let app = TestApp::spawn_with(|c| c.max_message_bytes = LIMIT).await;
    let replies_v = validator("reply");
    let commands_v = validator("command");
    let event = Uuid::new_v4();
    let e = event.to_string();
    let other = Uuid::new_v4().to_string();
    let login = json!({"action": "login", "app": "a"});

    let mut traced = case(
        "an update with correlation-id and traceparent",
        json!({"request_id": "traced", "event_uuid": e, "body": {"action": "custom_", "app": "x"}}),
        200,
        true,
    );
    traced.headers = vec![
        (header::CORRELATION_ID, "corr-1".into()),
        (
            header::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ),
    ];
    let mut no_auth = case(
        "no authorization header",
        json!({"request_id": "noauth", "event_uuid": e, "body": login}),
        403,
        true,
    );
    no_auth.default_auth = false;
    let mut basic = case(
        "a Basic authorization",
        json!({"request_id": "basic", "event_uuid": e, "body": login}),
        403,
        true,
    );
    basic.headers = vec![(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".into())];
    let mut unknown_token = case(
        "an unknown token",
        json!({"request_id": "badtoken", "event_uuid": e, "body": login}),
        403,
        true,
    );
    unknown_token.headers = vec![(header::AUTHORIZATION, "Bearer not-a-token".into())];

    let create = json!({"request_id": "create", "event_uuid": event.simple().to_string().to_uppercase(),
        "expected_version": 0,
        "body": {"action": "login", "app": "  authentik.core ", "user": {"pk": 1, "username": "akadmin"},
                 "context": {"a": [1, 2.5, null], "b": {"c": "d"}}, "client_ip": "2001:0DB8::1",
                 "expires": "2027-01-01T00:00:00Z", "brand": {"name": "b"}}});
    let big = json!({"request_id": "big", "event_uuid": other,
        "body": {"action": "login", "app": "a", "context": {"pad": "x".repeat(LIMIT)}}});

    let cases = vec![
        case("a create", create.clone(), 201, true),
        case(
            "an update, urn form, with read-only and unknown keys",
            json!({"request_id": "update", "event_uuid": format!("urn:uuid:{e}"), "expected_version": 1,
                "body": {"action": "logout", "app": 7, "client_ip": null,
                         "expires": "2030-06-01T12:00:00.5+02:00", "pk": "ignored", "created": "x", "unknown": true}}),
            200,
            true,
        ),
        traced,
        case("the create, redelivered", create.clone(), 201, true),
        case(
            "a stale expected_version",
            json!({"request_id": "stale", "event_uuid": e, "expected_version": 1, "body": login}),
            409,
            true,
        ),
        case(
            "expected_version 0 of an existing event",
            json!({"request_id": "exists", "event_uuid": format!("{{{e}}}"), "expected_version": 0, "body": login}),
            409,
            true,
        ),
        case(
            "expected_version 2 of a missing event",
            json!({"request_id": "missing", "event_uuid": other, "expected_version": 2, "body": login}),
            409,
            true,
        ),
        case(
            "a request_id reused for another command",
            json!({"request_id": "create", "event_uuid": e, "body": login}),
            422,
            true,
        ),
        no_auth,
        basic,
        unknown_token,
        case(
            "not a UUID",
            json!({"request_id": "n1", "event_uuid": "not-a-uuid", "body": login}),
            404,
            false,
        ),
        case(
            "no event_uuid",
            json!({"request_id": "n2", "body": login}),
            404,
            false,
        ),
        case(
            "a number for event_uuid",
            json!({"request_id": "n3", "event_uuid": 5, "body": login}),
            404,
            false,
        ),
        case(
            "an empty body",
            json!({"request_id": "b1", "event_uuid": e, "body": {}}),
            400,
            false,
        ),
        case(
            "no body",
            json!({"request_id": "b2", "event_uuid": e}),
            400,
            false,
        ),
        // One fault each, so that the schema is shown to catch each on its own.
        case(
            "no action",
            json!({"request_id": "b3a", "event_uuid": e, "body": {"app": "a"}}),
            400,
            false,
        ),
        case(
            "no app",
            json!({"request_id": "b3b", "event_uuid": e, "body": {"action": "login"}}),
            400,
            false,
        ),
        case(
            "an action that is not a choice",
            json!({"request_id": "b3c", "event_uuid": e, "body": {"action": "LOGIN", "app": "a"}}),
            400,
            false,
        ),
        case(
            "a blank app",
            json!({"request_id": "b3d", "event_uuid": e, "body": {"action": "login", "app": " \t"}}),
            400,
            false,
        ),
        case(
            "a boolean app",
            json!({"request_id": "b3e", "event_uuid": e, "body": {"action": "login", "app": true}}),
            400,
            false,
        ),
        case(
            "a null user",
            json!({"request_id": "b3f", "event_uuid": e, "body": {"action": "login", "app": "a", "user": null}}),
            400,
            false,
        ),
        case(
            "a null brand",
            json!({"request_id": "b3g", "event_uuid": e, "body": {"action": "login", "app": "a", "brand": null}}),
            400,
            false,
        ),
        case(
            "a list body",
            json!({"request_id": "b4", "event_uuid": e, "body": [1]}),
            400,
            false,
        ),
        case(
            "a null body",
            json!({"request_id": "b5", "event_uuid": e, "body": null}),
            400,
            false,
        ),
        case(
            "a NUL in context",
            json!({"request_id": "b6", "event_uuid": e, "body": {"action": "login", "app": "a", "context": {"k": "a\u{0}b"}}}),
            400,
            false,
        ),
        case(
            "a blank request_id",
            json!({"request_id": "", "event_uuid": e, "body": login}),
            400,
            false,
        ),
        case(
            "a request_id of 201 characters",
            json!({"request_id": "r".repeat(201), "event_uuid": e, "body": login}),
            400,
            false,
        ),
        case(
            "a negative expected_version",
            json!({"request_id": "b7", "event_uuid": e, "expected_version": -1, "body": login}),
            400,
            false,
        ),
        case(
            "expected_version as a string",
            json!({"request_id": "b8", "event_uuid": e, "expected_version": "3", "body": login}),
            400,
            false,
        ),
        // What JSON Schema cannot tell: these pass the schema and still get a 400.
        case(
            "an expires DRF cannot parse",
            json!({"request_id": "b9", "event_uuid": e, "body": {"action": "login", "app": "a", "expires": "tomorrow"}}),
            400,
            true,
        ),
        case(
            "an invalid client_ip",
            json!({"request_id": "b10", "event_uuid": e, "body": {"action": "login", "app": "a", "client_ip": "999.1.1.1"}}),
            400,
            true,
        ),
        raw(
            "a value over MAX_MESSAGE_BYTES",
            big.to_string().as_bytes(),
            400,
            Some(true),
        ),
        raw("not JSON", b"{\"request_id\": ", 400, None),
        raw("a JSON list", b"[1, 2]", 400, Some(false)),
        raw("JSON null", b"null", 400, Some(false)),
    ];
    let dead_letters = 4; // over the limit, not JSON, a list, null

    let mut seen = BTreeMap::new();
    let mut first_create: Option<Vec<u8>> = None;
    for c in &cases {
        let r = run(&app, c).await;
        assert_eq!(r.status(), c.status, "{}: {}", c.what, r.value);
        assert_eq!(
            errors(&replies_v, &r.value),
            Vec::<String>::new(),
            "{}: the reply {} does not match reply.schema.json",
            c.what,
            String::from_utf8_lossy(&r.raw)
        );
        // The reply value is exactly the JSON that was validated.
        let reparsed: Value = serde_json::from_slice(&r.raw).expect("the reply is JSON");
        assert_eq!(reparsed, r.value);
        // Headers the AsyncAPI document promises on every reply.
        assert!(r.header(header::REQUEST_ID).is_some(), "{}", c.what);

        match (c.schema_valid, serde_json::from_slice::<Value>(&c.value)) {
            (None, parsed) => assert!(parsed.is_err(), "{}: meant to be not JSON", c.what),
            (Some(valid), Ok(command)) => assert_eq!(
                commands_v.is_valid(&command),
                valid,
                "{}: command.schema.json judges {} wrongly: {:?}",
                c.what,
                command,
                errors(&commands_v, &command)
            ),
            (Some(_), Err(e)) => panic!("{}: {e}", c.what),
        }

        if c.what == "a create" {
            first_create = Some(r.raw.clone());
        }
        if c.what == "the create, redelivered" {
            assert_eq!(
                Some(&r.raw),
                first_create.as_ref(),
                "a redelivery gets the same bytes"
            );
        }
        if !c.headers.is_empty() && c.headers[0].0 == header::CORRELATION_ID {
            for (k, v) in &c.headers {
                if *k == header::TRACEPARENT {
                    // Continued: the same trace id and flags, the processor's span as parent.
                    let got = r.header(k).expect("traceparent continued");
                    assert_eq!(
                        (&got[..36], &got[52..]),
                        (&v.as_str()[..36], &v.as_str()[52..])
                    );
                    assert_ne!(got, v.as_str());
                } else {
                    assert_eq!(r.header(k), Some(v.as_str()), "{k} is echoed");
                }
            }
        }
        *seen.entry(c.status).or_insert(0) += 1;
    }
    for status in [200, 201, 400, 403, 404, 409, 422] {
        assert!(
            seen.contains_key(&status),
            "no {status} was produced: {seen:?}"
        );
    }

    // Every one of the 27 actions of the schema is accepted by the processor.
    let actions = schema("command")["$defs"]["action"]["enum"]
        .as_array()
        .expect("actions")
        .clone();
    let mut sent = BTreeMap::new();
    for (i, a) in actions.iter().enumerate() {
        let id = format!("action-{i}");
        let command = json!({"request_id": id, "event_uuid": Uuid::new_v4().to_string(),
            "body": {"action": a, "app": "authentik.core"}});
        assert!(commands_v.is_valid(&command));
        app.send(&command).await;
        sent.insert(id, a.clone());
    }
    for r in app.replies(actions.len()).await {
        let id = r.value["request_id"]
            .as_str()
            .expect("request_id")
            .to_string();
        let action = sent.remove(&id).expect("a reply to a command sent");
        assert_eq!(r.status(), 201, "{action}: {}", r.value);
        assert_eq!(r.body()["action"], action);
        assert_eq!(errors(&replies_v, &r.value), Vec::<String>::new());
    }

    // Dead letters carry the headers asyncapi.yaml lists for them.
    let doc = asyncapi();
    let dlq_headers = header_schema(&doc, "deadLetter");
    let required: Vec<&str> = dlq_headers["required"]
        .as_array()
        .expect("required dlq headers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for _ in 0..dead_letters {
        let d = app.dead_letter().await;
        let headers: BTreeMap<String, Value> = d
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        for h in &required {
            assert!(
                headers.contains_key(*h),
                "dead letter lacks {h}: {headers:?}"
            );
        }
        let header_v = jsonschema::options()
            .build(dlq_headers)
            .expect("the dead-letter header schema");
        let as_object = Value::Object(headers.into_iter().collect());
        assert!(header_v.is_valid(&as_object), "{as_object}");
        assert_eq!(as_object[header::DLQ_STATUS], "400");
        assert_eq!(
            as_object[header::DLQ_SOURCE_TOPIC],
            app.cfg.command_topic.as_str()
        );
    }

    app.finish().await;
}
