//! The deploy files (`deploy/`) against the binary they deploy: every environment variable they
//! set is one `event-updater --help` lists (and its value one the binary accepts), the HTTP
//! port and the probe paths are the binary's, the Dockerfile exposes that port and runs that
//! binary, Prometheus scrapes it there, and the Grafana dashboard only queries metrics the
//! README documents and the binary exports; Kafka (deploy/kafka) has one committed
//! configuration, which its image and compose run through its one launcher; and the source
//! tree keeps its layout (README's Layout names every file; the domain does no I/O). No broker
//! or database is needed.
//!
//! These are the checks only this repository can make. Syntax is left to the real tools, run by
//! `tests/it/containers.rs` where Docker is: docker-compose reads the compose files and starts
//! the stack, Prometheus loads `prometheus.yml` and evaluates every expression of the dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use event_updater::config::Config;
use event_updater::pipeline::consumer::Health;
use serde_json::Value;
use yaml_rust2::YamlLoader;

#[path = "it/support/yaml.rs"]
mod yaml;
use yaml::{root, yaml_to_json};

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

// ---------------------------------------------------------------------------------------------
// Reading files.

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of a file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let docs = YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    docs.iter().map(|d| yaml_to_json(d, rel)).collect()
}

/// The one YAML document of a file.
fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A scalar as the string a container would see in its environment.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other}"),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

// ---------------------------------------------------------------------------------------------
// What the binary says about itself.

/// `event-updater --help`, run with an empty environment (so no value shows up in it).
fn help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_event-updater"))
            .arg("--help")
            .env_clear()
            .output()
            .expect("event-updater --help runs");
        assert!(out.status.success(), "event-updater --help failed: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8 help")
    })
}

/// The options of `--help`: environment variable name -> (flag, the option's help text).
fn binary_options() -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: Option<(String, String)>| {
        if let Some((flag, text)) = current {
            if let Some(start) = text.find("[env: ") {
                let rest = &text[start + "[env: ".len()..];
                let end = rest.find(['=', ']']).expect("a closed [env: ...] marker");
                out.insert(rest[..end].to_string(), (flag, text));
            }
        }
    };
    for line in help().lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        // Option lines are indented less than their help text (`  -h, --help`, `      --x`).
        if t.starts_with('-') && indent < 8 {
            finish(current.take());
            let flag = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .expect("a long flag")
                .trim_end_matches(',')
                .to_string();
            current = Some((flag, String::new()));
        } else if !t.is_empty() && indent == 0 {
            // A section heading ends the option before it; blank lines do not.
            finish(current.take());
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(t);
            text.push(' ');
        }
    }
    finish(current);
    out
}

/// The subcommands `--help` lists.
fn binary_subcommands() -> BTreeSet<String> {
    help()
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .expect("a Commands: section")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Text of the README section `## {title}`.
fn readme_section(title: &str) -> String {
    let readme = read("README.md");
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {title}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// Variables the README's Configuration table lists without a flag: read by the binary, not by
/// clap (`RUST_LOG`, `LOG_FORMAT`).
fn env_without_flag() -> BTreeSet<String> {
    readme_section("Configuration")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[2].is_empty()).then(|| cells[1].trim_matches('`').to_string())
        })
        .collect()
}

/// Every environment variable the binary reads.
fn known_env() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = binary_options().into_keys().collect();
    known.extend(env_without_flag());
    known
}

/// The configuration the binary would build from `env`, parsed by its own clap definition
/// (each variable given as its flag, which wins over this process's environment).
fn config_from_env(env: &BTreeMap<String, String>, what: &str) -> Config {
    let options = binary_options();
    let mut args = vec!["event-updater".to_string()];
    for (name, value) in env {
        if let Some((flag, _)) = options.get(name) {
            args.push(format!("{flag}={value}"));
        }
    }
    let cfg = Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{what}: the binary refuses these settings: {e}"));
    if let Some(f) = env.get("LOG_FORMAT") {
        assert!(
            ["json", "text"].contains(&f.as_str()),
            "{what}: LOG_FORMAT={f}"
        );
    }
    if let Some(f) = env.get("RUST_LOG") {
        assert!(!f.trim().is_empty(), "{what}: empty RUST_LOG");
    }
    cfg
}

fn default_port() -> u16 {
    Config::defaults().http_addr.port()
}

// ---------------------------------------------------------------------------------------------
// The deploy files, read.

fn compose() -> Value {
    yaml("deploy/compose.yaml")
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

/// A compose service's `environment`, in either of its two forms.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| {
                let e = e.as_str().expect("KEY=VALUE");
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Some(other) => panic!("environment: {other}"),
    }
}

fn k8s_files() -> (Value, Value, Value, Value) {
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

fn k8s_container(deployment: &Value) -> &Value {
    deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == "event-updater"))
        .expect("a container named event-updater")
}

/// The environment of the event-updater container: its ConfigMap's data plus its own `env`
/// entries with literal values (`DATABASE_URL` comes from a Secret and is not among them).
fn k8s_env(deployment: &Value, configmap: &Value) -> BTreeMap<String, String> {
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
fn k8s_env_names(deployment: &Value, configmap: &Value) -> BTreeSet<String> {
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

/// deploy/Dockerfile as (instruction, arguments), continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    dockerfile_at("deploy/Dockerfile")
}

/// A Dockerfile as (instruction, arguments), continuation lines joined, comments dropped.
fn dockerfile_at(rel: &str) -> Vec<(String, String)> {
    let text = read(rel);
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let full = std::mem::take(&mut pending);
        if full.trim().is_empty() {
            continue;
        }
        let (instr, args) = full
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((&full, ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_string()));
    }
    out
}

