//! deploy/k8s: the Deployment, ConfigMap, Service and PodDisruptionBudget fit together, keep
//! the database URL in a Secret, and run the image's user with bounded resources.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::binary::{binary_subcommands, config_from_env};
use crate::dockerfile::dockerfile_args;
use crate::support::{read, scalar, str_at, yaml};

pub(crate) fn k8s_files() -> (Value, Value, Value, Value) {
    let deployment = yaml("deploy/k8s/deployment.yaml");
    let configmap = yaml("deploy/k8s/configmap.yaml");
    let service = yaml("deploy/k8s/service.yaml");
    let pdb = yaml("deploy/k8s/pdb.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(configmap["kind"], "ConfigMap");
    assert_eq!(service["kind"], "Service");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    (deployment, configmap, service, pdb)
}

pub(crate) fn k8s_container(deployment: &Value) -> &Value {
    deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == "event-updater"))
        .expect("a container named event-updater")
}

/// The environment of the event-updater container: its ConfigMap's data plus its own `env`
/// entries with literal values (`DATABASE_URL` comes from a Secret and is not among them).
pub(crate) fn k8s_env(deployment: &Value, configmap: &Value) -> BTreeMap<String, String> {
    let c = k8s_container(deployment);
    let mut env = BTreeMap::new();
    for source in c["envFrom"].as_array().into_iter().flatten() {
        let name = str_at(source, "/configMapRef/name");
        assert_eq!(
            name,
            str_at(configmap, "/metadata/name"),
            "envFrom names the ConfigMap of configmap.yaml"
        );
        for (k, v) in configmap["data"].as_object().expect("ConfigMap data") {
            env.insert(k.clone(), scalar(v));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        if let Some(v) = e.get("value") {
            env.insert(str_at(e, "/name").to_string(), scalar(v));
        }
    }
    env
}

/// Names of every environment variable the container gets, literal or from a Secret.
pub(crate) fn k8s_env_names(deployment: &Value, configmap: &Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = k8s_env(deployment, configmap).into_keys().collect();
    for e in k8s_container(deployment)["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        names.insert(str_at(e, "/name").to_string());
    }
    names
}

/// A Kubernetes quantity (`100m`, `1`, `128Mi`) as a number.
fn quantity(v: &Value) -> f64 {
    let s = scalar(v);
    let units = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    for (suffix, factor) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().expect("quantity") * factor;
        }
    }
    s.parse().unwrap_or_else(|_| panic!("quantity {s}"))
}

#[test]
fn the_kubernetes_manifests_fit_together() {
    let (deployment, configmap, service, pdb) = k8s_files();
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    let pod_labels = deployment
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .expect("pod labels");
    let selects_pods = |selector: &Value, what: &str| {
        let sel = selector
            .as_object()
            .unwrap_or_else(|| panic!("{what} selector"));
        assert!(!sel.is_empty(), "{what} selects something");
        for (k, v) in sel {
            assert_eq!(pod_labels.get(k), Some(v), "{what} selects the pods by {k}");
        }
    };
    selects_pods(&deployment["spec"]["selector"]["matchLabels"], "Deployment");
    selects_pods(&service["spec"]["selector"], "Service");
    selects_pods(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    assert!(
        pdb["spec"].get("maxUnavailable").is_some() || pdb["spec"].get("minAvailable").is_some()
    );

    let container = k8s_container(&deployment);
    // DATABASE_URL from a Secret, never in the ConfigMap.
    let db = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "DATABASE_URL")
        .expect("DATABASE_URL in env");
    assert!(db.get("value").is_none(), "DATABASE_URL is not a literal");
    assert!(!str_at(db, "/valueFrom/secretKeyRef/name").is_empty());
    assert!(!str_at(db, "/valueFrom/secretKeyRef/key").is_empty());
    let data = configmap["data"].as_object().expect("ConfigMap data");
    assert!(!data.contains_key("DATABASE_URL"));
    for (k, v) in data {
        let v = scalar(v).to_ascii_lowercase();
        assert!(
            !v.contains("password=") && !v.contains("secret"),
            "a secret in the ConfigMap: {k}"
        );
    }

    // The command the image runs, and enough replicas but not more than partitions.
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(args.len(), 1);
    assert!(binary_subcommands().contains(&args[0]), "{args:?}");
    let cfg = config_from_env(&k8s_env(&deployment, &configmap), "k8s");
    let replicas = deployment["spec"]["replicas"].as_i64().expect("replicas");
    assert!(
        (1..=i64::from(cfg.topic_partitions)).contains(&replicas),
        "replicas {replicas} vs TOPIC_PARTITIONS {}",
        cfg.topic_partitions
    );

    // Resources: requests and limits for CPU and memory, requests within limits.
    let res = &container["resources"];
    for r in ["cpu", "memory"] {
        let request = quantity(&res["requests"][r]);
        let limit = quantity(&res["limits"][r]);
        assert!(
            request > 0.0 && request <= limit,
            "{r}: {request} vs {limit}"
        );
    }

    // Non-root, as the image's user.
    let user = dockerfile_args("USER").pop().expect("USER");
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_eq!(
        deployment.pointer("/spec/template/spec/securityContext/runAsNonRoot"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        deployment
            .pointer("/spec/template/spec/securityContext/runAsUser")
            .and_then(Value::as_i64),
        Some(uid)
    );

    let readme = read("deploy/k8s/README.md").to_ascii_lowercase();
    assert!(readme.contains("partition") && readme.contains("event uuid"));
}
