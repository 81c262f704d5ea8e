//! docs/asyncapi.yaml parses, names the default topics and the headers the processor really
//! sets, and references schema files that exist.

use std::collections::BTreeSet;
use std::path::PathBuf;

use event_updater::config::Config;
use event_updater::domain::feed;
use event_updater::domain::reply::header;
use serde_json::{json, Value};

use super::documents::{
    asyncapi, errors, header_names, header_schema, load_json, message, payload_file, refs,
    validator,
};
use crate::support::yaml::root;

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
            header::REQUEST_ID,
            header::CORRELATION_ID,
            header::TRACEPARENT,
            header::AUTHORIZATION,
            header::REPLY_TO,
        ],
    );
    has_all(
        "reply",
        &[
            header::REQUEST_ID,
            header::CORRELATION_ID,
            header::TRACEPARENT,
        ],
    );
    has_all(
        "deadLetter",
        &[
            header::DLQ_REASON,
            header::DLQ_STATUS,
            header::DLQ_SOURCE_TOPIC,
            header::DLQ_SOURCE_PARTITION,
            header::DLQ_SOURCE_OFFSET,
            header::REQUEST_ID,
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