/// The arguments of every `instr` instruction of a parsed Dockerfile ([`dockerfile_at`]).
fn args_of<'a>(instructions: &'a [(String, String)], instr: &str) -> Vec<&'a String> {
    instructions
        .iter()
        .filter(|(i, _)| i == instr)
        .map(|(_, a)| a)
        .collect()
}

fn dockerfile_args(instr: &str) -> Vec<String> {
    args_of(&dockerfile(), instr).into_iter().cloned().collect()
}

/// `ENV` variables of deploy/Dockerfile.
fn dockerfile_env() -> BTreeMap<String, String> {
    env_of(&dockerfile())
}

/// `ENV` variables of a parsed Dockerfile (the `KEY=VALUE ...` form).
fn env_of(instructions: &[(String, String)]) -> BTreeMap<String, String> {
    args_of(instructions, "ENV")
        .iter()
        .flat_map(|a| {
            a.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
                    (k.to_string(), v.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A Java properties file's `key=value` lines (comments and blank lines skipped).
fn properties(rel: &str) -> BTreeMap<String, String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: not key=value: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// deploy/kafka/kafka.sh, the launcher of every Kafka the project runs.
const KAFKA_SH: &str = "deploy/kafka/kafka.sh";

/// The variables kafka.sh reads (`${KAFKA_...}` outside its comments).
fn kafka_sh_variables() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in read(KAFKA_SH).lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for part in line.split("${").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.starts_with("KAFKA_") {
                out.insert(name);
            }
        }
    }
    out
}

/// The default kafka.sh gives `${NAME:-default}`.
fn kafka_sh_default(name: &str) -> String {
    let text = read(KAFKA_SH);
    let marker = format!("${{{name}:-");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{KAFKA_SH} gives {name} no default"))
        + marker.len();
    let end = start + text[start..].find('}').expect("a closed ${...}");
    text[start..end].to_string()
}

/// The port of `host:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr}: no port"))
}

fn parse_duration(s: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().unwrap_or_else(|_| panic!("duration {s}"));
        number.clear();
        total += match c {
            'h' => Duration::from_secs(n * 3600),
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                Duration::from_millis(n)
            }
            'm' => Duration::from_secs(n * 60),
            's' => Duration::from_secs(n),
            _ => panic!("duration {s}"),
        };
    }
    assert!(number.is_empty(), "duration {s} lacks a unit");
    total
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

// ---------------------------------------------------------------------------------------------
// The tests.

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

#[test]
fn the_binarys_option_list_is_read_correctly() {
    let options = binary_options();
    // Spot checks of the parsing itself, against options the binary has had from the start.
    assert_eq!(options["DATABASE_URL"].0, "--database-url");
    assert_eq!(options["KAFKA_PROPERTIES"].0, "--kafka-property");
    assert_eq!(options["HTTP_ADDR"].0, "--http-addr");
    assert!(options.len() >= 15, "{options:?}");
    let extra = env_without_flag();
    assert!(
        extra.contains("RUST_LOG") && extra.contains("LOG_FORMAT"),
        "{extra:?}"
    );
    assert!(binary_subcommands().contains("serve"));
}

#[test]
fn every_environment_variable_set_for_event_updater_is_one_the_binary_reads() {
    let known = known_env();
    let unknown = |names: &mut dyn Iterator<Item = String>| -> Vec<String> {
        names.filter(|n| !known.contains(n)).collect()
    };

    let c = compose();
    let env = compose_env(compose_service(&c, "event-updater"));
    assert!(!env.is_empty());
    assert_eq!(
        unknown(&mut env.into_keys()),
        Vec::<String>::new(),
        "compose.yaml"
    );

    let (deployment, configmap, _, _) = k8s_files();
    let names = k8s_env_names(&deployment, &configmap);
    assert!(names.contains("DATABASE_URL") && names.contains("KAFKA_BOOTSTRAP_SERVERS"));
    assert_eq!(unknown(&mut names.into_iter()), Vec::<String>::new(), "k8s");

    assert_eq!(
        unknown(&mut dockerfile_env().into_keys()),
        Vec::<String>::new(),
        "Dockerfile ENV"
    );
}

#[test]
fn every_setting_is_a_value_the_binary_accepts() {
    let c = compose();
    let env = compose_env(compose_service(&c, "event-updater"));
    let cfg = config_from_env(&env, "compose.yaml");
    assert_eq!(
        cfg.kafka_bootstrap_servers, "kafka:9092",
        "the broker by its compose service name"
    );

    let (deployment, configmap, _, _) = k8s_files();
    config_from_env(&k8s_env(&deployment, &configmap), "k8s ConfigMap");
    config_from_env(&dockerfile_env(), "Dockerfile ENV");
}

