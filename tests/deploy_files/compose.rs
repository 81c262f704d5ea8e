//! deploy/compose.yaml and deploy/local/compose.override.yaml: the stack wires Kafka,
//! PostgreSQL and the processor together, and the local override swaps in only the images
//! scripts/images.sh builds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::binary::{binary_subcommands, config_from_env};
use crate::dockerfile::dockerfile_at;
use crate::kafka::{kafka_sh_default, kafka_sh_variables, KAFKA_SH};
use crate::support::{port_of, properties, read, scalar, str_at, yaml};
use crate::yaml::root;

pub(crate) fn compose() -> Value {
    yaml("deploy/compose.yaml")
}

pub(crate) fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

/// A compose service's `environment`, in either of its two forms.
pub(crate) fn compose_env(service: &Value) -> BTreeMap<String, String> {
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
