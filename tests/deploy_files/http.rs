//! The HTTP port and probe paths: the same in the binary, the Dockerfile, compose, Prometheus
//! and Kubernetes, and served by the binary's HTTP server as the README says.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use event_updater::pipeline::health::Health;
use serde_json::Value;

use crate::binary::{binary_options, config_from_env, default_port};
use crate::compose::{compose, compose_env, compose_service};
use crate::dockerfile::{dockerfile_args, dockerfile_env};
use crate::k8s::{k8s_container, k8s_env, k8s_files};
use crate::support::{scalar, yaml};

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