#[test]
fn the_http_port_and_paths_are_the_binarys_everywhere() {
    let port = default_port();
    assert_eq!(port, 9464, "the default of HTTP_ADDR");
    let (_, http_help) = &binary_options()["HTTP_ADDR"];
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(
            http_help.contains(path),
            "--http-addr serves {path}: {http_help}"
        );
    }

    // Dockerfile: ENV, EXPOSE and HEALTHCHECK on that port.
    let denv = dockerfile_env();
    let image_port = denv
        .get("HTTP_ADDR")
        .map_or(port, |a| a.parse::<SocketAddr>().expect("HTTP_ADDR").port());
    assert_eq!(image_port, port);
    let exposed: Vec<String> = dockerfile_args("EXPOSE");
    assert_eq!(exposed, [port.to_string()], "EXPOSE");
    let health = dockerfile_args("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains("/readyz") && health[0].contains(&port.to_string()),
        "{health:?}"
    );

    // compose: the container port published, Prometheus scraping it.
    let c = compose();
    let svc = compose_service(&c, "event-updater");
    let cfg = config_from_env(&compose_env(svc), "compose.yaml");
    assert_eq!(cfg.http_addr.port(), port);
    let published: Vec<String> = svc["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| scalar(p).rsplit(':').next().unwrap().to_string())
        .collect();
    assert!(published.contains(&port.to_string()), "{published:?}");

    let prom = yaml("deploy/prometheus/prometheus.yml");
    let job = prom["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "event-updater")
        .expect("a scrape job event-updater");
    assert_eq!(
        job.get("metrics_path")
            .and_then(Value::as_str)
            .unwrap_or("/metrics"),
        "/metrics"
    );
    let targets: Vec<&str> = job["static_configs"]
        .as_array()
        .expect("static_configs")
        .iter()
        .flat_map(|s| s["targets"].as_array().expect("targets"))
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(targets, [format!("event-updater:{port}")]);

    // Kubernetes: the named port, the probes, the Service, the scrape annotations.
    let (deployment, configmap, service, _) = k8s_files();
    let cfg = config_from_env(&k8s_env(&deployment, &configmap), "k8s");
    assert_eq!(cfg.http_addr.port(), port);
    let container = k8s_container(&deployment);
    let ports = container["ports"].as_array().expect("container ports");
    let metrics_port = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a container port named metrics");
    assert_eq!(metrics_port["containerPort"], port);
    let probe_port_ok = |p: &Value| p == "metrics" || p == &Value::from(port);
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = container
            .pointer(&format!("/{probe}/httpGet"))
            .unwrap_or_else(|| panic!("{probe} is an httpGet"));
        assert_eq!(get["path"], path, "{probe}");
        assert!(probe_port_ok(&get["port"]), "{probe} port {}", get["port"]);
    }
    let sport = service["spec"]["ports"]
        .as_array()
        .expect("service ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a service port named metrics");
    assert!(probe_port_ok(&sport["targetPort"]), "{sport}");
    assert_eq!(sport["port"], port);
    let annotations = deployment
        .pointer("/spec/template/metadata/annotations")
        .expect("pod annotations");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

/// The probe paths of the deploy files are routes of the binary's HTTP server, answering as
/// the README says: 503 until live/ready, then 200.
#[tokio::test]
async fn the_probe_paths_are_served_by_the_binarys_http_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(event_updater::pipeline::http::serve(
        listener,
        health.clone(),
        None,
        None,
        stopped,
    ));

    assert_eq!(get(addr, "/healthz").await, 503);
    assert_eq!(get(addr, "/readyz").await, 503);
    assert_eq!(get(addr, "/metrics").await, 200);
    assert_eq!(get(addr, "/nothing-here").await, 404);
    health.migrated.store(true, Ordering::Relaxed);
    health.subscribed.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/healthz").await, 200);
    assert_eq!(get(addr, "/readyz").await, 503);
    health.database_ok.store(true, Ordering::Relaxed);
    health.assigned_partitions.store(1, Ordering::Relaxed);
    assert_eq!(get(addr, "/readyz").await, 200);

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .expect("join")
        .expect("served");
}

