//! The local stack: `docker-compose` brings up deploy/compose.yaml with the local images;
//! commands go through it, its replies and `/metrics` are read, Kafka's host listener answers,
//! and Prometheus scrapes the processor and evaluates every expression of the dashboard.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::docker::{docker_ready, health_of, save_logs, wait_for_health};
use crate::support::http_get;

/// `docker-compose` with the project's files, the local images, this test's project name and
/// host ports.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    /// Runs `docker-compose args...`: whether it succeeded, its stdout, its stderr.
    fn output(&self, args: &[&str]) -> (bool, String, String) {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root)
            .args([
                "-p",
                &self.project,
                "-f",
                "deploy/compose.yaml",
                "-f",
                "deploy/local/compose.override.yaml",
            ])
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match cmd.output() {
            Ok(out) => (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ),
            Err(e) => (false, String::new(), e.to_string()),
        }
    }

    /// Its stdout, or an error with both outputs.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        match self.output(args) {
            (true, stdout, _) => Ok(stdout),
            (false, stdout, stderr) => Err(format!(
                "docker-compose {} failed: {stdout}\n{stderr}",
                args.join(" ")
            )),
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if let Ok(id) = self.run(&["ps", "-q", "event-updater"]) {
            save_logs(&id, &format!("{}-event-updater", self.project));
        }
        let _ = self.run(&["down", "-v", "--timeout", "45"]);
    }
}

