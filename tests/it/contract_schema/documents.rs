//! The contract's documents, read: the JSON Schemas of docs/schema (and a draft 2020-12
//! validator for each), docs/asyncapi.yaml and its messages, and small edits of JSON values.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde_json::Value;
use yaml_rust2::YamlLoader;

use crate::support::yaml::{root, yaml_to_json};

pub(super) fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(super) fn schema(name: &str) -> Value {
    load_json(&root().join(format!("docs/schema/{name}.schema.json")))
}

/// A draft 2020-12 validator that also asserts `format` (uuid, date-time).
pub(super) fn validator(name: &str) -> Validator {
    let s = schema(name);
    jsonschema::meta::validate(&s).unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&s)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub(super) fn errors(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

pub(super) fn asyncapi() -> Value {
    let path = root().join("docs/asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("docs/asyncapi.yaml is YAML");
    assert_eq!(docs.len(), 1);
    yaml_to_json(&docs[0], "docs/asyncapi.yaml")
}

/// Every `$ref` in a document, with the JSON pointer of the object holding it.
pub(super) fn refs(v: &Value, at: String, out: &mut Vec<(String, String)>) {
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
pub(super) fn message<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.pointer(&format!("/components/messages/{name}"))
        .unwrap_or_else(|| panic!("components.messages.{name}"))
}

/// The header schema of a message, following one local `$ref`.
pub(super) fn header_schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let h = &message(doc, name)["headers"];
    match h.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("a local $ref"))
            .expect("the header schema"),
        None => h,
    }
}

pub(super) fn header_names(doc: &Value, name: &str) -> BTreeSet<String> {
    header_schema(doc, name)["properties"]
        .as_object()
        .expect("header properties")
        .keys()
        .cloned()
        .collect()
}

/// The schema file a message payload references (relative to docs/).
pub(super) fn payload_file(doc: &Value, name: &str) -> Option<PathBuf> {
    message(doc, name)
        .pointer("/payload/schema/$ref")
        .and_then(Value::as_str)
        .map(|r| root().join("docs").join(r))
}

/// `v` with the member at `pointer` set (added where missing).
pub(super) fn set(v: &Value, pointer: &str, value: Value) -> Value {
    let mut v = v.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
    v.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{pointer}"))
        .insert(last.to_string(), value);
    v
}

/// `v` without the member at `pointer`.
pub(super) fn unset(v: &Value, pointer: &str) -> Value {
    let mut v = v.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
    let removed = v
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove(last));
    assert!(removed.is_some(), "{pointer} is not there to remove");
    v
}

pub(super) fn parsed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a feed record is JSON")
}