#[test]
fn the_grace_periods_outlast_the_shutdown_timeout() {
    let c = compose();
    let svc = compose_service(&c, "event-updater");
    let cfg = config_from_env(&compose_env(svc), "compose.yaml");
    let grace = parse_duration(
        svc["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    assert!(
        grace > cfg.shutdown_timeout(),
        "compose stop_grace_period {grace:?} <= SHUTDOWN_TIMEOUT_SECS {}",
        cfg.shutdown_timeout_secs
    );

    let (deployment, configmap, _, _) = k8s_files();
    let cfg = config_from_env(&k8s_env(&deployment, &configmap), "k8s");
    let grace = deployment
        .pointer("/spec/template/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > cfg.shutdown_timeout_secs,
        "terminationGracePeriodSeconds {grace} <= SHUTDOWN_TIMEOUT_SECS {}",
        cfg.shutdown_timeout_secs
    );
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

#[test]
fn the_local_override_swaps_in_only_the_images_scripts_images_sh_builds() {
    let base = compose();
    let over = yaml("deploy/local/compose.override.yaml");
    let script = read("scripts/images.sh");
    let services = over["services"].as_object().expect("services");
    for (name, svc) in services {
        let base_svc = compose_service(&base, name);
        let image = str_at(svc, "/image");
        let (repo, tag) = image.split_once(':').expect("name:tag");
        assert_eq!(tag, "local", "{name}: {image}");
        assert!(
            script.contains(&format!("image {repo} ")),
            "{name}: scripts/images.sh builds {image}"
        );
        assert_ne!(base_svc["image"], svc["image"], "{name} is swapped");
    }
    // event-updater and Kafka run the images compose.yaml names and builds from this
    // repository's Dockerfiles, which scripts/images.sh tags (from their `prebuilt` targets).
    let mut covered: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for (name, image, dockerfile) in [
        ("event-updater", "event-updater", "deploy/Dockerfile"),
        ("kafka", "event-updater-kafka", "deploy/kafka/Dockerfile"),
    ] {
        let svc = compose_service(&base, name);
        assert_eq!(str_at(svc, "/image"), format!("{image}:local"));
        assert_eq!(str_at(svc, "/build/dockerfile"), dockerfile);
        assert!(
            !services.contains_key(name),
            "{name}: the override leaves it"
        );
        let line = script
            .lines()
            .find(|l| l.starts_with(&format!("image {image} {dockerfile} ")))
            .unwrap_or_else(|| panic!("scripts/images.sh builds {image} from {dockerfile}"));
        // The build's arguments may continue on the next lines.
        let rest = &script[script.find(line).unwrap()..];
        let call: String = rest
            .lines()
            .scan(true, |more, l| {
                let take = *more;
                *more = l.ends_with('\\');
                take.then_some(l)
            })
            .collect();
        assert!(call.contains("--target prebuilt"), "{call}");
        covered.insert(name);
    }
    // Every service but Grafana (no Debian package) has a local image.
    let all: BTreeSet<&str> = base["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    let missing: Vec<&&str> = all.difference(&covered).collect();
    assert_eq!(missing, [&"grafana"]);
}

#[test]
fn compose_wires_kafka_postgres_and_the_processor() {
    let c = compose();
    let kafka = compose_service(&c, "kafka");
    let postgres = compose_service(&c, "postgres");
    let app = compose_service(&c, "event-updater");

    // Kafka: the project's image, configured only through its launcher's environment (the
    // broker's configuration is the committed file: see the test below).
    let k = compose_env(kafka);
    let launcher = kafka_sh_variables();
    for name in k.keys() {
        assert!(
            launcher.contains(name),
            "{name} is one of {KAFKA_SH}'s: {launcher:?}"
        );
    }
    // The processor reaches the broker at the address it advertises to the network, by
    // service name, on the port the image listens on.
    let cfg = config_from_env(&compose_env(app), "compose.yaml");
    assert_eq!(k["KAFKA_ADVERTISED"], cfg.kafka_bootstrap_servers);
    let broker_host = cfg.kafka_bootstrap_servers.split(':').next().unwrap();
    assert!(
        broker_host == "kafka" || str_at(kafka, "/hostname") == broker_host,
        "{broker_host}"
    );
    let listen = k
        .get("KAFKA_LISTEN")
        .cloned()
        .unwrap_or_else(|| kafka_sh_default("KAFKA_LISTEN"));
    assert_eq!(port_of(&cfg.kafka_bootstrap_servers), port_of(&listen));
    // The host's listener: its container port is the one published, on a host port that
    // KAFKA_HOST_PORT picks, and it advertises localhost at that same host port.
    let published: Vec<String> = kafka["ports"]
        .as_array()
        .expect("kafka publishes a port")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(published.len(), 1, "{published:?}");
    let (host_side, container_side) = published[0].rsplit_once(':').expect("HOST:CONTAINER");
    assert_eq!(
        container_side.parse::<u16>().ok(),
        Some(port_of(&k["KAFKA_EXTERNAL"]))
    );
    assert!(
        host_side.starts_with("${KAFKA_HOST_PORT:-") && host_side.ends_with('}'),
        "the host port is configurable: {host_side}"
    );
    assert_eq!(
        k["KAFKA_EXTERNAL_ADVERTISED"],
        format!("localhost:{host_side}")
    );
    // Every listener kafka.sh names has a security protocol in server.properties.
    let server = properties("deploy/kafka/server.properties");
    let protocols: BTreeSet<&str> = server["listener.security.protocol.map"]
        .split(',')
        .map(|m| m.split(':').next().unwrap().trim())
        .collect();
    for name in ["PLAINTEXT", "CONTROLLER", "EXTERNAL"] {
        assert!(read(KAFKA_SH).contains(&format!("{name}://")), "{name}");
        assert!(protocols.contains(name), "{name} has a security protocol");
    }
    // KRaft, one node that is broker and controller.
    let roles: BTreeSet<&str> = server["process.roles"].split(',').map(str::trim).collect();
    assert_eq!(roles, BTreeSet::from(["broker", "controller"]));
    assert!(read(KAFKA_SH).contains(&format!("controller.quorum.voters={}@", server["node.id"])));
    // A single broker: internal topics and the processor's topics with one replica.
    assert_eq!(server["offsets.topic.replication.factor"], "1");
    assert_eq!(server["transaction.state.log.replication.factor"], "1");
    assert_eq!(cfg.topic_replication_factor, 1);

    // PostgreSQL: the URL names the service, its database, user and password.
    let p = compose_env(postgres);
    let url = &cfg.database_url;
    let expected = format!(
        "postgres://{}:{}@postgres:5432/{}",
        p["POSTGRES_USER"], p["POSTGRES_PASSWORD"], p["POSTGRES_DB"]
    );
    assert_eq!(url, &expected);

    // Started once both are healthy, and both have a health check.
    for dep in ["kafka", "postgres"] {
        assert_eq!(
            app.pointer(&format!("/depends_on/{dep}/condition")),
            Some(&Value::from("service_healthy")),
            "event-updater waits for {dep}"
        );
        // Its own, or its image's (Kafka's is deploy/kafka/Dockerfile's HEALTHCHECK).
        let svc = compose_service(&c, dep);
        let own = svc.pointer("/healthcheck/test").is_some();
        let image = svc
            .pointer("/build/dockerfile")
            .and_then(Value::as_str)
            .is_some_and(|d| dockerfile_at(d).iter().any(|(i, _)| i == "HEALTHCHECK"));
        assert!(own || image, "{dep} has a healthcheck");
    }

    // Built from this repository's Dockerfile, running `serve`.
    let context = root().join("deploy").join(str_at(app, "/build/context"));
    let dockerfile = context.join(str_at(app, "/build/dockerfile"));
    assert_eq!(
        dockerfile.canonicalize().expect("the Dockerfile exists"),
        root().join("deploy/Dockerfile").canonicalize().unwrap()
    );
    assert!(
        context.join("Cargo.toml").exists(),
        "the context is the repository"
    );
    let command: Vec<String> = app["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(command.len(), 1);
    assert!(binary_subcommands().contains(&command[0]));

    // Prometheus and Grafana mount files that exist, where the images read them.
    let mounts = |svc: &str| -> BTreeMap<String, PathBuf> {
        compose_service(&c, svc)["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|v| {
                let v = scalar(v);
                let mut parts = v.split(':');
                let source = parts.next().unwrap();
                let target = parts.next().expect("source:target");
                let source = root().join("deploy").join(source);
                assert!(source.exists(), "{} exists", source.display());
                (target.to_string(), source)
            })
            .collect()
    };
    let prom = mounts("prometheus");
    assert!(prom
        .get("/etc/prometheus/prometheus.yml")
        .is_some_and(|p| p.ends_with("prometheus/prometheus.yml")));
    let grafana = mounts("grafana");
    assert!(grafana
        .get("/etc/grafana/provisioning")
        .is_some_and(|p| p.join("datasources").is_dir() && p.join("dashboards").is_dir()));
    let providers = yaml("deploy/grafana/provisioning/dashboards/event-updater.yaml");
    let path = str_at(&providers, "/providers/0/options/path");
    let dashboards = grafana
        .get(path)
        .unwrap_or_else(|| panic!("the dashboards' directory {path} is mounted"));
    assert!(dashboards.join("event-updater.json").exists());
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let url = str_at(&datasources, "/datasources/0/url");
    let host = url.trim_start_matches("http://").split(':').next().unwrap();
    compose_service(&c, host);
}

#[test]
fn kafka_has_one_committed_configuration_that_its_image_and_compose_run() {
    // kafka.sh reads the configuration beside it, and only adds this instance's addresses.
    let launcher = read(KAFKA_SH);
    for file in ["server.properties", "log4j2.properties"] {
        assert!(
            launcher.contains(&format!("\"$HERE/{file}\"")),
            "{KAFKA_SH} reads its own {file}"
        );
    }
    // The one broker configuration in the repository.
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() && !matches!(name, "target" | ".git") {
                walk(&p, out);
            } else if name == "server.properties" {
                out.push(p);
            }
        }
    }
    let mut configs = Vec::new();
    walk(&root(), &mut configs);
    assert_eq!(configs, [root().join("deploy/kafka/server.properties")]);

    // The image: that launcher with that configuration beside it, as its entrypoint.
    let image = dockerfile_at("deploy/kafka/Dockerfile");
    let args = |instr: &str| args_of(&image, instr);
    let entrypoint: Vec<String> =
        serde_json::from_str(args("ENTRYPOINT").pop().expect("ENTRYPOINT")).expect("exec form");
    assert_eq!(entrypoint.len(), 1, "{entrypoint:?}");
    let dir = entrypoint[0]
        .strip_suffix("/kafka.sh")
        .expect("the entrypoint is kafka.sh");
    let copied = args("COPY")
        .into_iter()
        .find(|a| a.contains(KAFKA_SH))
        .expect("kafka.sh is copied in");
    let parts: Vec<&str> = copied.split_whitespace().collect();
    assert_eq!(parts.last(), Some(&format!("{dir}/").as_str()));
    let sources: BTreeSet<&str> = parts[..parts.len() - 1].iter().copied().collect();
    assert_eq!(
        sources,
        BTreeSet::from([
            KAFKA_SH,
            "deploy/kafka/server.properties",
            "deploy/kafka/log4j2.properties"
        ])
    );
    // Its environment is kafka.sh's; the heap is bounded; the client port is exposed.
    let env = env_of(&image);
    let launcher_vars = kafka_sh_variables();
    for name in env.keys() {
        assert!(launcher_vars.contains(name), "ENV {name} is kafka.sh's");
    }
    assert_eq!(env["KAFKA_HEAP"], "512m");
    assert_eq!(env["KAFKA_CLASSPATH"], format!("{dir}/libs/*"));
    let exposed: Vec<u16> = args("EXPOSE")
        .iter()
        .map(|p| p.parse().expect("a port"))
        .collect();
    assert_eq!(exposed, [port_of(&kafka_sh_default("KAFKA_LISTEN"))]);
    // Not root: a fixed uid that useradd creates, owning the data directory.
    let user = args("USER").pop().expect("USER").clone();
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}");
    let runs = args("RUN")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        runs.contains(&format!("--uid {uid}")),
        "useradd --uid {uid}"
    );
    assert!(runs.contains("openjdk-17-jre-headless"));
    assert!(runs.contains(&format!("-o {uid} ")) && runs.contains(&env["KAFKA_DATA"]));
    // The jars: from the Maven stage (the default, last target) or from target/kafka/jars
    // (`prebuilt`, which .dockerignore lets through), into the classpath's directory.
    let froms: Vec<&String> = args("FROM");
    assert_eq!(
        froms,
        [
            "${MAVEN_IMAGE} AS jars",
            "${RUNTIME_IMAGE} AS runtime-base",
            "runtime-base AS prebuilt",
            "runtime-base AS runtime"
        ]
    );
    assert!(runs.contains("scripts/kafka-jars.sh copy"));
    let jars: Vec<&String> = args("COPY")
        .into_iter()
        .filter(|a| a.ends_with(&format!(" {dir}/libs/")))
        .collect();
    assert_eq!(jars.len(), 2, "{jars:?}");
    assert!(jars[0].starts_with("target/kafka/jars/ "), "{jars:?}");
    assert!(jars[1].starts_with("--from=jars "), "{jars:?}");
    assert!(read(".dockerignore")
        .lines()
        .any(|l| l.trim() == "!target/kafka/jars"));
    // The health check asks Kafka: an ApiVersions request (api key 18) on the client port.
    let health = args("HEALTHCHECK").pop().expect("HEALTHCHECK");
    let exec = &health[health.find("CMD").expect("HEALTHCHECK ... CMD") + 3..];
    let argv: Vec<String> = serde_json::from_str(exec.trim()).expect("exec-form CMD");
    assert!(
        argv.iter()
            .any(|a| a.contains("/dev/tcp/127.0.0.1/") && a.contains("\\x00\\x12\\x00\\x00")),
        "{argv:?}"
    );

    // compose runs that image with no configuration of its own: no entrypoint or command of
    // its own, no file mounted over the committed ones, no broker properties in KAFKA_OVERRIDES.
    let c = compose();
    let kafka = compose_service(&c, "kafka");
    assert_eq!(
        str_at(kafka, "/build/dockerfile"),
        "deploy/kafka/Dockerfile"
    );
    assert_eq!(
        root()
            .join("deploy")
            .join(str_at(kafka, "/build/context"))
            .canonicalize()
            .unwrap(),
        root().canonicalize().unwrap()
    );
    for key in ["entrypoint", "command", "volumes"] {
        assert!(kafka.get(key).is_none(), "compose's kafka sets {key}");
    }
    assert!(!compose_env(kafka).contains_key("KAFKA_OVERRIDES"));
    // And scripts/services.sh runs the same launcher on this machine.
    assert!(read("scripts/services.sh").contains(KAFKA_SH));
}

