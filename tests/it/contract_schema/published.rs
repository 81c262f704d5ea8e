//! The change and view records the real processor publishes validate, carry their headers and
//! name the command that made them; the feed topics have the settings the contract says.

use std::collections::{BTreeMap, BTreeSet};

use event_updater::domain::auth::AuthMode;
use event_updater::domain::feed;
use event_updater::domain::reply::header;
use event_updater::store;
use jsonschema::Validator;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::{json, Value};
use uuid::Uuid;

use super::documents::{asyncapi, errors, parsed, validator};
use crate::support::{client, Received, TestApp};

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
