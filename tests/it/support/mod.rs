//! Test harness: a fresh database and fresh topics per test, the processor started on a random
//! HTTP port, a producer for commands and a reader of the reply topic.
//!
//! Addresses come from `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`) and
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432`). Everything a test makes
//! (its database, its topics) is removed when its [`TestApp`] is dropped, pass or fail.

pub mod exactly_once;
pub mod feed;
pub mod gaps;
pub mod yaml;

use std::time::Duration;

use event_updater::config::Config;
use event_updater::domain::projection;
use event_updater::domain::reply::header;
use event_updater::{store, Application};
use event_updater_harness::http;
use event_updater_harness::process::{Log, Processor};
use event_updater_harness::replies::{self, Collector};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, TopicPartitionList};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use testcontainers_modules::testcontainers::GenericImage;
use uuid::Uuid;

pub const PARTITIONS: i32 = 3;

/// Where the tests find PostgreSQL and a broker.
///
/// `TEST_DATABASE_URL` (a server URL without database) and `KAFKA_BOOTSTRAP_SERVERS` when given
/// (the Test command gives both); otherwise, where Docker is available and scripts/images.sh's
/// images exist, a PostgreSQL and a Kafka container started with testcontainers for this test
/// alone (removed when the test ends), reached at their addresses on Docker's bridge network
/// (Linux); otherwise `postgres://postgres@127.0.0.1:5432` and `127.0.0.1:9092`
/// (scripts/services.sh's).
pub struct Services {
    pub database_base: String,
    pub broker: String,
    containers: Option<Containers>,
}

/// scripts/images.sh's PostgreSQL and Kafka, started for one test.
struct Containers {
    postgres: testcontainers_modules::testcontainers::ContainerAsync<GenericImage>,
    kafka:
        testcontainers_modules::testcontainers::ContainerAsync<testcontainers_event_updater::Kafka>,
}

/// The local images scripts/images.sh builds for PostgreSQL and the broker (Apache Kafka, from
/// deploy/kafka/Dockerfile).
pub const LOCAL_POSTGRES_IMAGE: (&str, &str) = ("event-updater-postgres", "local");
pub const LOCAL_BROKER_IMAGE: (&str, &str) = ("event-updater-kafka", "local");

/// Runs `docker args...`: its trimmed stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether the image `name:tag` exists locally.
pub fn image_exists((name, tag): (&str, &str)) -> bool {
    docker(&["image", "inspect", &format!("{name}:{tag}")]).is_ok()
}

impl Services {
    pub async fn start() -> Services {
        let db = std::env::var("TEST_DATABASE_URL").ok();
        let broker = std::env::var("KAFKA_BOOTSTRAP_SERVERS").ok();
        let has_docker = std::env::var_os("DOCKER_HOST").is_some()
            || std::path::Path::new("/var/run/docker.sock").exists();
        if db.is_some() || broker.is_some() || !has_docker {
            return Services {
                database_base: db.unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into()),
                broker: broker.unwrap_or_else(|| "127.0.0.1:9092".into()),
                containers: None,
            };
        }
        if !(image_exists(LOCAL_POSTGRES_IMAGE) && image_exists(LOCAL_BROKER_IMAGE)) {
            // No images to start (scripts/images.sh builds them; none is pulled): the
            // services of this machine (scripts/services.sh).
            eprintln!(
                "services: Docker answers but {}:{} or {}:{} is missing (scripts/images.sh); \
                 using PostgreSQL at 127.0.0.1:5432 and Kafka at 127.0.0.1:9092",
                LOCAL_POSTGRES_IMAGE.0,
                LOCAL_POSTGRES_IMAGE.1,
                LOCAL_BROKER_IMAGE.0,
                LOCAL_BROKER_IMAGE.1
            );
            return Services::at("postgres://postgres@127.0.0.1:5432", "127.0.0.1:9092");
        }
        use testcontainers_modules::testcontainers::core::WaitFor;
        use testcontainers_modules::testcontainers::runners::AsyncRunner;
        use testcontainers_modules::testcontainers::ImageExt;
        // On Docker's `bridge` network by name, where each is reached at its own address.
        let postgres = GenericImage::new(LOCAL_POSTGRES_IMAGE.0, LOCAL_POSTGRES_IMAGE.1)
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_network("bridge")
            .start()
            .await
            .expect("PostgreSQL container");
        // Kafka advertises its own address on the network, where the host reaches it.
        let kafka = testcontainers_event_updater::Kafka::default()
            .with_image(LOCAL_BROKER_IMAGE.0, LOCAL_BROKER_IMAGE.1)
            .with_network("bridge")
            .start()
            .await
            .expect("Kafka container");
        let pg_ip = postgres
            .get_bridge_ip_address()
            .await
            .expect("PostgreSQL's address");
        let broker = testcontainers_event_updater::kafka_bootstrap_servers(&kafka)
            .await
            .expect("Kafka's address");
        Services {
            database_base: format!("postgres://postgres@{pg_ip}:5432"),
            broker,
            containers: Some(Containers { postgres, kafka }),
        }
    }

    /// Services the test started itself (e.g. in containers of its own), at these addresses:
    /// a PostgreSQL server URL without database, and the broker's bootstrap servers.
    pub fn at(database_base: impl Into<String>, broker: impl Into<String>) -> Services {
        Services {
            database_base: database_base.into(),
            broker: broker.into(),
            containers: None,
        }
    }

    /// Removes the containers, if this test started any.
    async fn stop(self) {
        if let Some(Containers { postgres, kafka }) = self.containers {
            let _ = kafka.rm().await;
            let _ = postgres.rm().await;
        }
    }
}

