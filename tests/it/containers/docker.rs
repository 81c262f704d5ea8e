//! Docker from the test: the images' names and tags, `docker` run and read, whether Docker
//! answers (or the test is skipped), container addresses, health and logs, and a network of
//! the test's own.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::support::docker;

/// The tag scripts/images.sh gives its images.
pub(super) const LOCAL_TAG: &str = "local";
pub(super) const POSTGRES_IMAGE: &str = "event-updater-postgres";
const BROKER_IMAGE: &str = testcontainers_event_updater::DEFAULT_KAFKA_IMAGE.0;
const PROCESSOR_IMAGE: &str = "event-updater";
/// The image's user (deploy/Dockerfile's USER).
pub(super) const IMAGE_UID: &str = "10001";

pub(super) fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether this test can run: Docker answers and the local images exist. Without Docker it
/// writes `SKIPPED <test>: <why>` straight to stderr (past the test harness's capture) and
/// returns false, unless `CI=true`: then a missing Docker is a failure. Missing images are
/// always a failure (scripts/images.sh builds them).
pub(super) fn docker_ready(test: &str) -> bool {
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
pub(super) fn ip_on(container: &str, network: &str) -> String {
    docker_ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        container,
    ])
}

/// The container's health status (`starting`, `healthy`, `unhealthy`).
pub(super) fn health_of(container: &str) -> String {
    docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", container])
}

/// Polls the health status until it is `want`; returns how long that took.
pub(super) async fn wait_for_health(container: &str, want: &str, within: Duration) -> Duration {
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
pub(super) fn save_logs(container: &str, name: &str) {
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
pub(super) struct SaveLogs(pub(super) String);

impl Drop for SaveLogs {
    fn drop(&mut self) {
        save_logs(&self.0, &self.0);
    }
}

/// A Docker network of the test's own, with a subnet it chose, so that a container cut off
/// and reconnected gets its address back (`docker network connect --ip`). Removed on drop.
pub(super) struct Network {
    pub(super) name: String,
}

impl Network {
    pub(super) fn create() -> Network {
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
