//! The processor under test: `event-updater serve` in a child process (the harness's
//! [`Processor`]), configured through its environment, and what it used when it stopped.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;

use event_updater::config::Config;
use event_updater_harness::process::{Log, Processor};

use crate::procstat::cpu_seconds;
use crate::run::Scope;

/// Whether a drain's processor publishes the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// As the processor is configured (on by default), on the phase's own topics: a changes
    /// topic where `CHANGES_TOPIC` is not empty, a view topic where `VIEW_TOPIC` is not empty.
    On,
    /// `CHANGES_TOPIC` and `VIEW_TOPIC` empty: no feed at all.
    Off,
}

impl Feed {
    /// The processor's `CHANGES_TOPIC` and `VIEW_TOPIC` in `scope` (empty: off).
    pub fn topics(self, cfg: &Config, scope: &Scope) -> (String, String) {
        let own = |configured: &str, ours: &str| match self {
            Feed::On if !configured.is_empty() => ours.to_string(),
            _ => String::new(),
        };
        (
            own(&cfg.changes_topic, &scope.changes),
            own(&cfg.view_topic, &scope.views),
        )
    }
}

/// `event-updater serve` in a child process, configured through its environment.
#[derive(Debug)]
pub struct ChildProcessor {
    pub child: Processor,
    /// Where its `/metrics` is served.
    pub http_addr: SocketAddr,
}

impl ChildProcessor {
    /// The naive baseline (`max_batch` 1) also runs a single lane: one command per
    /// transaction, one transaction at a time. With `feed` on, the processor publishes its
    /// change feed to `scope`'s own topics (never to the configured ones).
    pub fn spawn(cfg: &Config, scope: &Scope, max_batch: u32, feed: Feed) -> anyhow::Result<Self> {
        let lanes = if max_batch == 1 {
            1
        } else {
            cfg.apply_concurrency
        };
        // The serving binary, built beside this one.
        let exe = std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("event-updater");
        // A port free now; the child binds it a moment later.
        let http_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let auth_mode = cfg
            .auth_mode
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let (changes_topic, view_topic) = feed.topics(cfg, scope);
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("serve")
            .env("DATABASE_URL", &scope.db_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &cfg.kafka_bootstrap_servers)
            .env("COMMAND_TOPIC", &scope.commands)
            .env("REPLY_TOPIC", &scope.replies)
            .env("DLQ_TOPIC", &scope.dlq)
            .env("CHANGES_TOPIC", &changes_topic)
            .env("VIEW_TOPIC", &view_topic)
            .env("KAFKA_GROUP_ID", &scope.group)
            .env("HTTP_ADDR", http_addr.to_string())
            .env("MAX_BATCH", max_batch.to_string())
            .env("TOPIC_PARTITIONS", cfg.topic_partitions.to_string())
            .env(
                "TOPIC_REPLICATION_FACTOR",
                cfg.topic_replication_factor.to_string(),
            )
            .env("BATCH_LINGER_MS", cfg.batch_linger.as_millis().to_string())
            .env("MAX_BATCH_BYTES", cfg.max_batch_bytes.to_string())
            .env("MAX_IN_FLIGHT_BYTES", cfg.max_in_flight_bytes.to_string())
            .env("APPLY_CONCURRENCY", lanes.to_string())
            .env(
                "DATABASE_MAX_CONNECTIONS",
                cfg.database_max_connections.to_string(),
            )
            .env("MAX_MESSAGE_BYTES", cfg.max_message_bytes.to_string())
            .env("MAX_REPLY_BYTES", cfg.max_reply_bytes.to_string())
            .env(
                "SHUTDOWN_TIMEOUT_SECS",
                cfg.shutdown_timeout.as_secs().to_string(),
            )
            .env("AUTH_MODE", auth_mode)
            .env("RUST_LOG", "warn")
            .env_remove("LOG_FORMAT");
        if cfg.kafka_properties.is_empty() {
            command.env_remove("KAFKA_PROPERTIES");
        } else {
            let joined: Vec<String> = cfg
                .kafka_properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            command.env("KAFKA_PROPERTIES", joined.join(";"));
        }
        // Its warnings and errors go to the benchmark's stderr, among the progress lines.
        let child = Processor::start(command, Log::Inherit).context("starting the processor")?;
        Ok(ChildProcessor { child, http_addr })
    }

    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        Ok(self.child.ensure_running()?)
    }

    /// Reads the peak RSS and the CPU time used, then stops the processor with SIGTERM and
    /// waits for it.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        self.ensure_running()?;
        let peak_rss = self.child.peak_rss()?;
        let cpu_seconds = cpu_seconds(self.child.pid())?;
        let (status, _) = self.child.terminate(Duration::from_secs(60)).await?;
        if !status.success() {
            eprintln!("[bench] the processor exited with {status} after SIGTERM");
        }
        Ok(Stopped {
            peak_rss,
            cpu_seconds,
        })
    }
}

/// What a processor used in its life, read just before it was stopped.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    pub peak_rss: u64,
    /// User and system CPU time, every thread.
    pub cpu_seconds: f64,
}