/// `N` distinct ports free on the host now (all held at once while they are picked).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("0.0.0.0:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("its address").port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_compose_stack_answers_commands_and_serves_metrics() {
    let test = "the_local_compose_stack_answers_commands_and_serves_metrics";
    if !docker_ready(&format!("compose::{test}")) {
        return;
    }
    if let Err(e) = Command::new("docker-compose").arg("version").output() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: CI=true and docker-compose is not available: {e}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED containers::compose::{test}: docker-compose is not available ({e})"
        );
        return;
    }
    // Every port the stack publishes (Grafana is not started) is one free here now.
    let [http_port, prometheus_port, kafka_port] = free_ports();
    let compose = Compose {
        project: format!("eu-smoke-{}", &Uuid::new_v4().simple().to_string()[..8]),
        env: vec![
            ("EVENT_UPDATER_HTTP_PORT".into(), http_port.to_string()),
            ("PROMETHEUS_PORT".into(), prometheus_port.to_string()),
            ("KAFKA_HOST_PORT".into(), kafka_port.to_string()),
        ],
    };
    compose
        .run(&[
            "up",
            "-d",
            "kafka",
            "postgres",
            "event-updater",
            "prometheus",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let processor = compose
        .run(&["ps", "-q", "event-updater"])
        .unwrap_or_else(|e| panic!("{e}"));
    let took = wait_for_health(&processor, "healthy", Duration::from_secs(120)).await;
    println!("compose: event-updater healthy after {took:?}");
    let kafka = compose
        .run(&["ps", "-q", "kafka"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health_of(&kafka), "healthy", "Kafka's health check");

    // Kafka's host listener: published on KAFKA_HOST_PORT and advertised there, so a client on
    // the host is sent back to the port it bootstrapped from; the processor's command topic
    // (created by it through kafka:9092) is there, with the processor's partition count.
    let setting = |name: &str| {
        compose
            .run(&["exec", "-T", "event-updater", "printenv", name])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let topic_partitions = setting("TOPIC_PARTITIONS");
    // The command topic, and the change feed's topics compose sets (the feed is on).
    let topics: Vec<String> = ["COMMAND_TOPIC", "CHANGES_TOPIC", "VIEW_TOPIC"]
        .into_iter()
        .map(setting)
        .collect();
    assert!(topics.iter().all(|t| !t.is_empty()), "{topics:?}");
    let host_listener = format!("localhost:{kafka_port}");
    let (brokers, partitions) = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &host_listener)
            .create()
            .expect("a client");
        let mut brokers = Vec::new();
        let mut partitions = Vec::new();
        for name in &topics {
            let metadata = client
                .fetch_metadata(Some(name), Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("metadata from {host_listener}: {e}"));
            brokers = metadata
                .brokers()
                .iter()
                .map(|b| (b.host().to_string(), b.port()))
                .collect();
            let topic = &metadata.topics()[0];
            assert!(topic.error().is_none(), "{name}: {:?}", topic.error());
            partitions.push((name.clone(), topic.partitions().len().to_string()));
        }
        (brokers, partitions)
    })
    .await
    .expect("the metadata request");
    assert_eq!(brokers, [("localhost".to_string(), i32::from(kafka_port))]);
    for (name, count) in &partitions {
        assert_eq!(count, &topic_partitions, "partitions of {name}");
    }

    // A token, then commands through the stack's broker with the binary's own `send`.
    let token = compose
        .run(&[
            "exec",
            "-T",
            "event-updater",
            "event-updater",
            "token",
            "create",
            "--name",
            "smoke",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let token = token.lines().last().expect("the token").trim().to_string();
    let event = Uuid::new_v4().to_string();
    let send = |body: &str| -> (bool, Value) {
        let env = format!("EVENT_UPDATER_TOKEN={token}");
        let (ok, stdout, stderr) = compose.output(&[
            "exec",
            "-T",
            "-e",
            &env,
            "event-updater",
            "event-updater",
            "send",
            "--event-uuid",
            &event,
            "--body",
            body,
        ]);
        let json = stdout
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .unwrap_or_else(|| panic!("no reply from `send`: {stdout}\n{stderr}"));
        (ok, json)
    };
    let (ok, created) = send(r#"{"action": "login", "app": "smoke"}"#);
    assert!(ok, "{created}");
    assert_eq!(created["status"], 201, "{created}");
    assert_eq!(created["version"], 1, "{created}");
    let (ok, updated) = send(r#"{"action": "logout", "app": "smoke"}"#);
    assert!(
        ok && updated["status"] == 200 && updated["version"] == 2,
        "{updated}"
    );
    assert_eq!(updated["body"]["action"], "logout");
    let (ok, refused) = send(r#"{"action": "LOGIN", "app": "smoke"}"#);
    assert!(!ok, "a 400 exits 1");
    assert_eq!(refused["status"], 400, "{refused}");

    // /metrics on the published port counts them, and the two changes they appended (the 400
    // appended none) published on the changes topic; a change is counted once the broker
    // acknowledged it, which may be just after its reply: read until it shows, 10 s at most.
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let published = "event_updater_records_published_total{topic=\"changes\"} 2";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = http_get(metrics_addr, "/metrics").await;
    while !metrics.contains(published) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = http_get(metrics_addr, "/metrics").await;
    }
    for series in [
        "event_updater_commands_total{status=\"201\",outcome=\"new\"} 1",
        "event_updater_commands_total{status=\"200\",outcome=\"new\"} 1",
        "event_updater_commands_total{status=\"400\",outcome=\"new\"} 1",
        published,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    // Prometheus (Debian's, the mounted prometheus.yml) scrapes it.
    let prometheus = std::net::SocketAddr::from(([127, 0, 0, 1], prometheus_port));
    let started = Instant::now();
    loop {
        let body = http_get(
            prometheus,
            "/api/v1/query?query=event_updater_commands_total%7Bstatus%3D%22201%22%7D",
        )
        .await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let found = v["data"]["result"][0]["value"][1].as_str() == Some("1");
        if found {
            println!(
                "compose: Prometheus has the processor's metrics after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus did not scrape the processor: {body}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Every expression of the Grafana dashboard is one this Prometheus evaluates (its syntax is
    // Prometheus's to judge, not a parser of ours).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            crate::support::yaml::root().join("deploy/grafana/dashboards/event-updater.json"),
        )
        .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue; // a row groups panels; it has no query
        }
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let body = http_get(
                prometheus,
                &format!("/api/v1/query?query={}", percent(expr)),
            )
            .await;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            assert_eq!(v["status"], "success", "Prometheus on {expr}: {body}");
            checked += 1;
        }
    }
    println!("compose: Prometheus evaluated the dashboard's {checked} expressions");
    drop(compose);
}

/// `s` percent-encoded for a URL's query (every byte but unreserved ones).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
