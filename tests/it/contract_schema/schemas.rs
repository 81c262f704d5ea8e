//! The schemas themselves: valid draft 2020-12, and agreeing with each other where they
//! describe the same thing.

use serde_json::{json, Value};

use super::documents::schema;

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
