//! The machine-readable contract against the real processor: every reply it publishes for a
//! spread of commands (201, 200, a redelivery, 400s of every shape, 403, 404, 409, 422)
//! validates against `docs/schema/reply.schema.json`, the commands sent are judged by
//! `docs/schema/command.schema.json` as the processor judges them (where JSON Schema can tell),
//! the change feed's records (rendered, and as the processor publishes them) validate against
//! `docs/schema/change.schema.json` and `docs/schema/view.schema.json`, which refuse what the
//! contract rules out, and `docs/asyncapi.yaml` parses, names the default topics and the
//! headers the processor really sets, and references schema files that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::{client, Received, TestApp};
use chrono::{Duration, TimeZone, Utc};
use event_updater::config::Config;
use event_updater::domain::auth::AuthMode;
use event_updater::domain::feed::{self, LogChange};
use event_updater::domain::projection::{self, Applied};
use event_updater::domain::reply::header;
use event_updater::drf::validate::ValidBody;
use event_updater::store;
use jsonschema::Validator;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::{json, Value};
use uuid::Uuid;
use yaml_rust2::YamlLoader;

use crate::support::yaml::{root, yaml_to_json};

fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema(name: &str) -> Value {
    load_json(&root().join(format!("docs/schema/{name}.schema.json")))
}