/// A reply as read off the reply topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: Option<String>,
    pub raw: Vec<u8>,
    pub value: Value,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn status(&self) -> u64 {
        self.value["status"].as_u64().expect("status")
    }
    pub fn body(&self) -> &Value {
        &self.value["body"]
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct TestApp {
    pub cfg: Config,
    pub app: Option<Application>,
    pub pool: PgPool,
    pub producer: FutureProducer,
    replies: StreamConsumer,
    dlq: StreamConsumer,
    db_name: String,
    finished: bool,
    extra_topics: Vec<String>,
    /// The PostgreSQL and broker addresses (and containers) of this test.
    pub services: Option<Services>,
    database_base: String,
    /// `Bearer <token>` of a token with the change permission, sent by default.
    pub authorization: String,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Starts a processor on fresh resources; `tweak` adjusts its configuration.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::build(tweak, true, None).await
    }

    /// Fresh resources (database migrated, topics, token) without a processor in this process:
    /// for tests that run processors as child processes ([`TestApp::start_child`]).
    pub async fn resources_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::build(tweak, false, None).await
    }

    /// Like [`TestApp::resources_with`], on `services` instead of the usual ones: for tests whose
    /// processors run elsewhere (in containers, tests/it/containers/).
    pub async fn resources_on(services: Services, tweak: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::build(tweak, false, Some(services)).await
    }

    async fn build(
        tweak: impl FnOnce(&mut Config),
        in_process: bool,
        services: Option<Services>,
    ) -> TestApp {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("event_updater_test_{id}");
        let mut cfg = Config::defaults();
        let services = match services {
            Some(s) => s,
            None => Services::start().await,
        };
        let database_base = services.database_base.clone();
        cfg.database_url = format!("{database_base}/{db_name}");
        cfg.kafka_bootstrap_servers = services.broker.clone();
        cfg.command_topic = format!("test-{id}-commands");
        cfg.reply_topic = format!("test-{id}-replies");
        cfg.dlq_topic = format!("test-{id}-dlq");
        cfg.changes_topic = format!("test-{id}-changes");
        cfg.view_topic = format!("test-{id}-view");
        cfg.kafka_group_id = format!("test-{id}");
        cfg.topic_partitions = PARTITIONS;
        cfg.http_addr = "127.0.0.1:0".parse().expect("addr");
        cfg.database_max_connections = 2;
        cfg.shutdown_timeout = Duration::from_secs(20);
        tweak(&mut cfg);
        let (app, pool) = if in_process {
            let app = Application::build(cfg.clone())
                .await
                .expect("the processor starts");
            let pool = app.pool().clone();
            (Some(app), pool)
        } else {
            let pool = store::connect(&cfg.database_url, 2)
                .await
                .expect("database");
            event_updater::pipeline::kafka::ensure_topics(&cfg)
                .await
                .expect("topics");
            (None, pool)
        };
        let token = event_updater::store::tokens::create_token(&pool, "tests", None, true)
            .await
            .expect("token");
        let authorization = format!("Bearer {token}");
        // A producer like an upstream service's: it lingers, puts many records in one batch,
        // and compresses them, so a processor that stops after part of a batch commits an
        // offset inside a stored batch, and its successor must resume there.
        let producer = client(&cfg)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4")
            .create()
            .expect("producer");
        let replies = reader(&cfg, &cfg.reply_topic);
        let dlq = reader(&cfg, &cfg.dlq_topic);
        TestApp {
            cfg,
            app,
            pool,
            producer,
            replies,
            dlq,
            db_name,
            finished: false,
            extra_topics: Vec::new(),
            services: Some(services),
            database_base,
            authorization,
        }
    }

    /// Publishes a raw command value with `key` and `headers`, plus the test token's
    /// `authorization` header unless `headers` has one.
    pub async fn send_raw(
        &self,
        key: Option<&str>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) {
        self.send_raw_with(key, value, headers, true).await;
    }

    /// Like [`TestApp::send_raw`]; `default_auth: false` sends no `authorization` header at all.
    pub async fn send_raw_with(
        &self,
        key: Option<&str>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        default_auth: bool,
    ) {
        let mut h = OwnedHeaders::new();
        if default_auth
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(header::AUTHORIZATION))
        {
            h = h.insert(Header {
                key: header::AUTHORIZATION,
                value: Some(self.authorization.as_bytes()),
            });
        }
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&self.cfg.command_topic).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| e)
            .expect("command delivered");
    }

    /// Publishes a JSON command keyed by its `event_uuid` (as producers are asked to).
    pub async fn send(&self, command: &Value) {
        let key = command["event_uuid"].as_str().map(str::to_string);
        self.send_raw(key.as_deref(), Some(command.to_string().as_bytes()), &[])
            .await;
    }

    /// The next reply (30 s at most).
    pub async fn reply(&self) -> Received {
        read(&self.replies).await
    }

    /// The next `n` replies.
    pub async fn replies(&self, n: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.reply().await);
        }
        out
    }

    /// Creates another topic (removed by [`TestApp::finish`]) and a reader of it. Drop the
    /// reader before calling `finish`.
    pub async fn extra_topic(&mut self, suffix: &str) -> (String, StreamConsumer) {
        let name = format!("{}-{suffix}", self.cfg.kafka_group_id);
        let admin: AdminClient<DefaultClientContext> = client(&self.cfg).create().expect("admin");
        let topic = rdkafka::admin::NewTopic::new(
            &name,
            self.cfg.topic_partitions,
            rdkafka::admin::TopicReplication::Fixed(1),
        );
        admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create topic");
        self.extra_topics.push(name.clone());
        let r = reader(&self.cfg, &name);
        (name, r)
    }

    /// The next record `consumer` reads (30 s at most).
    pub async fn read_from(consumer: &StreamConsumer) -> Received {
        read(consumer).await
    }

    /// The next record on the dead-letter topic.
    pub async fn dead_letter(&self) -> Received {
        read(&self.dlq).await
    }

    /// Sends `command` and returns its reply.
    pub async fn call(&self, command: &Value) -> Received {
        self.send(command).await;
        self.reply().await
    }

    /// Number of log rows for an event.
    pub async fn log_len(&self, event: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_log WHERE event_uuid = $1")
            .bind(event)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Asserts that the view row of every event equals the fold of its log.
    pub async fn assert_view_is_fold_of_log(&self) -> usize {
        let uuids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT event_uuid FROM events UNION SELECT event_uuid FROM event_log",
        )
        .fetch_all(&self.pool)
        .await
        .expect("uuids");
        for u in &uuids {
            let history = store::load_history(&self.pool, *u).await.expect("history");
            let changes: Vec<(i64, Value)> = history
                .iter()
                .map(|e| (e.version, e.change.clone()))
                .collect();
            let folded = projection::fold(*u, &changes).expect("log folds");
            let view = store::load_view(&self.pool, *u).await.expect("view");
            assert_eq!(folded, view, "view of {u} differs from the fold of its log");
        }
        uuids.len()
    }

    /// Stops the processor the way SIGTERM does.
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown_handle().shutdown();
            tokio::time::timeout(Duration::from_secs(30), app.run_until_stopped())
                .await
                .expect("stops in time")
                .expect("stops cleanly");
        }
    }
}

