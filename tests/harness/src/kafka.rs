//! A private Apache Kafka broker for one test: the project's own single-node KRaft broker
//! (`deploy/kafka/kafka.sh` on `deploy/kafka/server.properties`, the jars of
//! `deploy/kafka/pom.xml` through `scripts/kafka-jars.sh`), on free ports, with its data in a
//! directory of its own under `target/test-brokers/` and its log in `target/test-logs/`.
//!
//! For the faults of the broker itself, which a test must not inflict on the broker other tests
//! share: `kill -9` of the Kafka process and a restart on the same data and ports, or a broker
//! with properties of its own. The broker is killed when the [`Broker`] is dropped, and its data
//! directory removed, pass or fail (its log stays).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Log, Processor};
use crate::{io, Error, Result};

/// What the broker's log says once it serves clients.
const STARTED: &str = "[BrokerServer id=1] Transition from STARTING to STARTED";

/// How long a start (or a restart with log recovery) may take.
const START_BOUND: Duration = Duration::from_secs(90);

/// A running (or killed) private broker.
#[derive(Debug)]
pub struct Broker {
    name: String,
    dir: PathBuf,
    logs: PathBuf,
    port: u16,
    controller_port: u16,
    overrides: String,
    classpath: String,
    process: Option<Processor>,
    starts: usize,
}

/// The repository's root (this crate is `tests/harness`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A port nobody listens on now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("taking a free port"))?;
    Ok(l.local_addr().map_err(io("taking a free port"))?.port())
}

impl Broker {
    /// Starts a broker named `name` (its directory and log file say so) with broker properties
    /// `overrides` on top of the committed configuration, and waits until it serves clients.
    pub async fn start(name: &str, overrides: &[(&str, &str)]) -> Result<Broker> {
        let out = tokio::process::Command::new(root().join("scripts/kafka-jars.sh"))
            .arg("classpath")
            .output()
            .await
            .map_err(io("running scripts/kafka-jars.sh classpath"))?;
        if !out.status.success() {
            return Err(Error::Io {
                what: "scripts/kafka-jars.sh classpath".into(),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let mut broker = Broker {
            name: name.to_string(),
            dir: root().join("target/test-brokers").join(&unique),
            logs: root()
                .join("target/test-logs")
                .join(format!("broker-{unique}")),
            port: free_port()?,
            controller_port: free_port()?,
            overrides: overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            classpath: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            process: None,
            starts: 0,
        };
        broker.restart().await?;
        Ok(broker)
    }

    /// Where clients reach it: `127.0.0.1:<port>`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Processor::pid)
    }

    /// Starts the broker again on the same data and ports (after [`Broker::kill9`]), and waits
    /// until it serves clients: Kafka recovers its logs first. Each start logs to a file of its
    /// own (`target/test-logs/broker-<name>-…-<n>.log`).
    pub async fn restart(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Err(Error::Io {
                what: format!("restarting broker {}", self.name),
                source: std::io::Error::other("it is still running"),
            });
        }
        self.starts += 1;
        let mut cmd = tokio::process::Command::new(root().join("deploy/kafka/kafka.sh"));
        cmd.env("KAFKA_CLASSPATH", &self.classpath)
            .env("KAFKA_DATA", self.dir.join("data"))
            .env("KAFKA_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "KAFKA_CONTROLLER",
                format!("127.0.0.1:{}", self.controller_port),
            )
            .env("KAFKA_OVERRIDES", &self.overrides)
            .env("KAFKA_HEAP", "256m");
        let log = self.log_path();
        let mut process = Processor::start(cmd, Log::File(log))?;
        process.wait_for_log(STARTED, START_BOUND).await?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGKILL: the broker gets no chance to flush or to hand anything over.
    pub async fn kill9(&mut self) -> Result<()> {
        match self.process.take() {
            Some(p) => p.kill9().await,
            None => Ok(()),
        }
    }

    /// SIGSTOP or SIGCONT (or any signal `kill` knows) to the running broker.
    pub fn signal(&self, signal: &str) -> Result<()> {
        match &self.process {
            Some(p) => p.signal(signal),
            None => Err(Error::Io {
                what: format!("kill -{signal} broker {}", self.name),
                source: std::io::Error::other("it is not running"),
            }),
        }
    }

    /// The log of the current (or last) start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.logs.with_extension(format!("{}.log", self.starts))
    }
}

impl Drop for Broker {
    /// Kills the broker (the [`Processor`] does, when dropped), waits until it is gone (its
    /// `/proc` entry empty: dead, if not yet reaped), and removes its data.
    fn drop(&mut self) {
        if let Some(p) = self.process.take() {
            let cmdline = format!("/proc/{}/cmdline", p.pid());
            drop(p);
            for _ in 0..100 {
                if std::fs::read(&cmdline).map_or(true, |c| c.is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    /// What the broker acknowledged before `kill -9` is there after the restart on its data.
    #[tokio::test]
    async fn a_broker_killed_9_restarts_on_its_data_with_what_it_acknowledged() {
        let mut broker = Broker::start("harness", &[]).await.expect("broker");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", broker.bootstrap_servers());
        let admin: AdminClient<DefaultClientContext> = config.create().expect("admin");
        let topic = NewTopic::new("kept", 1, TopicReplication::Fixed(1));
        for r in admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create")
        {
            r.expect("topic created");
        }
        drop(admin);
        let producer: FutureProducer = config
            .clone()
            .set("acks", "all")
            .create()
            .expect("producer");
        producer
            .send(
                FutureRecord::<str, str>::to("kept").payload("before"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
        drop(producer);
        let pid = broker.pid().expect("running");
        broker.kill9().await.expect("kill -9");
        assert!(broker.pid().is_none());
        broker.restart().await.expect("restart");
        assert_ne!(broker.pid(), Some(pid));
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", "harness-reader")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("kept", 0, Offset::Beginning)
            .expect("offset");
        consumer.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let value = loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => break m.payload().map(<[u8]>::to_vec),
                _ => assert!(
                    std::time::Instant::now() < deadline,
                    "nothing read after the restart"
                ),
            }
        };
        assert_eq!(value.as_deref(), Some(&b"before"[..]));
    }
}