/// Metric names, with their label names, in PromQL expressions.
fn promql_metrics(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    const KEYWORDS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut grouping: BTreeSet<String> = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            if KEYWORDS.contains(&word.as_str()) && chars.get(j) == Some(&'(') {
                let end = j + chars[j..].iter().position(|&c| c == ')').expect("closed");
                let list: String = chars[j + 1..end].iter().collect();
                grouping.extend(
                    list.split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
                i = end + 1;
            } else if word.starts_with("event_updater_") {
                let mut labels = BTreeSet::new();
                if chars.get(j) == Some(&'{') {
                    let end = j + chars[j..].iter().position(|&c| c == '}').expect("closed");
                    let matchers: String = chars[j + 1..end].iter().collect();
                    for m in matchers.split(',') {
                        let name = m.split(['=', '!']).next().unwrap().trim();
                        if !name.is_empty() {
                            labels.insert(name.to_string());
                        }
                    }
                    i = end + 1;
                }
                out.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    // Grouping labels apply to the metrics of the expression.
    for (_, labels) in &mut out {
        labels.extend(grouping.iter().cloned());
    }
    out
}

/// README's documented metrics (the "Operating it" section): name -> label names.
fn documented_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let section = readme_section("Operating it");
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("event_updater_"))
        .map(|s| {
            let (name, labels) = s.split_once('{').unwrap_or((s, ""));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            (name.to_string(), labels)
        })
        .collect()
}