impl TestApp {
    /// Stops the processor, closes every client, then deletes the test's topics and database.
    ///
    /// Topics are deleted only once no client of ours refers to them: librdkafka 2.12 crashes
    /// on the metadata some brokers send for a topic deleted under a live client.
    pub async fn finish(mut self) {
        self.stop().await;
        self.pool.close().await;
        self.finished = true;
        let cfg = self.cfg.clone();
        let db_name = self.db_name.clone();
        let mut topics = vec![
            cfg.command_topic.clone(),
            cfg.reply_topic.clone(),
            cfg.dlq_topic.clone(),
            cfg.changes_topic.clone(),
            cfg.view_topic.clone(),
        ];
        topics.retain(|t| !t.is_empty());
        topics.append(&mut self.extra_topics);
        let services = self.services.take();
        let base = self.database_base.clone();
        drop(self);
        drop_database(&base, &db_name).await;
        if let Ok(admin) = client(&cfg).create::<AdminClient<DefaultClientContext>>() {
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                admin.delete_topics(&topics, &AdminOptions::new()),
            )
            .await;
        }
        if let Some(services) = services {
            services.stop().await;
        }
    }
}

async fn drop_database(base: &str, db_name: &str) {
    if let Ok(mut c) = PgConnection::connect(&format!("{base}/postgres")).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
        ))
        .execute(&mut c)
        .await;
    }
}

