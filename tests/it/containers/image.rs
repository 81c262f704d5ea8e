//! The image's own parts, run: its health check, its non-root user, its stop signal, and its
//! change feed as a downstream test reads it through the module.

use std::process::Command;
use std::time::{Duration, Instant};

use event_updater::domain::feed::SCHEMA_VERSION;
use event_updater::domain::reply::header;
use serde_json::{json, Value};
use testcontainers_event_updater::{
    EventUpdater, DEFAULT_CHANGES_TOPIC, DEFAULT_VIEW_TOPIC, SCHEMA_VERSION_HEADER,
};
use uuid::Uuid;

use super::docker::{docker_ok, docker_ready, health_of, wait_for_health, IMAGE_UID};
use super::stack::{assert_feed_whole, first_record_keyed, Stack};
use crate::support::{http_get, http_status};

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
    if !docker_ready(
        "image::the_image_runs_unprivileged_reports_its_health_and_stops_on_its_stop_signal",
    ) {
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