/// The histogram series a documented metric exports.
fn base_metric(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// What the binary's metrics module renders after recording one of each happening: metric
/// series name -> label names.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    use event_updater::domain::decide::OutcomeKind;
    use event_updater::domain::reply::Destination;
    use event_updater::metrics;
    let handle = metrics::install().expect("the recorder installs");
    metrics::record_command(201, OutcomeKind::New, Some(Duration::from_millis(3)));
    metrics::record_batch(5, Duration::from_millis(2), None);
    metrics::record_db_error("unavailable");
    metrics::record_published(Destination::Reply, 1);
    metrics::record_published(Destination::DeadLetter, 1);
    metrics::record_publish_failed(Destination::Reply, false);
    metrics::record_rebalance(3);
    metrics::record_consumer_lag("commands", 0, 7);
    metrics::record_published(Destination::Changes, 1);
    metrics::record_published(Destination::View, 1);
    metrics::record_publish_failed(Destination::Changes, false);
    metrics::record_topic_unusable(Destination::Changes, "changes", false);
    metrics::record_feed_lag(3, Duration::from_millis(40));
    let text = handle.render();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split_whitespace().next().unwrap();
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_string()).or_default();
        for l in labels.trim_end_matches('}').split(',') {
            if let Some((k, _)) = l.split_once('=') {
                entry.insert(k.to_string());
            }
        }
    }
    // The DLQ series the dashboard selects.
    assert!(
        text.contains("event_updater_records_published_total{topic=\"dlq\"}"),
        "{text}"
    );
    out
}