impl Drop for TestApp {
    /// A test that failed before [`TestApp::finish`]: its database is still removed (on a thread
    /// of its own, as Drop cannot await); its topics stay on the broker, where they help explain
    /// the failure (their names carry the test's group id, as its logs in target/test-logs do).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(app) = self.app.take() {
            app.shutdown_handle().shutdown();
        }
        let db_name = self.db_name.clone();
        let base = self.database_base.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                rt.block_on(drop_database(&base, &db_name));
            }
        })
        .join();
    }
}

pub fn client(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap_servers);
    c
}

/// A consumer assigned every partition of `topic` from the beginning (no group join wait).
fn reader(cfg: &Config, topic: &str) -> StreamConsumer {
    replies::reader(
        client(cfg),
        &format!("{}-reader", cfg.kafka_group_id),
        topic,
        cfg.topic_partitions,
    )
    .expect("reader")
}

async fn read(consumer: &StreamConsumer) -> Received {
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("no consumer error");
    let raw = m.payload().unwrap_or_default().to_vec();
    let value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Received {
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        raw,
        value,
        headers,
    }
}

impl TestApp {
    /// The PostgreSQL server URL (without database) this test uses.
    pub fn database_base(&self) -> &str {
        &self.database_base
    }

    /// Starts `event-updater serve` as a child process with this test's configuration
    /// (`extra` environment variables on top); its log goes to `target/test-logs/`.
    ///
    /// The group protocol is `KAFKA_GROUP_PROTOCOL` from `extra`, else the test's
    /// configuration's. Under the classic protocol the child's session is 6 s with a heartbeat
    /// every 500 ms (`KAFKA_PROPERTIES`); under the consumer protocol those are the broker's
    /// (deploy/kafka/server.properties sets the same), and the child gets none.
    ///
    /// Returns once the child has subscribed (its log says so), so that a signal sent to it
    /// afterwards finds its handlers installed; panics if it exits first or takes over 60 s.
    pub async fn start_child(&self, name: &str, extra: &[(&str, &str)]) -> Processor {
        use clap::ValueEnum;
        use event_updater::config::GroupProtocol;
        let c = &self.cfg;
        let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-logs")
            .join(format!("{}-{name}.log", c.kafka_group_id));
        let protocol = extra
            .iter()
            .find(|(k, _)| *k == "KAFKA_GROUP_PROTOCOL")
            .map_or(c.kafka_group_protocol, |(_, v)| {
                GroupProtocol::from_str(v, true).expect("a group protocol")
            });
        let mut cmd = self.binary();
        cmd.arg("serve")
            .env("TOPIC_PARTITIONS", c.topic_partitions.to_string())
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("MAX_BATCH", c.max_batch.to_string())
            .env("KAFKA_GROUP_PROTOCOL", protocol.as_str())
            .env("RUST_LOG", "info");
        match protocol {
            GroupProtocol::Classic => cmd.env(
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000;heartbeat.interval.ms=500",
            ),
            GroupProtocol::Consumer => cmd.env_remove("KAFKA_PROPERTIES"),
        };
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = Processor::start(cmd, Log::File(log)).expect("start the processor");
        child
            .wait_for_log("subscribed", Duration::from_secs(60))
            .await
            .expect("the processor subscribes");
        child
    }

