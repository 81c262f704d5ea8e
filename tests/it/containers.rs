//! Integration tests through containers: the image `scripts/images.sh` builds from
//! deploy/Dockerfile, started with the testcontainers module (testcontainers-event-updater)
//! beside a PostgreSQL container and a Kafka container (the module's `Kafka`: the image of
//! deploy/kafka/Dockerfile) on one Docker network of the test's own; the test publishes
//! commands and reads replies from the host, at the containers' addresses on that network.
//!
//! - The image's own parts, run: the health check (starting, healthy, unhealthy when the
//!   database is gone, healthy again), the non-root user, and the stop signal (`docker stop`
//!   ends it with exit code 0); and its change feed, read from the host as a downstream test
//!   would through the module (`changes_topic()`, `view_topic()`): the command's change record
//!   and its event's view record, which fold to and equal the `events` row.
//! - Faults only containers can make, under load: PostgreSQL cut off from the processor with
//!   `docker network disconnect` for 30 s, then reconnected; the Kafka container cut off the
//!   same way;
//!   `docker stop` in the middle of a batch and a new container started on the same database.
//!   After each: nothing lost, nothing applied twice, every command answered, versions 1..n,
//!   the view a fold of the log (tests/it/support/exactly_once.rs, shared with tests/it/faults.rs);
//!   and the change feed whole: per event versions 1..n, repeats byte-identical, folding to the
//!   row, the view topic's last record equal to it (tests/it/support/feed.rs).
//! - The local stack: `docker-compose` brings up deploy/compose.yaml with
//!   deploy/local/compose.override.yaml (the local images, nothing pulled) on free host ports;
//!   commands go through it and its replies and `/metrics` are read, Kafka's host listener
//!   answers at its published port, and Prometheus scrapes the processor.
//!
//! Without Docker these tests say so on stderr (`SKIPPED <test>: <why>`) and pass without
//! running; with `CI=true` a missing Docker fails them instead. With Docker, the images must
//! exist (`scripts/images.sh`; the Test command runs it).
//!
//! `FAULT_COMMANDS` (default 3000; each fault test sends half) and `FAULT_EVENTS` (200) size
//! the load; `CONTAINER_OUTAGE_SECS` (30) the network cuts. Container logs go to
//! `target/test-logs/`.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::exactly_once::{
    assert_exactly_once, env_or, fault_load, send_paced, wait_for_all_or_explain, Rng,
};
use crate::support::feed::{check_changes, fold_equals_view, read_topic, view_topic_matches};
use crate::support::{docker, http_get, http_status, wait_for_status, Received, Services, TestApp};
use event_updater::domain::feed::SCHEMA_VERSION;
use event_updater::domain::reply::header;
use serde_json::{json, Value};
use testcontainers_event_updater::testcontainers::core::WaitFor;
use testcontainers_event_updater::testcontainers::runners::AsyncRunner;
use testcontainers_event_updater::testcontainers::{ContainerAsync, GenericImage, ImageExt};
use testcontainers_event_updater::{
    kafka_bootstrap_servers, EventUpdater, Kafka, DEFAULT_CHANGES_TOPIC, DEFAULT_VIEW_TOPIC,
    KAFKA_PORT, METRICS_PORT, SCHEMA_VERSION_HEADER,
};
use uuid::Uuid;

/// The tag scripts/images.sh gives its images.
const LOCAL_TAG: &str = "local";
const POSTGRES_IMAGE: &str = "event-updater-postgres";
const BROKER_IMAGE: &str = testcontainers_event_updater::DEFAULT_KAFKA_IMAGE.0;
const PROCESSOR_IMAGE: &str = "event-updater";
/// The image's user (deploy/Dockerfile's USER).
const IMAGE_UID: &str = "10001";

// ---------------------------------------------------------------------------------------------
// Docker, through its command line.

fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether this test can run: Docker answers and the local images exist. Without Docker it
/// writes `SKIPPED <test>: <why>` straight to stderr (past the test harness's capture) and
/// returns false, unless `CI=true`: then a missing Docker is a failure. Missing images are
/// always a failure (scripts/images.sh builds them).
fn docker_ready(test: &str) -> bool {
    if let Err(why) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: CI=true and Docker is not available: {why}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED containers::{test}: Docker is not available ({why})"
        );
        return false;
    }
    for image in [PROCESSOR_IMAGE, POSTGRES_IMAGE, BROKER_IMAGE] {
        let name = format!("{image}:{LOCAL_TAG}");
        if docker(&["image", "inspect", &name]).is_err() {
            panic!("{test}: the image {name} is missing; run scripts/images.sh");
        }
    }
    true
}

