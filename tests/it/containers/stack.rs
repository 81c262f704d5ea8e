//! The stack: PostgreSQL and Kafka in containers on the test's network, the test's resources
//! on them, a processor in its container, and the change feed read whole from the host.

use std::time::{Duration, Instant};

use testcontainers_event_updater::testcontainers::core::WaitFor;
use testcontainers_event_updater::testcontainers::runners::AsyncRunner;
use testcontainers_event_updater::testcontainers::{ContainerAsync, GenericImage, ImageExt};
use testcontainers_event_updater::{
    kafka_bootstrap_servers, EventUpdater, Kafka, KAFKA_PORT, METRICS_PORT,
};
use uuid::Uuid;

use super::docker::{docker_ok, ip_on, save_logs, Network, SaveLogs, LOCAL_TAG, POSTGRES_IMAGE};
use crate::support::feed::{check_changes, fold_equals_view, read_topic, view_topic_matches};
use crate::support::{Received, Services, TestApp};

pub(super) struct Stack {
    /// First, so that the logs are saved before the containers go.
    pub(super) logs: Vec<SaveLogs>,
    pub(super) app: TestApp,
    pub(super) postgres: ContainerAsync<GenericImage>,
    pub(super) broker: ContainerAsync<Kafka>,
    /// Container names, as the processor's container reaches them.
    pub(super) postgres_name: String,
    pub(super) broker_name: String,
    /// Their addresses on the network (the host reaches them there too).
    pub(super) postgres_ip: String,
    pub(super) broker_ip: String,
    pub(super) test: String,
    pub(super) network: Network,
}

impl Stack {
    pub(super) async fn start(test: &str, tweak: impl FnOnce(&mut event_updater::Config)) -> Stack {
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
    pub(super) fn processor(&self) -> EventUpdater {
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
    pub(super) async fn start_processor(
        &self,
        image: EventUpdater,
        name: &str,
    ) -> ProcessorContainer {
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
    pub(super) fn disconnect(&self, container: &str) {
        docker_ok(&["network", "disconnect", &self.network.name, container]);
    }

    /// Puts `container` back on the network at its old address `ip` (the broker advertises
    /// its address; clients hold PostgreSQL's).
    pub(super) fn reconnect(&self, container: &str, ip: &str) {
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
    pub(super) async fn finish(self) {
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
pub(super) struct ProcessorContainer {
    /// First, so that the log is saved before the container goes.
    pub(super) logs: SaveLogs,
    pub(super) container: ContainerAsync<EventUpdater>,
    pub(super) name: String,
    /// Its HTTP port, as mapped on the host.
    pub(super) http: std::net::SocketAddr,
}

impl ProcessorContainer {
    /// `docker stop` with a grace period: the image's STOPSIGNAL (SIGTERM), SIGKILL after it.
    /// Returns the exit code and how long the stop took.
    pub(super) async fn docker_stop(&self, grace_secs: u32) -> (i64, Duration) {
        let started = Instant::now();
        docker_ok(&["stop", "-t", &grace_secs.to_string(), &self.name]);
        let took = started.elapsed();
        let code: i64 = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .parse()
            .expect("exit code");
        (code, took)
    }

    pub(super) async fn remove(self) {
        drop(self.logs);
        let _ = self.container.rm().await;
    }
}

/// The first record keyed `key` on `topic`, read from the topic's beginning as a downstream
/// reader would (30 s at most per record).
pub(super) async fn first_record_keyed(app: &TestApp, topic: &str, key: &str) -> Received {
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
pub(super) async fn assert_feed_whole(app: &TestApp, what: &str) {
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