    /// The `event-updater` binary, with this test's database, broker, topics and group in its
    /// environment. `EVENT_UPDATER_BIN` names another build to run instead (an earlier
    /// release's, say, to see a test fail on it).
    pub fn binary(&self) -> tokio::process::Command {
        let c = &self.cfg;
        let bin = std::env::var_os("EVENT_UPDATER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_event-updater").into());
        let mut cmd = tokio::process::Command::new(bin);
        cmd.env("DATABASE_URL", &c.database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &c.kafka_bootstrap_servers)
            .env("COMMAND_TOPIC", &c.command_topic)
            .env("REPLY_TOPIC", &c.reply_topic)
            .env("DLQ_TOPIC", &c.dlq_topic)
            .env("CHANGES_TOPIC", &c.changes_topic)
            .env("VIEW_TOPIC", &c.view_topic)
            .env("KAFKA_GROUP_ID", &c.kafka_group_id);
        cmd
    }

    /// A new reader of `topic` from its beginning (drop it before [`TestApp::finish`]).
    pub fn new_reader(&self, topic: &str) -> StreamConsumer {
        reader(&self.cfg, topic)
    }

    /// Collects every reply on the reply topic from its beginning, in the background (stop it
    /// before [`TestApp::finish`]).
    pub fn collect_replies(&self) -> Collector {
        Collector::start(self.new_reader(&self.cfg.reply_topic))
    }

    /// The offsets this test's group has committed on the command topic, per partition.
    pub fn committed_offsets(&self) -> rdkafka::error::KafkaResult<TopicPartitionList> {
        let group: StreamConsumer = client(&self.cfg)
            .set("group.id", &self.cfg.kafka_group_id)
            .create()
            .expect("group client");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.cfg.topic_partitions {
            tpl.add_partition(&self.cfg.command_topic, p);
        }
        group.committed_offsets(tpl, Duration::from_secs(10))
    }

    /// Publishes every `(key, value)` as fast as the producer takes them, awaiting delivery.
    pub async fn send_many(&self, records: &[(String, Vec<u8>)]) {
        for chunk in records.chunks(500) {
            let sends = chunk.iter().map(|(k, v)| {
                let h = OwnedHeaders::new().insert(Header {
                    key: header::AUTHORIZATION,
                    value: Some(self.authorization.as_bytes()),
                });
                let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.cfg.command_topic)
                    .key(k.as_str())
                    .payload(v.as_slice())
                    .headers(h);
                self.producer
                    .send(record, Timeout::After(Duration::from_secs(120)))
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| e).expect("command delivered");
            }
        }
    }
}

/// The status code of a GET of `path`.
pub async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    http::get(addr, path).await.expect("GET").0
}

/// Polls `path` until it answers `want`; panics with what it still answers after `bound`.
pub async fn wait_for_status(addr: std::net::SocketAddr, path: &str, want: u16, bound: Duration) {
    let deadline = std::time::Instant::now() + bound;
    loop {
        let now = http_status(addr, path).await;
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} still answers {now}, not {want}, after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The body of a GET of `path`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    http::get(addr, path).await.expect("GET").1
}

/// The harness names the request-id header itself (it does not import the library): the
/// library's name.
#[test]
fn the_harness_reads_the_librarys_request_id_header() {
    assert_eq!(replies::REQUEST_ID_HEADER, header::REQUEST_ID);
}