/// A container's address on `network`.
fn ip_on(container: &str, network: &str) -> String {
    docker_ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
}

/// The container's health status (`starting`, `healthy`, `unhealthy`).
fn health_of(container: &str) -> String {
    docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", container])
}

/// Polls the health status until it is `want`; returns how long that took.
async fn wait_for_health(container: &str, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = health_of(container);
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{container}: health {now}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes a container's log to target/test-logs/<name>.log.
fn save_logs(container: &str, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(out) = Command::new("docker").args(["logs", container]).output() {
        let mut log = out.stdout;
        log.extend_from_slice(&out.stderr);
        let _ = std::fs::write(dir.join(format!("{name}.log")), log);
    }
}

/// Saves a container's log (target/test-logs/<name>.log) when dropped: when its test ends,
/// passed or failed, before the container is removed.
struct SaveLogs(String);

impl Drop for SaveLogs {
    fn drop(&mut self) {
        save_logs(&self.0, &self.0);
    }
}

/// A Docker network of the test's own, with a subnet it chose, so that a container cut off
/// and reconnected gets its address back (`docker network connect --ip`). Removed on drop.
struct Network {
    name: String,
}

impl Network {
    fn create() -> Network {
        let name = format!("eu-test-{}", Uuid::new_v4().simple());
        let mut last = String::new();
        for attempt in 0..20u32 {
            let third = (u32::from(std::process::id().to_le_bytes()[0]) + attempt * 37) % 250 + 2;
            let subnet = format!("172.30.{third}.0/24");
            match docker(&["network", "create", "--subnet", &subnet, &name]) {
                Ok(_) => return Network { name },
                Err(e) => last = e,
            }
        }
        panic!("no network: {last}");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------------
// The stack: PostgreSQL and Kafka in containers, the test's resources on them.

struct Stack {
    /// First, so that the logs are saved before the containers go.
    logs: Vec<SaveLogs>,
    app: TestApp,
    postgres: ContainerAsync<GenericImage>,
    broker: ContainerAsync<Kafka>,
    /// Container names, as the processor's container reaches them.
    postgres_name: String,
    broker_name: String,
    /// Their addresses on the network (the host reaches them there too).
    postgres_ip: String,
    broker_ip: String,
    test: String,
    network: Network,
}

impl Stack {
    async fn start(test: &str, tweak: impl FnOnce(&mut event_updater::Config)) -> Stack {
        let network = Network::create();
        let id = Uuid::new_v4().simple().to_string();
        let postgres_name = format!("eu-pg-{id}");
        let broker_name = format!("eu-broker-{id}");
        let postgres = GenericImage::new(POSTGRES_IMAGE, LOCAL_TAG)
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_network(&network.name)
            .with_container_name(&postgres_name)
            .start()
            .await
            .expect("the PostgreSQL container starts");
        // Ready once it serves requests; it advertises its address on the network, where
        // the processor's container and the host (Linux) both reach it.
        let broker = Kafka::default()
            .with_tag(LOCAL_TAG)
            .with_network(&network.name)
            .with_container_name(&broker_name)
            .start()
            .await
            .unwrap_or_else(|e| {
                save_logs(&broker_name, &broker_name);
                panic!("the Kafka container {broker_name} starts: {e}")
            });
        let postgres_ip = ip_on(&postgres_name, &network.name);
        let broker_ip = ip_on(&broker_name, &network.name);
        let bootstrap = kafka_bootstrap_servers(&broker)
            .await
            .expect("Kafka's address on the network");
        assert_eq!(bootstrap, format!("{broker_ip}:{}", KAFKA_PORT.as_u16()));
        let services = Services::at(format!("postgres://postgres@{postgres_ip}:5432"), bootstrap);
        let app = TestApp::resources_on(services, tweak).await;
        println!(
            "{test}: PostgreSQL at {postgres_ip}, Kafka at {broker_ip}, network {}",
            network.name
        );
        Stack {
            logs: vec![
                SaveLogs(postgres_name.clone()),
                SaveLogs(broker_name.clone()),
            ],
            app,
            postgres,
            broker,
            postgres_name,
            broker_name,
            postgres_ip,
            broker_ip,
            test: test.to_string(),
            network,
        }
    }

    /// The processor's image configured for this stack: names on the network, the test's
    /// database, topics and group.
    fn processor(&self) -> EventUpdater {
        let c = &self.app.cfg;
        let db = c.database_url.rsplit('/').next().expect("database name");
        EventUpdater::default()
            .with_broker(format!("{}:{}", self.broker_name, KAFKA_PORT.as_u16()))
            .with_database_url(format!(
                "postgres://postgres@{}:5432/{db}",
                self.postgres_name
            ))
            .with_topics(&c.command_topic, &c.reply_topic, &c.dlq_topic)
            .with_feed_topics(&c.changes_topic, &c.view_topic)
            .with_group_id(&c.kafka_group_id)
            .with_env("TOPIC_PARTITIONS", c.topic_partitions.to_string())
            .with_env("MAX_BATCH", c.max_batch.to_string())
            .with_env(
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000;heartbeat.interval.ms=500",
            )
    }

    /// Starts `image` as the container `<test>-<name>` on the stack's network.
    async fn start_processor(&self, image: EventUpdater, name: &str) -> ProcessorContainer {
        let container_name = format!("eu-{}-{name}-{}", self.test, &self.network.name[8..16]);
        let container = image
            .with_tag(LOCAL_TAG)
            .with_network(&self.network.name)
            .with_container_name(&container_name)
            .start()
            .await
            .unwrap_or_else(|e| {
                save_logs(&container_name, &container_name);
                panic!("the processor container {container_name} starts: {e}")
            });
        let port = container
            .get_host_port_ipv4(METRICS_PORT)
            .await
            .expect("the HTTP port is mapped");
        ProcessorContainer {
            logs: SaveLogs(container_name.clone()),
            container,
            name: container_name,
            http: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Cuts `container` off the network.
    fn disconnect(&self, container: &str) {
        docker_ok(&["network", "disconnect", &self.network.name, container]);
    }

    /// Puts `container` back on the network at its old address `ip` (the broker advertises
    /// its address; clients hold PostgreSQL's).
    fn reconnect(&self, container: &str, ip: &str) {
        docker_ok(&[
            "network",
            "connect",
            "--ip",
            ip,
            &self.network.name,
            container,
        ]);
    }

    /// Removes everything: the test's clients first, then the containers, then the network.
    async fn finish(self) {
        let Stack {
            logs,
            app,
            postgres,
            broker,
            network,
            ..
        } = self;
        drop(logs);
        drop(app);
        let _ = broker.rm().await;
        let _ = postgres.rm().await;
        drop(network);
    }
}

/// A processor in its container.
struct ProcessorContainer {
    /// First, so that the log is saved before the container goes.
    logs: SaveLogs,
    container: ContainerAsync<EventUpdater>,
    name: String,
    /// Its HTTP port, as mapped on the host.
    http: std::net::SocketAddr,
}

impl ProcessorContainer {
    /// `docker stop` with a grace period: the image's STOPSIGNAL (SIGTERM), SIGKILL after it.
    /// Returns the exit code and how long the stop took.
    async fn docker_stop(&self, grace_secs: u32) -> (i64, Duration) {
        let started = Instant::now();
        docker_ok(&["stop", "-t", &grace_secs.to_string(), &self.name]);
        let took = started.elapsed();
        let code: i64 = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .parse()
            .expect("exit code");
        (code, took)
    }

    async fn remove(self) {
        drop(self.logs);
        let _ = self.container.rm().await;
    }
}

/// The first record keyed `key` on `topic`, read from the topic's beginning as a downstream
/// reader would (30 s at most per record).
async fn first_record_keyed(app: &TestApp, topic: &str, key: &str) -> Received {
    let reader = app.new_reader(topic);
    loop {
        let record = TestApp::read_from(&reader).await;
        if record.key.as_deref() == Some(key) {
            return record;
        }
    }
}

/// The change feed's guarantee on both of the test's feed topics, read whole from the host
/// (once the processor has stopped, or after the records looked for were read, so that nothing
/// is still on its way): versions 1..n per event, repeats byte-identical, the deduplicated
/// changes folding to each `events` row, and the view topic's last record per event equal to
/// its row.
async fn assert_feed_whole(app: &TestApp, what: &str) {
    let cfg = &app.cfg;
    let changes = read_topic(cfg, &cfg.changes_topic)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let report = check_changes(&changes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let events = fold_equals_view(&app.pool, &report)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let views = read_topic(cfg, &cfg.view_topic)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    view_topic_matches(&app.pool, &views)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    println!(
        "{what}: the change feed holds {} records ({} repeats) of {} changes over {events} \
         events, each 1..n and folding to its row; the view topic's last records equal the rows",
        report.records,
        report.repeats,
        report.distinct()
    );
}

// ---------------------------------------------------------------------------------------------
// The image's own parts.

/// What the module tells a downstream test about the feed is what the binary does: its topics'
/// default names and the header naming a record's schema version. No Docker needed.
#[test]
fn the_modules_feed_defaults_are_the_binarys() {
    let defaults = event_updater::Config::defaults();
    assert_eq!(defaults.changes_topic, DEFAULT_CHANGES_TOPIC);
    assert_eq!(defaults.view_topic, DEFAULT_VIEW_TOPIC);
    let image = EventUpdater::default();
    assert_eq!(
        (image.changes_topic(), image.view_topic()),
        (DEFAULT_CHANGES_TOPIC, DEFAULT_VIEW_TOPIC)
    );
    assert_eq!(SCHEMA_VERSION_HEADER, header::SCHEMA_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_unprivileged_reports_its_health_and_stops_on_its_stop_signal() {
    let test = "image";
    if !docker_ready("the_image_runs_unprivileged_reports_its_health_and_stops_on_its_stop_signal")
    {
        return;
    }
    let stack = Stack::start(test, |_| {}).await;
    let p = stack
        .start_processor(stack.processor().with_auth_disabled(), "p")
        .await;

    // Started (it logged so), health not yet checked: the first check runs 10 s in.
    assert_eq!(health_of(&p.name), "starting");

    // Not root: the user `docker exec` gets, and the user of the process itself.
    assert_eq!(docker_ok(&["exec", &p.name, "id", "-u"]), IMAGE_UID);
    let status = docker_ok(&["exec", &p.name, "cat", "/proc/1/status"]);
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == IMAGE_UID),
        "PID 1 runs as {uid_line}"
    );

    let took = wait_for_health(&p.name, "healthy", Duration::from_secs(60)).await;
    println!("starting -> healthy after {took:?}");
    assert_eq!(http_status(p.http, "/readyz").await, 200);

    // It serves: a command without a token (AUTH_MODE=disabled) is applied and answered, and
    // /metrics counts it.
    let event = Uuid::new_v4().to_string();
    let cmd = json!({"request_id": "img-1", "event_uuid": event,
        "body": {"action": "login", "app": "containers"}});
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    stack
        .app
        .send_raw_with(
            Some(&event),
            Some(cmd.to_string().as_bytes()),
            &[(header::TRACEPARENT, traceparent.as_bytes())],
            false,
        )
        .await;
    let reply = stack.app.reply().await;
    assert_eq!(reply.status(), 201, "{:?}", reply.value);
    // The processor counts a command once its batch is settled, which may be just after its
    // reply reached Kafka (and the test): read /metrics until the count shows, for 10 s at most.
    let counted = "event_updater_commands_total{status=\"201\",outcome=\"new\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = http_get(p.http, "/metrics").await;
    while !metrics.contains(counted) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = http_get(p.http, "/metrics").await;
    }
    assert!(metrics.contains(counted), "{metrics}");

    // The change feed, read from the host at the broker's address on the network, on the
    // topics the module names: the command's change, then its event's view.
    let cfg = &stack.app.cfg;
    let image = p.container.image();
    assert_eq!(
        (image.changes_topic(), image.view_topic()),
        (cfg.changes_topic.as_str(), cfg.view_topic.as_str())
    );
    let change = first_record_keyed(&stack.app, image.changes_topic(), &event).await;
    assert_eq!(
        change.header(SCHEMA_VERSION_HEADER),
        Some(SCHEMA_VERSION),
        "{change:?}"
    );
    let continued = change
        .header(header::TRACEPARENT)
        .unwrap_or_else(|| panic!("the change carries the command's trace: {change:?}"));
    assert_eq!(
        continued.split('-').nth(1),
        Some(trace_id.as_str()),
        "{continued}"
    );
    let c = &change.value;
    assert_eq!(c["event_uuid"], event.as_str(), "{c}");
    assert_eq!(c["version"], 1, "{c}");
    assert_eq!(c["request_id"], "img-1", "{c}");
    assert_eq!(c["scope"], Value::Null, "no token, no scope: {c}");
    assert_eq!(
        (&c["changes"]["action"], &c["changes"]["app"]),
        (&json!("login"), &json!("containers")),
        "{c}"
    );
    assert_eq!(c["command"]["topic"], cfg.command_topic.as_str(), "{c}");
    let view = first_record_keyed(&stack.app, image.view_topic(), &event).await;
    assert_eq!(
        view.header(SCHEMA_VERSION_HEADER),
        Some(SCHEMA_VERSION),
        "{view:?}"
    );
    assert_eq!(
        (
            &view.value["pk"],
            &view.value["version"],
            &view.value["action"]
        ),
        (&json!(event), &json!(1), &json!("login")),
        "{:?}",
        view.value
    );
    // The whole of both topics.
    assert_feed_whole(&stack.app, "feed").await;

    // The database gone: /readyz says so, and the health check turns unhealthy.
    stack.postgres.stop().await.expect("stop PostgreSQL");
    let took = wait_for_health(&p.name, "unhealthy", Duration::from_secs(90)).await;
    println!("database stopped; healthy -> unhealthy after {took:?}");
    assert_eq!(http_status(p.http, "/readyz").await, 503);

    // Back: healthy again.
    stack.postgres.start().await.expect("start PostgreSQL");
    let took = wait_for_health(&p.name, "healthy", Duration::from_secs(90)).await;
    println!("database back; unhealthy -> healthy after {took:?}");

    // docker stop: SIGTERM (the image's STOPSIGNAL), handled: exit code 0, well before the
    // grace period's SIGKILL.
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.Config.StopSignal}}", &p.name]),
        "SIGTERM"
    );
    let (code, took) = p.docker_stop(45).await;
    println!("docker stop: exit code {code} after {took:?}");
    assert_eq!(code, 0, "exit code after docker stop");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let log = Command::new("docker")
        .args(["logs", &p.name])
        .output()
        .expect("docker logs");
    let log = String::from_utf8_lossy(&log.stderr);
    assert!(
        log.contains("stop requested") && log.contains("stopped"),
        "the processor handled the signal: {log}"
    );
    p.remove().await;
    stack.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Faults.

fn outage() -> Duration {
    Duration::from_secs(env_or("CONTAINER_OUTAGE_SECS", 30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing() {
    let test = "pgcut";
    if !docker_ready(
        "postgres_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing",
    ) {
        return;
    }
    let outage = outage();
    let mut rng = Rng::new();
    let stack = Stack::start(test, |c| c.max_batch = 200).await;
    let app = &stack.app;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let p = stack.start_processor(stack.processor(), "p").await;
    let pace = outage.as_millis() as u64 / (l.records.len() as u64 / 100).max(1);
    let fault = async {
        collector
            .wait_for_count(100, Duration::from_secs(60))
            .await
            .expect("replies");
        stack.disconnect(&stack.postgres_name);
        println!(
            "PostgreSQL disconnected; {} answered so far",
            collector.answered()
        );
        // /readyz says 503 while PostgreSQL is cut off.
        wait_for_status(p.http, "/readyz", 503, Duration::from_secs(10)).await;
        let during = collector.answered();
        tokio::time::sleep(outage.saturating_sub(Duration::from_secs(10))).await;
        assert_eq!(
            collector.answered(),
            during,
            "nothing is answered while PostgreSQL is cut off"
        );
        tokio::time::sleep(Duration::from_secs(10).min(outage)).await;
        stack.reconnect(&stack.postgres_name, &stack.postgres_ip);
        println!(
            "PostgreSQL reconnected after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(app, &l, Duration::from_millis(pace)), fault);
    wait_for_all_or_explain(app, &collector, &l, Duration::from_secs(240)).await;
    wait_for_status(p.http, "/readyz", 200, Duration::from_secs(30)).await;
    assert_exactly_once(
        app,
        &l,
        collector,
        &format!("PostgreSQL cut off (docker network disconnect) for {outage:?}"),
    )
    .await;
    let (code, _) = p.docker_stop(45).await;
    assert_eq!(code, 0);
    assert_feed_whole(&stack.app, test).await;
    p.remove().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing() {
    let test = "brokercut";
    if !docker_ready(
        "the_broker_cut_off_by_the_network_for_30_s_under_load_loses_and_doubles_nothing",
    ) {
        return;
    }
    let outage = outage();
    let mut rng = Rng::new();
    let stack = Stack::start(test, |c| c.max_batch = 200).await;
    let app = &stack.app;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    // The stack's session timeout (6 s), so the cut outlasts it: Kafka's group coordinator
    // expires the processor's membership during the cut, and after it the processor's next
    // heartbeat is refused (unknown member): it loses its partitions, rejoins, and resumes from
    // the committed offsets, redelivering what it had applied but not committed. Connection
    // attempts give up after 5 s (librdkafka's default, 30 s, can leave an attempt started
    // during the cut hanging well after it).
    let image = stack.processor().with_env(
        "KAFKA_PROPERTIES",
        "session.timeout.ms=6000;heartbeat.interval.ms=500;socket.connection.setup.timeout.ms=5000",
    );
    let p = stack.start_processor(image, "p").await;
    let pace = outage.as_millis() as u64 / (l.records.len() as u64 / 100).max(1);
    let fault = async {
        collector
            .wait_for_count(100, Duration::from_secs(60))
            .await
            .expect("replies");
        stack.disconnect(&stack.broker_name);
        println!(
            "Kafka disconnected; {} answered so far",
            collector.answered()
        );
        // Replies in flight at the cut may still arrive for a moment; after that, none can.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = collector.answered();
        tokio::time::sleep(outage.saturating_sub(Duration::from_secs(5))).await;
        assert_eq!(
            collector.answered(),
            during,
            "nothing arrives while Kafka is cut off"
        );
        stack.reconnect(&stack.broker_name, &stack.broker_ip);
        println!(
            "Kafka reconnected after {outage:?}; {} answered so far",
            collector.answered()
        );
    };
    tokio::join!(send_paced(app, &l, Duration::from_millis(pace)), fault);
    wait_for_all_or_explain(app, &collector, &l, Duration::from_secs(300)).await;
    assert_exactly_once(
        app,
        &l,
        collector,
        &format!("Kafka cut off (docker network disconnect) for {outage:?}"),
    )
    .await;
    let (code, _) = p.docker_stop(45).await;
    assert_eq!(code, 0);
    assert_feed_whole(&stack.app, test).await;
    p.remove().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_in_the_middle_of_a_batch_then_a_new_container_loses_and_doubles_nothing() {
    let test = "stop";
    if !docker_ready(
        "docker_stop_in_the_middle_of_a_batch_then_a_new_container_loses_and_doubles_nothing",
    ) {
        return;
    }
    let mut rng = Rng::new();
    let stack = Stack::start(test, |c| c.max_batch = 200).await;
    let app = &stack.app;
    let l = fault_load(&mut rng, 2);
    let collector = app.collect_replies();
    let first = stack
        .start_processor(
            stack.processor().with_env("SHUTDOWN_TIMEOUT_SECS", "30"),
            "a",
        )
        .await;
    let n = l.ids.len();
    let stopper = async {
        // In the middle of the load: a quarter answered, more keep coming.
        collector
            .wait_for_count(n / 4, Duration::from_secs(60))
            .await
            .expect("replies");
        let (code, took) = first.docker_stop(45).await;
        let answered = collector.answered();
        println!("docker stop: exit code {code} after {took:?}; {answered} of {n} answered so far");
        assert!(
            answered < n,
            "the stop landed after the load: nothing was tested"
        );
        assert_eq!(
            code, 0,
            "SIGTERM is handled: exit code 0, not SIGKILL's 137"
        );
        assert!(took < Duration::from_secs(30), "{took:?}");
    };
    // 100 commands every 300 ms: about 5 s of load.
    tokio::join!(send_paced(app, &l, Duration::from_millis(300)), stopper);
    first.remove().await;
    let second = stack.start_processor(stack.processor(), "b").await;
    wait_for_all_or_explain(app, &collector, &l, Duration::from_secs(180)).await;
    assert_exactly_once(
        app,
        &l,
        collector,
        "docker stop mid-load, a new container on the same database",
    )
    .await;
    let (code, _) = second.docker_stop(45).await;
    assert_eq!(code, 0);
    assert_feed_whole(&stack.app, test).await;
    second.remove().await;
    stack.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The local stack.

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
    if !docker_ready(test) {
        return;
    }
    if let Err(e) = Command::new("docker-compose").arg("version").output() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: CI=true and docker-compose is not available: {e}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED containers::{test}: docker-compose is not available ({e})"
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