/// A draft 2020-12 validator that also asserts `format` (uuid, date-time).
fn validator(name: &str) -> Validator {
    let s = schema(name);
    jsonschema::meta::validate(&s).unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&s)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn errors(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn asyncapi() -> Value {
    let path = root().join("docs/asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("docs/asyncapi.yaml is YAML");
    assert_eq!(docs.len(), 1);
    yaml_to_json(&docs[0], "docs/asyncapi.yaml")
}

/// Every `$ref` in a document, with the JSON pointer of the object holding it.
fn refs(v: &Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "$ref" {
                    out.push((at.clone(), child.as_str().expect("$ref string").to_string()));
                } else {
                    let escaped = k.replace('~', "~0").replace('/', "~1");
                    refs(child, format!("{at}/{escaped}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A message of asyncapi.yaml by its components name.
fn message<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.pointer(&format!("/components/messages/{name}"))
        .unwrap_or_else(|| panic!("components.messages.{name}"))
}

/// The header schema of a message, following one local `$ref`.
fn header_schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let h = &message(doc, name)["headers"];
    match h.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("a local $ref"))
            .expect("the header schema"),
        None => h,
    }
}

fn header_names(doc: &Value, name: &str) -> BTreeSet<String> {
    header_schema(doc, name)["properties"]
        .as_object()
        .expect("header properties")
        .keys()
        .cloned()
        .collect()
}

/// The schema file a message payload references (relative to docs/).
fn payload_file(doc: &Value, name: &str) -> Option<PathBuf> {
    message(doc, name)
        .pointer("/payload/schema/$ref")
        .and_then(Value::as_str)
        .map(|r| root().join("docs").join(r))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_schemas_are_valid_2020_12_and_agree_with_each_other() {
    let command = schema("command");
    let reply = schema("reply");
    let change = schema("change");
    let view = schema("view");
    for (name, s) in [
        ("command", &command),
        ("reply", &reply),
        ("change", &change),
        ("view", &view),
    ] {
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        jsonschema::meta::validate(s).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let actions = &command["$defs"]["action"]["enum"];
    assert_eq!(actions, &reply["$defs"]["action"]["enum"]);
    assert_eq!(actions.as_array().map(Vec::len), Some(27));
    assert_eq!(
        reply["properties"]["status"]["enum"],
        json!([200, 201, 400, 403, 404, 409, 422, 500])
    );

    // The feed's schemas are self-contained (a reader needs no resolver) and say what the
    // reply's Event says: the same definitions, the view = the Event's fields plus `version`,
    // and a change's fields = the Event's writable ones plus `created` (set by version 1).
    for (name, s) in [("change", &change), ("view", &view)] {
        for def in ["canonical_uuid", "datetime", "action", "json_not_null"] {
            assert_eq!(s["$defs"][def], reply["$defs"][def], "{name} $defs/{def}");
        }
    }
    let event = &reply["$defs"]["event"];
    let mut view_props = view["properties"]
        .as_object()
        .expect("view properties")
        .clone();
    let undescribed = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().map(|o| o.remove("description"));
        v
    };
    let version = view_props.remove("version").expect("a view's version");
    assert_eq!(
        undescribed(&version),
        undescribed(&change["properties"]["version"])
    );
    assert_eq!(&Value::Object(view_props.clone()), &event["properties"]);
    let mut required = event["required"].as_array().expect("required").clone();
    required.push(json!("version"));
    assert_eq!(view["required"], Value::Array(required));
    assert_eq!(view["additionalProperties"], false);
    let changes = change["$defs"]["changes"]["properties"]
        .as_object()
        .expect("changes properties");
    let writable: Vec<&str> = changes.keys().map(String::as_str).collect();
    assert_eq!(
        writable,
        [
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
    for (k, v) in changes {
        assert_eq!(
            Some(v),
            view_props.get(k),
            "changes/{k} differs from the view's"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The change feed's records.

/// `v` with the member at `pointer` set (added where missing).
fn set(v: &Value, pointer: &str, value: Value) -> Value {
    let mut v = v.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
    v.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{pointer}"))
        .insert(last.to_string(), value);
    v
}

/// `v` without the member at `pointer`.
fn unset(v: &Value, pointer: &str) -> Value {
    let mut v = v.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
    let removed = v
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove(last));
    assert!(removed.is_some(), "{pointer} is not there to remove");
    v
}

fn body(action: &str, app: &str) -> ValidBody {
    ValidBody {
        user: None,
        action: action.into(),
        app: app.into(),
        context: None,
        client_ip: None,
        expires: None,
        brand: None,
    }
}

/// The log row the processor appends for `a`.
fn log_change(a: &Applied, scope: Option<Vec<u8>>, offset: i64) -> LogChange {
    LogChange {
        event_uuid: a.state.event_uuid,
        version: a.state.version,
        change: a.change.clone(),
        applied_at: projection::truncate_to_micros(Utc::now()),
        request_id: format!("r-{offset}"),
        scope,
        topic: "event-update-commands".into(),
        partition: 2,
        offset,
    }
}

fn parsed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a feed record is JSON")
}

/// Change and view records rendered by `domain::feed` for a create (every field sent, and
/// every field left to its default) and updates that set some fields or all of them, with a
/// token's scope, an empty one (authentication disabled) and none (an older row).
fn rendered() -> Vec<(String, Value, Value)> {
    let now =
        Utc.with_ymd_and_hms(2026, 11, 27, 20, 5, 42).unwrap() + Duration::microseconds(163_000);
    let u = uuid::Uuid::new_v4();
    let mut full = body("login", "authentik.core");
    full.user = Some(json!({"pk": 1, "username": "akadmin"}));
    full.context = Some(json!({"b": {"c": "d"}, "a": [1, 2.5, null]}));
    full.client_ip = Some(Some("2001:db8::1".into()));
    full.expires = Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    full.brand = Some(json!({"name": "b"}));
    let created = projection::apply(u, None, &full, now);
    let mut partial = body("logout", "b");
    partial.client_ip = Some(None);
    let partly = projection::apply(u, Some(&created.state), &partial, now + Duration::hours(1));
    let mut all = full.clone();
    all.action = "custom_".into();
    all.expires = Some(now + Duration::days(3) + Duration::nanoseconds(500_000_999));
    let fully = projection::apply(u, Some(&partly.state), &all, now + Duration::hours(2));
    let defaults = projection::apply(uuid::Uuid::new_v4(), None, &body("custom_", "x"), now);

    let mut out = Vec::new();
    for (what, a) in [
        ("a create", &created),
        ("an update of some fields", &partly),
        ("an update of every field", &fully),
        ("a create with defaults", &defaults),
    ] {
        for (scope_what, scope) in [
            ("a token's scope", Some(vec![9u8; 32])),
            ("authentication disabled", Some(Vec::new())),
            ("no scope recorded", None),
        ] {
            let change = parsed(&feed::change_record(&log_change(a, scope, 41)));
            let view = parsed(&feed::view_record(&a.state));
            out.push((format!("{what}, {scope_what}"), change, view));
        }
    }
    out
}

#[test]
fn rendered_feed_records_validate_and_the_schemas_refuse_what_the_contract_rules_out() {
    let changes_v = validator("change");
    let views_v = validator("view");
    let records = rendered();
    for (what, change, view) in &records {
        assert_eq!(
            errors(&changes_v, change),
            Vec::<String>::new(),
            "{what}: {change}"
        );
        assert_eq!(
            errors(&views_v, view),
            Vec::<String>::new(),
            "{what}: {view}"
        );
    }
    // The records say what the schemas' conditions are about.
    let (create, update) = (&records[0].1, &records[3].1);
    assert_eq!(create["version"], 1);
    assert_eq!(create["scope"].as_str().map(str::len), Some(16));
    assert_eq!(records[1].1["scope"], Value::Null);
    assert_eq!(records[2].1["scope"], Value::Null);
    assert_eq!(update["version"], 2);
    assert!(update["changes"].get("created").is_none());
    assert!(update["changes"].get("user").is_none(), "{update}");
    let view = &records[0].2;

    let bad_changes = [
        ("no event_uuid", unset(create, "/event_uuid")),
        ("no version", unset(create, "/version")),
        ("no changes", unset(create, "/changes")),
        ("no applied_at", unset(create, "/applied_at")),
        ("no request_id", unset(create, "/request_id")),
        ("no scope", unset(create, "/scope")),
        ("no command", unset(update, "/command")),
        ("no command offset", unset(update, "/command/offset")),
        ("a top-level extra field", set(create, "/extra", json!(1))),
        (
            "an extra field in command",
            set(update, "/command/key", json!("k")),
        ),
        (
            "an unknown field in changes",
            set(update, "/changes/pk", json!(create["event_uuid"])),
        ),
        (
            "an upper-case scope",
            set(
                create,
                "/scope",
                json!(create["scope"].as_str().unwrap().to_uppercase()),
            ),
        ),
        (
            "a 15-digit scope",
            set(create, "/scope", json!("0123456789abcde")),
        ),
        (
            "the token's full SHA-256 as scope",
            set(create, "/scope", json!("ab".repeat(32))),
        ),
        ("an empty scope", set(create, "/scope", json!(""))),
        ("a number for scope", set(create, "/scope", json!(7))),
        ("version 0", set(update, "/version", json!(0))),
        ("a version as a string", set(update, "/version", json!("2"))),
        (
            "an update that sets created",
            set(
                update,
                "/changes/created",
                create["changes"]["created"].clone(),
            ),
        ),
        ("an update without app", unset(update, "/changes/app")),
        (
            "a create without expires",
            unset(create, "/changes/expires"),
        ),
        (
            "a create without client_ip",
            unset(create, "/changes/client_ip"),
        ),
        (
            "applied_at without microseconds",
            set(create, "/applied_at", json!("2026-11-27T20:05:42Z")),
        ),
        (
            "applied_at at +00:00",
            set(
                create,
                "/applied_at",
                json!("2026-11-27T20:05:42.163000+00:00"),
            ),
        ),
        (
            "an upper-case event_uuid",
            set(
                create,
                "/event_uuid",
                json!(create["event_uuid"].as_str().unwrap().to_uppercase()),
            ),
        ),
        ("an empty request_id", set(create, "/request_id", json!(""))),
        (
            "a negative partition",
            set(create, "/command/partition", json!(-1)),
        ),
        (
            "an offset as a string",
            set(create, "/command/offset", json!("41")),
        ),
        ("an empty topic", set(create, "/command/topic", json!(""))),
        (
            "an action not a choice",
            set(update, "/changes/action", json!("LOGOUT")),
        ),
        ("an empty app", set(update, "/changes/app", json!(""))),
        ("a null user", set(create, "/changes/user", Value::Null)),
        (
            "expires at +00:00",
            set(
                create,
                "/changes/expires",
                json!("2027-01-01T00:00:00+00:00"),
            ),
        ),
        ("changes not an object", set(update, "/changes", json!([]))),
    ];
    for (what, change) in bad_changes {
        assert!(
            !changes_v.is_valid(&change),
            "change.schema.json accepts a change with {what}: {change}"
        );
    }
    let bad_views = [
        ("no version", unset(view, "/version")),
        ("no brand", unset(view, "/brand")),
        ("no pk", unset(view, "/pk")),
        ("version 0", set(view, "/version", json!(0))),
        (
            "an extra field",
            set(view, "/event_uuid", view["pk"].clone()),
        ),
        (
            "an upper-case pk",
            set(
                view,
                "/pk",
                json!(view["pk"].as_str().unwrap().to_uppercase()),
            ),
        ),
        ("a null context", set(view, "/context", Value::Null)),
        (
            "created at +00:00",
            set(view, "/created", json!("2026-11-27T20:05:42.163000+00:00")),
        ),
    ];
    for (what, view) in bad_views {
        assert!(
            !views_v.is_valid(&view),
            "view.schema.json accepts a view with {what}: {view}"
        );
    }
}

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

#[test]
fn asyncapi_parses_names_the_topics_and_references_schemas_that_exist() {
    let doc = asyncapi();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert!(doc.pointer("/info/title").is_some() && doc.pointer("/info/version").is_some());

    // The five topics, at their default names.
    let cfg = Config::defaults();
    for (channel, topic) in [
        ("commands", &cfg.command_topic),
        ("replies", &cfg.reply_topic),
        ("dlq", &cfg.dlq_topic),
        ("changes", &cfg.changes_topic),
        ("views", &cfg.view_topic),
    ] {
        assert_eq!(
            doc.pointer(&format!("/channels/{channel}/address")),
            Some(&Value::from(topic.as_str())),
            "channel {channel}"
        );
    }

    // Every reference resolves: local ones to a node of the document, others to a file.
    let mut all = Vec::new();
    refs(&doc, String::new(), &mut all);
    let mut files = BTreeSet::new();
    for (at, r) in &all {
        if let Some(pointer) = r.strip_prefix('#') {
            assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
        } else {
            let path = root().join("docs").join(r);
            assert!(path.is_file(), "{at}: {r} is not a file");
            load_json(&path);
            files.insert(path.canonicalize().unwrap());
        }
    }
    let expected: BTreeSet<PathBuf> = ["command", "reply", "change", "view"]
        .iter()
        .map(|n| {
            root()
                .join(format!("docs/schema/{n}.schema.json"))
                .canonicalize()
                .unwrap()
        })
        .collect();
    assert_eq!(files, expected);
    for (name, file) in [
        ("command", "command"),
        ("reply", "reply"),
        ("change", "change"),
        ("view", "view"),
    ] {
        let path = payload_file(&doc, name).expect("a payload schema $ref");
        assert_eq!(
            path.canonicalize().unwrap(),
            root()
                .join(format!("docs/schema/{file}.schema.json"))
                .canonicalize()
                .unwrap()
        );
        assert_eq!(
            message(&doc, name).pointer("/payload/schemaFormat"),
            Some(&Value::from(
                "application/schema+json;version=draft-2020-12"
            ))
        );
    }

    // Keys and headers.
    for name in ["command", "reply", "deadLetter", "change", "view"] {
        assert!(
            message(&doc, name).pointer("/bindings/kafka/key").is_some(),
            "{name} has a Kafka key"
        );
    }
    let has_all = |name: &str, expected: &[&str]| {
        let names = header_names(&doc, name);
        for h in expected {
            assert!(names.contains(*h), "{name} headers lack {h}: {names:?}");
        }
    };
    has_all(
        "command",
        &[
            "request-id",
            "correlation-id",
            "traceparent",
            "authorization",
            "reply-to",
        ],
    );
    has_all("reply", &["request-id", "correlation-id", "traceparent"]);
    has_all(
        "deadLetter",
        &[
            "dlq-reason",
            "dlq-status",
            "dlq-source-topic",
            "dlq-source-partition",
            "dlq-source-offset",
            "request-id",
        ],
    );
    assert_eq!(
        doc.pointer("/operations/receiveCommand/reply/address/location"),
        Some(&Value::from("$message.header#/reply-to"))
    );

    // The feed's records: their headers, the operations that send them, the topics' settings.
    has_all("change", &[header::SCHEMA_VERSION, header::TRACEPARENT]);
    has_all("view", &[header::SCHEMA_VERSION]);
    for name in ["change", "view"] {
        let h = header_schema(&doc, name);
        assert_eq!(h["required"], json!([header::SCHEMA_VERSION]), "{name}");
        assert_eq!(
            h["properties"][header::SCHEMA_VERSION]["const"],
            feed::SCHEMA_VERSION,
            "{name}"
        );
    }
    for (operation, channel, message) in [
        ("sendChange", "changes", "change"),
        ("sendView", "views", "view"),
    ] {
        let op = &doc["operations"][operation];
        assert_eq!(op["action"], "send", "{operation}");
        assert_eq!(op["channel"]["$ref"], format!("#/channels/{channel}"));
        assert_eq!(
            op["messages"],
            json!([{"$ref": format!("#/channels/{channel}/messages/{message}")}])
        );
    }
    assert_eq!(
        doc.pointer("/channels/changes/bindings/kafka/topicConfiguration"),
        Some(&json!({"retention.ms": -1}))
    );
    assert_eq!(
        doc.pointer("/channels/views/bindings/kafka/topicConfiguration"),
        Some(&json!({"cleanup.policy": ["compact"]}))
    );

    // The documented examples validate against the schemas they illustrate, and their
    // headers against the message's header schema.
    for name in ["command", "reply", "change", "view"] {
        let v = validator(name);
        let headers_v = jsonschema::options()
            .build(header_schema(&doc, name))
            .expect("a header schema");
        let examples = message(&doc, name)["examples"]
            .as_array()
            .expect("examples");
        assert!(!examples.is_empty());
        for ex in examples {
            assert_eq!(errors(&v, &ex["payload"]), Vec::<String>::new(), "{ex}");
            if let Some(h) = ex.get("headers") {
                assert!(headers_v.is_valid(h), "{name}: example headers {h}");
            }
        }
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
        ("correlation-id", "corr-1".into()),
        (
            "traceparent",
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
    basic.headers = vec![("authorization", "Basic dXNlcjpwYXNz".into())];
    let mut unknown_token = case(
        "an unknown token",
        json!({"request_id": "badtoken", "event_uuid": e, "body": login}),
        403,
        true,
    );
    unknown_token.headers = vec![("authorization", "Bearer not-a-token".into())];

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
        assert!(r.header("request-id").is_some(), "{}", c.what);

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
        if !c.headers.is_empty() && c.headers[0].0 == "correlation-id" {
            for (k, v) in &c.headers {
                if *k == "traceparent" {
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
        assert_eq!(as_object["dlq-status"], "400");
        assert_eq!(
            as_object["dlq-source-topic"],
            app.cfg.command_topic.as_str()
        );
    }

    app.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The change feed, as the processor publishes it.

/// The records of `topic` (from its start) until `done` says the ones read are enough; every
/// one must come within 30 s.
async fn read_until(
    app: &TestApp,
    topic: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let reader = app.new_reader(topic);
    let mut out = Vec::new();
    while !done(&out) {
        assert!(
            out.len() < 100,
            "{topic}: no end in sight after {} records",
            out.len()
        );
        out.push(TestApp::read_from(&reader).await);
    }
    out
}

/// Every version `1..=n` of `event` is among `records` (a record may be repeated).
fn versions_up_to(records: &[Received], event: &str, n: i64) -> bool {
    let seen: BTreeSet<i64> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some(event))
        .filter_map(|r| r.value["version"].as_i64())
        .collect();
    (1..=n).all(|v| seen.contains(&v))
}

/// Checks the headers every feed record carries, its key and its value against `v`.
fn check_feed_record(what: &str, r: &Received, event: &str, v: &Validator) {
    assert_eq!(r.key.as_deref(), Some(event), "{what}: key");
    assert_eq!(
        r.header(header::SCHEMA_VERSION),
        Some(feed::SCHEMA_VERSION),
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(
        errors(v, &r.value),
        Vec::<String>::new(),
        "{what}: {}",
        String::from_utf8_lossy(&r.raw)
    );
}

/// The value of one topic setting on the broker.
async fn topic_setting(app: &TestApp, topic: &str, name: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = client(&app.cfg).create().expect("admin");
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the topic's configuration");
    resource.get(name).and_then(|e| e.value.clone())
}

#[tokio::test]
async fn every_published_change_and_view_validates_and_names_its_command() {
    let app = TestApp::spawn().await;
    let changes_v = validator("change");
    let views_v = validator("view");
    let event = Uuid::new_v4();
    let e = event.to_string();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // A create (traced), an update of some fields and one of others, with the test's token.
    let create = json!({"request_id": "feed-create", "event_uuid": e, "expected_version": 0,
        "body": {"action": "login", "app": "authentik.core", "user": {"pk": 1, "username": "akadmin"},
                 "context": {"b": [1, 2.5, null], "a": {"c": "d"}}, "client_ip": "2001:0DB8::1",
                 "expires": "2027-01-01T00:00:00Z", "brand": {"name": "b"}}});
    app.send_raw(
        Some(&e),
        Some(create.to_string().as_bytes()),
        &[(header::TRACEPARENT, traceparent.as_bytes())],
    )
    .await;
    let mut replies = vec![app.reply().await];
    for (id, body) in [
        (
            "feed-update-1",
            json!({"action": "logout", "app": 7, "client_ip": null}),
        ),
        (
            "feed-update-2",
            json!({"action": "custom_", "app": "c", "brand": {"z": 1, "a": [1.5]},
                   "expires": "2030-06-01T12:00:00.5+02:00", "context": {"k": "v"}}),
        ),
    ] {
        replies.push(
            app.call(&json!({"request_id": id, "event_uuid": e, "body": body}))
                .await,
        );
    }
    let statuses: Vec<u64> = replies.iter().map(Received::status).collect();
    assert_eq!(statuses, [201, 200, 200]);

    let changes = read_until(&app, &app.cfg.changes_topic, |rs| versions_up_to(rs, &e, 3)).await;
    let mut first_of = BTreeMap::new();
    for r in &changes {
        check_feed_record("a change", r, &e, &changes_v);
        let version = r.value["version"].as_i64().expect("version");
        // A repeat has the same bytes as the first record of its version.
        let first = first_of.entry(version).or_insert_with(|| r.raw.clone());
        assert_eq!(first, &r.raw, "version {version} repeated with other bytes");
        // The change names the command its reply answered, and its token's tag.
        let reply = &replies[usize::try_from(version - 1).expect("a version from 1")];
        assert_eq!(reply.value["version"], version);
        assert_eq!(r.value["request_id"], reply.value["request_id"]);
        let command = &r.value["command"];
        for (field, h) in [
            ("topic", header::COMMAND_TOPIC),
            ("partition", header::COMMAND_PARTITION),
            ("offset", header::COMMAND_OFFSET),
        ] {
            let named = match &command[field] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(
                Some(named.as_str()),
                reply.header(h),
                "version {version}: {field}"
            );
        }
        assert_eq!(
            r.value["scope"].as_str(),
            reply.header(header::COMMAND_SCOPE),
            "version {version}: scope"
        );
        assert!(
            r.value["scope"].is_string(),
            "an authenticated command has a scope"
        );
    }
    // The create's change continues the command's trace, as its reply does.
    let created = changes
        .iter()
        .find(|r| r.value["version"] == 1)
        .expect("version 1");
    let trace = created
        .header(header::TRACEPARENT)
        .expect("the create's change is traced");
    assert_eq!(&trace[..36], &traceparent[..36], "the command's trace id");
    assert_eq!(Some(trace), replies[0].header(header::TRACEPARENT));
    assert!(
        changes
            .iter()
            .filter(|r| r.value["version"] != 1)
            .all(|r| r.header(header::TRACEPARENT).is_none()),
        "the updates were sent without a traceparent"
    );
    assert_eq!(
        created.value["changes"]["created"],
        replies[0].body()["created"]
    );

    // The view topic: every record validates; the last one of the event is its projection row.
    let views = read_until(&app, &app.cfg.view_topic, |rs| {
        rs.iter().any(|r| r.value["version"] == 3)
    })
    .await;
    for r in &views {
        check_feed_record("a view", r, &e, &views_v);
    }
    let row = store::load_view(&app.pool, event)
        .await
        .expect("view")
        .expect("the event");
    assert_eq!(
        views.last().map(|r| &r.value),
        Some(&parsed(&feed::view_record(&row)))
    );

    // The topics are set up as asyncapi.yaml says.
    let doc = asyncapi();
    assert_eq!(
        topic_setting(&app, &app.cfg.changes_topic, "retention.ms")
            .await
            .as_deref(),
        Some(
            doc.pointer("/channels/changes/bindings/kafka/topicConfiguration/retention.ms")
                .expect("retention.ms")
                .to_string()
                .as_str()
        )
    );
    assert_eq!(
        topic_setting(&app, &app.cfg.view_topic, "cleanup.policy")
            .await
            .as_deref(),
        doc.pointer("/channels/views/bindings/kafka/topicConfiguration/cleanup.policy/0")
            .and_then(Value::as_str)
    );
    app.finish().await;

    // Where authentication is disabled, a change has no scope (and still validates).
    let open = TestApp::spawn_with(|c| c.auth_mode = AuthMode::Disabled).await;
    let other = Uuid::new_v4().to_string();
    let command = json!({"request_id": "feed-open", "event_uuid": other,
        "body": {"action": "login", "app": "a"}});
    open.send_raw_with(
        Some(&other),
        Some(command.to_string().as_bytes()),
        &[],
        false,
    )
    .await;
    let reply = open.reply().await;
    assert_eq!(reply.status(), 201, "{}", reply.value);
    assert_eq!(reply.header(header::COMMAND_SCOPE), None);
    let changes = read_until(&open, &open.cfg.changes_topic, |rs| {
        versions_up_to(rs, &other, 1)
    })
    .await;
    for r in &changes {
        check_feed_record("a change without authentication", r, &other, &changes_v);
        assert_eq!(r.value["scope"], Value::Null);
    }
    open.finish().await;
}

/// The change record docs/contract.md shows is one the schema accepts, and compact JSON with
/// its members in the documented order (as `domain::feed::change_record` writes them).
#[test]
fn the_contracts_change_example_validates() {
    let text = std::fs::read_to_string(root().join("docs/contract.md")).expect("docs/contract.md");
    let section = text
        .split("\n## Change feed\n")
        .nth(1)
        .expect("a Change feed section");
    let example = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a JSON example in the Change feed section");
    let value: Value = serde_json::from_str(example).expect("the example is JSON");
    assert_eq!(errors(&validator("change"), &value), Vec::<String>::new());
    assert_eq!(serde_json::to_string(&value).unwrap(), example, "compact");
    let order: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        order,
        [
            "event_uuid",
            "version",
            "changes",
            "applied_at",
            "request_id",
            "scope",
            "command"
        ]
    );
}