#[test]
fn the_dashboard_queries_documented_and_exported_metrics_only() {
    let dashboard = json_file("deploy/grafana/dashboards/event-updater.json");
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let uid = str_at(&datasources, "/datasources/0/uid");
    assert_eq!(str_at(&datasources, "/datasources/0/type"), "prometheus");

    let documented = documented_metrics();
    assert!(
        documented.contains_key("event_updater_commands_total")
            && documented.contains_key("event_updater_command_latency_seconds"),
        "README's metric list is read: {documented:?}"
    );
    let exported = exported_series();

    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["type"] == "row" {
            // A row only groups the panels below it: no query of its own.
            assert!(panel.get("targets").is_none(), "row {title}");
            continue;
        }
        assert_eq!(
            panel.pointer("/datasource/uid").and_then(Value::as_str),
            Some(uid),
            "panel {title}: the provisioned datasource"
        );
        for t in panel["targets"].as_array().expect("targets") {
            if let Some(ds) = t.pointer("/datasource/uid") {
                assert_eq!(ds, uid, "panel {title}");
            }
            exprs.push(str_at(t, "/expr").to_string());
        }
    }
    assert!(!exprs.is_empty());

    for expr in &exprs {
        let metrics = promql_metrics(expr);
        assert!(
            !metrics.is_empty(),
            "{expr} queries an event_updater_ metric"
        );
        for (name, labels) in metrics {
            let base = base_metric(&name);
            let doc_labels = documented
                .get(&name)
                .or_else(|| documented.get(base))
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not in README's metrics"));
            let exported_labels = exported
                .get(&name)
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not exported: {exported:?}"));
            for label in &labels {
                let ok = TARGET_LABELS.contains(&label.as_str())
                    || (doc_labels.contains(label) && exported_labels.contains(label))
                    || (label == "le"
                        && name.ends_with("_bucket")
                        && exported_labels.contains(label));
                assert!(ok, "label {label} of {name} in {expr}");
            }
        }
    }

    // The panels the dashboard is for.
    let all = exprs.join("\n");
    let has = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    assert!(has("rate(event_updater_commands_total[1m])") && all.contains("by (status)"));
    for h in [
        "event_updater_command_latency_seconds_bucket",
        "event_updater_batch_size_bucket",
        "event_updater_db_transaction_seconds_bucket",
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("histogram_quantile") && e.contains(h)),
            "quantiles of {h}"
        );
    }
    assert!(exprs
        .iter()
        .any(|e| e.contains("event_updater_consumer_lag") && e.contains("by (partition)")));
    assert!(has(
        "rate(event_updater_records_published_total{topic=\"dlq\"}[1m])"
    ));
    // The change feed's row: its records published, its publish failures, its lag.
    assert!(dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .any(|p| p["type"] == "row" && p["title"] == "Change feed"));
    let feed = "topic=~\"changes|view\"";
    assert!(has(&format!(
        "rate(event_updater_records_published_total{{{feed}}}[1m])"
    )));
    assert!(has(&format!(
        "rate(event_updater_publish_failures_total{{{feed}}}[1m])"
    )));
    for gauge in [
        "event_updater_feed_lag_changes",
        "event_updater_feed_lag_seconds",
    ] {
        assert!(has(gauge), "a panel of {gauge}");
    }
}

