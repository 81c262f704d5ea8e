//! The change and view records `domain::feed` renders validate against their schemas, which
//! refuse what the contract rules out; and docs/contract.md's example is one they accept.

use chrono::{Duration, TimeZone, Utc};
use event_updater::domain::feed::LogChange;
use event_updater::domain::projection::Applied;
use event_updater::domain::{feed, projection};
use event_updater::drf::validate::ValidBody;
use serde_json::{json, Value};

use super::documents::{errors, parsed, set, unset, validator};
use crate::support::yaml::root;

pub(super) fn body(action: &str, app: &str) -> ValidBody {
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

/// Change and view records rendered by `domain::feed` for a create (every field sent, and
/// every field left to its default) and updates that set some fields or all of them, with a
/// token's scope, an empty one (authentication disabled) and none (an older row).
pub(super) fn rendered() -> Vec<(String, Value, Value)> {
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
