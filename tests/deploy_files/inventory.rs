//! The deploy tree as a whole: every file under deploy/ parses as its kind says, the expected
//! ones are there, and every Dockerfile is one scripts/images.sh builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::dockerfile::dockerfile_at;
use crate::kafka::KAFKA_SH;
use crate::support::{json_file, properties, read, yaml_docs};
use crate::yaml::root;

#[test]
fn every_deploy_file_parses() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        match f.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                let docs = yaml_docs(&rel);
                assert!(
                    !docs.is_empty() && docs.iter().all(Value::is_object),
                    "{rel}"
                );
            }
            Some("json") => assert!(json_file(&rel).is_object(), "{rel}"),
            Some("md" | "xml") => assert!(!read(&rel).trim().is_empty(), "{rel}"),
            Some("properties") => assert!(!properties(&rel).is_empty(), "{rel}"),
            Some("sh") => {
                use std::os::unix::fs::PermissionsExt;
                let mode = f.metadata().expect("metadata").permissions().mode();
                assert!(mode & 0o111 != 0, "{rel} is executable");
                let out = Command::new("bash")
                    .arg("-n")
                    .arg(f)
                    .output()
                    .expect("bash runs");
                assert!(out.status.success(), "bash -n {rel}: {out:?}");
            }
            None if f.file_name().is_some_and(|n| n == "Dockerfile") => {
                let instructions = dockerfile_at(&rel);
                assert!(
                    instructions.iter().any(|(i, _)| i == "FROM"),
                    "{rel}: no FROM"
                );
            }
            _ => panic!("{rel}: a deploy file of a kind this test does not check"),
        }
        seen.insert(rel);
    }
    for expected in [
        "deploy/Dockerfile",
        "deploy/compose.yaml",
        "deploy/local/compose.override.yaml",
        "deploy/kafka/Dockerfile",
        KAFKA_SH,
        "deploy/kafka/server.properties",
        "deploy/kafka/log4j2.properties",
        "deploy/kafka/pom.xml",
        "deploy/prometheus/prometheus.yml",
        "deploy/grafana/dashboards/event-updater.json",
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/service.yaml",
        "deploy/k8s/configmap.yaml",
        "deploy/k8s/pdb.yaml",
        "deploy/k8s/README.md",
    ] {
        assert!(seen.contains(expected), "{expected} is missing");
    }
    let dockerignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = dockerignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.contains("target") && ignored.contains(".git"),
        "{ignored:?}"
    );
    // Every Dockerfile is one that scripts/images.sh builds (no image is left unbuilt, none
    // is left behind unused).
    let script = read("scripts/images.sh");
    for dockerfile in seen.iter().filter(|f| f.ends_with("/Dockerfile")) {
        assert!(
            script
                .lines()
                .any(|l| l.starts_with("image ") && l.contains(&format!(" {dockerfile} "))),
            "scripts/images.sh builds {dockerfile}"
        );
    }
}