#[test]
fn the_dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let instructions = dockerfile();
    // The base images are build arguments (declared before the first FROM), the public images
    // by default.
    let first_from = instructions
        .iter()
        .position(|(i, _)| i == "FROM")
        .expect("FROM");
    let args: BTreeMap<&str, &str> = instructions[..first_from]
        .iter()
        .filter(|(i, _)| i == "ARG")
        .map(|(_, a)| a.split_once('=').expect("ARG NAME=default"))
        .collect();
    assert_eq!(
        args,
        BTreeMap::from([
            ("RUNTIME_IMAGE", "debian:bookworm-slim"),
            ("RUST_IMAGE", "rust:1-bookworm")
        ])
    );
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    // builder; the runtime without the binary; the binary compiled outside (`prebuilt`) or in
    // the builder (`runtime`, the last stage, so the default target).
    assert_eq!(
        froms,
        [
            "${RUST_IMAGE} AS builder",
            "${RUNTIME_IMAGE} AS runtime-base",
            "runtime-base AS prebuilt",
            "runtime-base AS runtime"
        ]
    );
    let stage_of = |idx: usize| {
        instructions[..idx]
            .iter()
            .filter(|(i, _)| i == "FROM")
            .count()
    };
    let runs: Vec<(usize, &String)> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "RUN")
        .map(|(n, (_, a))| (stage_of(n), a))
        .collect();
    let in_stage =
        |stage: usize, needle: &str| runs.iter().any(|(s, a)| *s == stage && a.contains(needle));
    assert!(in_stage(1, "cargo build --release --locked"));
    for pkg in ["libssl-dev", "pkg-config"] {
        assert!(in_stage(1, pkg), "builder installs {pkg}");
    }
    for pkg in ["ca-certificates", "libssl3"] {
        assert!(in_stage(2, pkg), "runtime installs {pkg}");
    }
    assert!(!in_stage(2, "cargo"), "no toolchain in the runtime image");
    // The two final stages add nothing but the binary, at the same place.
    for stage in [3, 4] {
        let own: Vec<&(String, String)> = instructions
            .iter()
            .enumerate()
            .filter(|(n, (i, _))| stage_of(*n) == stage && i != "FROM")
            .map(|(_, x)| x)
            .collect();
        assert_eq!(own.len(), 1, "stage {stage}: {own:?}");
        assert_eq!(own[0].0, "COPY");
        assert!(
            own[0].1.ends_with(" /usr/local/bin/event-updater"),
            "{own:?}"
        );
    }

    // The builder gets the sources the build needs, and .dockerignore does not hide them.
    let ignored = read(".dockerignore");
    for (_, args) in instructions.iter().filter(|(i, _)| i == "COPY") {
        if args.starts_with("--from") {
            assert!(args.contains("/usr/local/bin/event-updater"), "{args}");
            continue;
        }
        if args.starts_with("target/") {
            // The prebuilt binary: outside the sources, in the context only when built, and
            // let through .dockerignore's `target/`.
            assert!(args.starts_with("target/release/event-updater "), "{args}");
            assert!(
                ignored
                    .lines()
                    .any(|l| l.trim() == "!target/release/event-updater"),
                ".dockerignore lets the prebuilt binary through"
            );
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: missing");
            assert!(
                !ignored
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == *src),
                "{src} is in .dockerignore"
            );
        }
    }

    // A fixed non-root uid, the user that useradd creates.
    let user = dockerfile_args("USER").pop().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}");
    assert!(runs
        .iter()
        .any(|(_, a)| a.contains(&format!("--uid {uid}"))));

    // The binary is the entrypoint and `serve` (a subcommand it has) the default command.
    let entrypoint: Vec<String> =
        serde_json::from_str(&dockerfile_args("ENTRYPOINT").pop().expect("ENTRYPOINT"))
            .expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, ["event-updater"]);
    let cmd: Vec<String> =
        serde_json::from_str(&dockerfile_args("CMD").pop().expect("CMD")).expect("exec-form CMD");
    assert_eq!(cmd, ["serve"]);
    assert!(binary_subcommands().contains("serve"));

    // The health check is an exec-form command that asks /readyz for a 200 (tests/it/containers.rs
    // runs it: healthy once serving, unhealthy when the database is gone).
    let health = dockerfile_args("HEALTHCHECK").pop().expect("HEALTHCHECK");
    let exec = &health[health.find("CMD").expect("HEALTHCHECK ... CMD") + 3..];
    let argv: Vec<String> = serde_json::from_str(exec.trim()).expect("exec-form CMD");
    assert!(argv
        .iter()
        .any(|a| a.contains("GET /readyz") && a.contains("200")));
}

/// The Rust files under `dir`, at any depth.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Every Rust file under `src/` is named in the README's Layout section (by its path below
/// `src/`, or its file name), so the map a newcomer reads cannot leave files out.
#[test]
fn the_readme_layout_names_every_source_file() {
    let layout = readme_section("Layout");
    let src = root().join("src");
    let files = rust_files(&src);
    assert!(files.len() > 10, "{files:?}");
    let missing: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&src)
                .expect("below src/")
                .display()
                .to_string()
        })
        .filter(|rel| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            !layout.contains(&format!("`src/{rel}`")) && !layout.contains(&format!("`{name}`"))
        })
        .collect();
    assert!(missing.is_empty(), "README's Layout leaves out {missing:?}");
}

/// The layers keep to their imports (see the module docs of `src/domain` and `src/drf`): the
/// domain does no I/O (no sqlx, rdkafka, or the store and pipeline modules), and DRF's rules
/// depend on nothing else of the crate.
#[test]
fn the_domain_does_no_io_and_drf_stands_alone() {
    let check = |folder: &str, banned: &[&str]| {
        let files = rust_files(&root().join(folder));
        assert!(!files.is_empty(), "{folder}");
        let mut found = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for b in banned {
                    if code.contains(b) {
                        found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "{folder} imports what it may not:\n{}",
            found.join("\n")
        );
    };
    check(
        "src/domain",
        &[
            "sqlx",
            "rdkafka",
            "crate::store",
            "crate::pipeline",
            "crate::startup",
            "crate::metrics",
        ],
    );
    check(
        "src/drf",
        &[
            "sqlx",
            "rdkafka",
            "crate::domain",
            "crate::store",
            "crate::pipeline",
            "crate::config",
        ],
    );
}
