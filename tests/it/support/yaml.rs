//! Reading the repository's files: its root, and YAML turned into JSON values (for the
//! AsyncAPI document, the compose files, the Kubernetes manifests). Shared by the integration
//! tests and `tests/deploy_files/`.

use std::path::PathBuf;

use serde_json::Value;
use yaml_rust2::Yaml;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A YAML node as JSON; `file` names it in panics. Aliases are not supported.
pub fn yaml_to_json(y: &Yaml, file: &str) -> Value {
    match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => {
            let f: f64 = r
                .parse()
                .unwrap_or_else(|_| panic!("{file}: bad number {r}"));
            Value::from(f)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(|v| yaml_to_json(v, file)).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("{file}: unsupported mapping key {other:?}"),
                    };
                    (key, yaml_to_json(v, file))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::BadValue => panic!("{file}: unsupported YAML node {y:?}"),
    }
}
