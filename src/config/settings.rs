//! The [`Config`] struct: every option of the processor with its flag, environment variable,
//! default and accepted values (clap reads them), and the settings other modules derive from
//! them. The values' parsers are in [`super::values`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser};

use super::secrets::mask_url_password;
/// Named in the documentation of `topic_replication_factor` only.
#[cfg(doc)]
use super::values::AUTO_REPLICATION_FACTOR;
use super::values::{
    parse_duration, parse_property, parse_replication_factor, parse_session_timeout, GroupProtocol,
};
use crate::domain::auth::AuthMode;

/// Just the configuration, without the binary's subcommands.
#[derive(Debug, Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

/// Every setting of the processor, built by clap from flags and environment variables (the
/// binary flattens it into its command line; tests start from [`Config::defaults`]).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL URL; the database is created when it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/event_updater",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// Topic the update commands arrive on.
    #[arg(long, env = "COMMAND_TOPIC", default_value = "event-update-commands")]
    pub command_topic: String,

    /// Topic the replies are published to.
    #[arg(long, env = "REPLY_TOPIC", default_value = "event-update-replies")]
    pub reply_topic: String,

    /// Topic that receives a copy of every command that could not be decoded.
    #[arg(long, env = "DLQ_TOPIC", default_value = "event-update-dlq")]
    pub dlq_topic: String,

    /// Topic every appended change is published to, in order per event (the change feed);
    /// empty turns the feed off. Created with unlimited retention.
    #[arg(long, env = "CHANGES_TOPIC", default_value = "event-changes")]
    pub changes_topic: String,

    /// Log-compacted topic holding the current Event view per event UUID; empty turns it off.
    #[arg(long, env = "VIEW_TOPIC", default_value = "event-views")]
    pub view_topic: String,

    /// Kafka consumer group id.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "event-updater")]
    pub kafka_group_id: String,

    /// The consumer group protocol: `consumer` (KIP-848, Kafka 4.0 and later: the broker
    /// assigns, and the session timeout and heartbeat interval are the broker's settings) or
    /// `classic` (JoinGroup/SyncGroup, with the cooperative-sticky assignor; for older brokers).
    /// Under load, a member joining stalls the partitions that move about half as long under
    /// `consumer` (README, "Group protocol").
    #[arg(
        long,
        env = "KAFKA_GROUP_PROTOCOL",
        value_enum,
        default_value = "consumer"
    )]
    pub kafka_group_protocol: GroupProtocol,

    /// Partitions of each topic the processor creates when it is missing.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor of the topics the processor creates: `auto` (the default) is three,
    /// or the cluster's broker count where it has fewer brokers; a number is used as given, and
    /// logged as an error at start when it is below what the cluster allows (losing a broker
    /// then loses commands and replies). `auto` is held as [`AUTO_REPLICATION_FACTOR`].
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value = "auto", value_parser = parse_replication_factor, allow_hyphen_values = true)]
    pub topic_replication_factor: i32,

    /// Extra librdkafka properties, `key=value`, for every client (TLS, SASL, ...). Repeatable;
    /// the environment variable takes them separated by `;`.
    #[arg(long = "kafka-property", env = "KAFKA_PROPERTIES", value_delimiter = ';', value_parser = parse_property, hide_env_values = true)]
    pub kafka_properties: Vec<(String, String)>,

    /// Address of the HTTP server for /healthz, /readyz and /metrics (port 0: any free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9464")]
    pub http_addr: SocketAddr,

    /// Most commands handled in one database transaction (1 = one transaction per command;
    /// with APPLY_CONCURRENCY=1, the naive baseline).
    #[arg(long, env = "MAX_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch: u32,

    /// Longest wait for more commands once a batch has its first, in milliseconds; only when
    /// the lane was behind (its queue was not empty after its last batch). An idle lane never
    /// waits. 0, the default: a batch is what has arrived (what arrived while the lane applied
    /// its last batch), so batches grow with the load without a wait that only adds latency.
    #[arg(long = "batch-linger-ms", env = "BATCH_LINGER_MS", value_name = "BATCH_LINGER_MS", default_value = "0", value_parser = clap::value_parser!(u64).range(0..=1_000).map(Duration::from_millis))]
    pub batch_linger: Duration,

    /// Most bytes in one batch (with MAX_BATCH, whichever comes first): its commands', and the
    /// stored replies and event views it would load and the replies it would produce, estimated
    /// before it is read; a batch is cut there and the rest applied next.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..).map(|v| v as usize))]
    pub max_batch_bytes: usize,

    /// Most bytes of commands fetched and not yet answered, over all partitions; while they are
    /// spent the partitions are paused and polling goes on. A record is charged twice its value
    /// (it is held decoded too) plus its key and headers (and 80 bytes a header) and 1 KiB;
    /// then its decoded command at its real size, and its reply twice until acknowledged.
    #[arg(long, env = "MAX_IN_FLIGHT_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(65_536..).map(|v| v as usize))]
    pub max_in_flight_bytes: usize,

    /// Batches applied at once, each on its own database connection; partition p goes to lane
    /// p mod n, so each partition still has one writer and keeps its order.
    #[arg(long, env = "APPLY_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub apply_concurrency: u32,

    /// Largest command value accepted, in bytes; larger ones get a 400 reply.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub max_message_bytes: usize,

    /// Largest reply value, in bytes. A command whose reply would be larger is not applied and
    /// gets a 400 saying so. Keep it at most the reply topic's `max.message.bytes` less 64 KiB
    /// (key and headers); the default fits Kafka's default limits.
    #[arg(long, env = "MAX_REPLY_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1024..=100_000_000).map(|v| v as usize))]
    pub max_reply_bytes: usize,

    /// Connections in the PostgreSQL pool (at least APPLY_CONCURRENCY are opened).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 4)]
    pub database_max_connections: u32,

    /// PostgreSQL's `statement_timeout` on every session of the processor: a statement running
    /// longer is cancelled (a batch that keeps timing out is split; a command that still times
    /// out alone is answered 500). `30s`, `500ms`, ... (same forms as IDEMPOTENCY_RETENTION),
    /// at most 24 days.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_session_timeout)]
    pub database_statement_timeout: Duration,

    /// PostgreSQL's `lock_timeout` on every session of the processor: how long a statement
    /// waits for a row lock another session holds before it fails (and is retried, then
    /// isolated like any failing statement).
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT", default_value = "5s", value_parser = parse_session_timeout)]
    pub database_lock_timeout: Duration,

    /// PostgreSQL's `idle_in_transaction_session_timeout` on every session of the processor: a
    /// session of a frozen processor that stopped inside a transaction is ended by the server
    /// after this, releasing its row locks.
    #[arg(long, env = "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", default_value = "10s", value_parser = parse_session_timeout)]
    pub database_idle_in_transaction_timeout: Duration,

    /// `required`: every command needs `authorization: Bearer <token>` (see `event-updater
    /// token`); `disabled`: no checks, for local development only.
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "required")]
    pub auth_mode: AuthMode,

    /// Topics a command's `reply-to` header may name (comma-separated; `*` matches any run of
    /// characters). Other `reply-to` values are ignored and the reply goes to REPLY_TOPIC.
    #[arg(long, env = "REPLY_TO_ALLOW", value_delimiter = ',')]
    pub reply_to_allow: Vec<String>,

    /// On SIGTERM, how long the in-flight batch may take to finish before exiting, in seconds.
    #[arg(long = "shutdown-timeout-secs", env = "SHUTDOWN_TIMEOUT_SECS", value_name = "SHUTDOWN_TIMEOUT_SECS", default_value = "30", value_parser = clap::value_parser!(u64).map(Duration::from_secs))]
    pub shutdown_timeout: Duration,

    /// How long a handled request id's stored reply is kept: within it a redelivery gets the
    /// same reply (or a 422), after it the request id is handled as a new command. `7d`, `12h`,
    /// `30m`, `90s`, `500ms`, combinations (`1h30m`) or plain seconds.
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub idempotency_retention: Duration,

    /// How often stored replies older than IDEMPOTENCY_RETENTION are deleted and the tables'
    /// sizes measured (same forms as IDEMPOTENCY_RETENTION).
    #[arg(long, env = "IDEMPOTENCY_PRUNE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub idempotency_prune_interval: Duration,
}

impl Config {
    /// Whether the change feed is on: a changes topic or a view topic is configured.
    pub fn feed_enabled(&self) -> bool {
        !self.changes_topic.is_empty() || !self.view_topic.is_empty()
    }

    /// The settings a batch is decided under.
    pub fn batch_settings(&self) -> crate::domain::decide::BatchSettings {
        crate::domain::decide::BatchSettings {
            auth_mode: self.auth_mode,
            max_reply_bytes: self.max_reply_bytes,
        }
    }

    /// The configuration with every default, as `event-updater` with no flags and no
    /// environment would have it.
    pub fn defaults() -> Config {
        ConfigOnly::parse_from(["event-updater"]).config
    }

    /// Parses flags (and the environment) into a configuration, for tools and tests.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        ConfigOnly::try_parse_from(args).map(|c| c.config)
    }

    /// True when `topic` may be named by a command's `reply-to` header.
    pub fn reply_to_allowed(&self, topic: &str) -> bool {
        self.reply_to_allow.iter().any(|p| glob_match(p, topic))
    }

    /// The database URL with any password replaced by `***`, for logs.
    pub fn database_url_masked(&self) -> String {
        mask_url_password(&self.database_url)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::{replication_factor_for, AUTO_REPLICATION_FACTOR};

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::defaults();
        assert_eq!(
            c.database_url,
            "postgres://postgres@127.0.0.1:5432/event_updater"
        );
        assert_eq!(c.kafka_bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(c.command_topic, "event-update-commands");
        assert_eq!(c.reply_topic, "event-update-replies");
        assert_eq!(c.dlq_topic, "event-update-dlq");
        assert_eq!(c.changes_topic, "event-changes");
        assert_eq!(c.view_topic, "event-views");
        assert_eq!(c.kafka_group_id, "event-updater");
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:9464");
        assert_eq!(c.max_message_bytes, 1_048_576);
    }

    #[test]
    fn kafka_properties_parse_as_key_value() {
        let cfg = Config::try_parse_from([
            "event-updater",
            "--kafka-property",
            "security.protocol=SASL_SSL",
            "--kafka-property",
            "sasl.password=a=b",
        ])
        .unwrap();
        assert_eq!(
            cfg.kafka_properties,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.password".into(), "a=b".into())
            ]
        );
        assert!(Config::try_parse_from(["event-updater", "--kafka-property", "novalue"]).is_err());
    }

    #[test]
    fn max_batch_is_bounded() {
        assert!(Config::try_parse_from(["event-updater", "--max-batch", "0"]).is_err());
        assert!(Config::try_parse_from(["event-updater", "--max-batch", "1"]).is_ok());
    }

    #[test]
    fn reply_to_allow_list_globs() {
        let mut c = Config::defaults();
        assert!(!c.reply_to_allowed("anything"));
        c.reply_to_allow = vec!["replies-*".into(), "exact".into(), "a*b*c".into()];
        assert!(c.reply_to_allowed("replies-team-a"));
        assert!(c.reply_to_allowed("replies-"));
        assert!(c.reply_to_allowed("exact"));
        assert!(c.reply_to_allowed("abc") && c.reply_to_allowed("a-b-c"));
        assert!(!c.reply_to_allowed("exactly"));
        assert!(!c.reply_to_allowed("other-replies-x"));
        assert!(!c.reply_to_allowed("a-b-"));
    }

    #[test]
    fn idempotency_settings_default_to_a_week_and_a_minute_and_read_durations() {
        let c = Config::defaults();
        assert_eq!(c.idempotency_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.idempotency_prune_interval, Duration::from_secs(60));
        let c = Config::try_parse_from([
            "event-updater",
            "--idempotency-retention",
            "12h",
            "--idempotency-prune-interval",
            "500ms",
        ])
        .unwrap();
        assert_eq!(c.idempotency_retention, Duration::from_secs(12 * 3_600));
        assert_eq!(c.idempotency_prune_interval, Duration::from_millis(500));
        assert!(Config::try_parse_from(["event-updater", "--idempotency-retention", "0"]).is_err());
    }

    #[test]
    fn the_group_protocol_is_an_option_with_two_values() {
        assert_eq!(
            Config::defaults().kafka_group_protocol,
            GroupProtocol::Consumer
        );
        for (value, want) in [
            ("classic", GroupProtocol::Classic),
            ("consumer", GroupProtocol::Consumer),
        ] {
            let c =
                Config::try_parse_from(["event-updater", "--kafka-group-protocol", value]).unwrap();
            assert_eq!(c.kafka_group_protocol, want);
            assert_eq!(want.as_str(), value);
        }
        assert!(
            Config::try_parse_from(["event-updater", "--kafka-group-protocol", "eager"]).is_err()
        );
    }

    #[test]
    fn auth_is_required_by_default() {
        assert_eq!(Config::defaults().auth_mode, AuthMode::Required);
    }

    #[test]
    fn passwords_in_query_and_keyword_parameters_are_masked() {
        for (url, want) in [
            (
                "postgres://u@db:5432/x?password=hunter2",
                "postgres://u@db:5432/x?password=***",
            ),
            (
                "postgres://db/x?sslmode=require&PassWord=hunter2&application_name=a",
                "postgres://db/x?sslmode=require&PassWord=***&application_name=a",
            ),
            (
                "postgres://u:p1@db/x?sslpassword=hunter2",
                "postgres://u:***@db/x?sslpassword=***",
            ),
            (
                "host=db user=u password=hunter2 dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            ("postgres://u:a/b@c@db/x", "postgres://u:***@db/x"),
        ] {
            let masked = mask_url_password(url);
            assert_eq!(masked, want, "{url}");
            assert!(
                !masked.contains("hunter2") && !masked.contains("a/b"),
                "{masked}"
            );
        }
        let mut c = Config::defaults();
        c.database_url = "postgres://u@db/x?password=hunter2".into();
        assert!(!c.database_url_masked().contains("hunter2"));
    }

    #[test]
    fn replication_factor_is_auto_by_default_and_warned_below_the_clusters() {
        assert_eq!(
            Config::defaults().topic_replication_factor,
            AUTO_REPLICATION_FACTOR
        );
        let rf = |v: &str| {
            Config::try_parse_from(["event-updater", "--topic-replication-factor", v])
                .map(|c| c.topic_replication_factor)
        };
        assert_eq!(rf("auto").unwrap(), AUTO_REPLICATION_FACTOR);
        assert_eq!(rf("-1").unwrap(), AUTO_REPLICATION_FACTOR);
        assert_eq!(rf("2").unwrap(), 2);
        assert!(rf("0").is_err() && rf("-2").is_err() && rf("three").is_err());
        // auto: three, or as many as the brokers; never a warning.
        assert_eq!(
            replication_factor_for(AUTO_REPLICATION_FACTOR, 1),
            (1, false)
        );
        assert_eq!(
            replication_factor_for(AUTO_REPLICATION_FACTOR, 2),
            (2, false)
        );
        assert_eq!(
            replication_factor_for(AUTO_REPLICATION_FACTOR, 5),
            (3, false)
        );
        assert_eq!(
            replication_factor_for(AUTO_REPLICATION_FACTOR, 0),
            (1, false)
        );
        // Explicit: as given; below what the cluster allows is worth a warning.
        assert_eq!(replication_factor_for(1, 1), (1, false));
        assert_eq!(replication_factor_for(1, 3), (1, true));
        assert_eq!(replication_factor_for(2, 5), (2, true));
        assert_eq!(replication_factor_for(3, 5), (3, false));
        assert_eq!(replication_factor_for(4, 5), (4, false));
    }

    #[test]
    fn database_timeouts_are_bounded_and_default_to_30s_5s_10s() {
        let c = Config::defaults();
        assert_eq!(c.database_statement_timeout, Duration::from_secs(30));
        assert_eq!(c.database_lock_timeout, Duration::from_secs(5));
        assert_eq!(
            c.database_idle_in_transaction_timeout,
            Duration::from_secs(10)
        );
        let c = Config::try_parse_from([
            "event-updater",
            "--database-statement-timeout",
            "2m",
            "--database-lock-timeout",
            "250ms",
            "--database-idle-in-transaction-timeout",
            "1h",
        ])
        .expect("parses");
        assert_eq!(c.database_statement_timeout, Duration::from_secs(120));
        assert_eq!(c.database_lock_timeout, Duration::from_millis(250));
        assert_eq!(
            c.database_idle_in_transaction_timeout,
            Duration::from_secs(3600)
        );
        // Off (zero) and beyond PostgreSQL's 32-bit milliseconds are refused.
        for bad in ["0", "0s", "25d", "100d", "x"] {
            assert!(parse_session_timeout(bad).is_err(), "`{bad}` is refused");
        }
        assert_eq!(
            parse_session_timeout("24d"),
            Ok(Duration::from_secs(24 * 86_400))
        );
    }

    #[test]
    fn the_linger_and_the_shutdown_bound_read_milliseconds_and_seconds() {
        let c = Config::defaults();
        assert_eq!(c.batch_linger, Duration::ZERO);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        let c = Config::try_parse_from([
            "event-updater",
            "--batch-linger-ms",
            "250",
            "--shutdown-timeout-secs",
            "45",
        ])
        .expect("parses");
        assert_eq!(c.batch_linger, Duration::from_millis(250));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(45));
        for (flag, bad) in [
            ("--batch-linger-ms", "1001"),
            ("--batch-linger-ms", "5ms"),
            ("--shutdown-timeout-secs", "-1"),
            ("--shutdown-timeout-secs", "30s"),
        ] {
            assert!(
                Config::try_parse_from(["event-updater", flag, bad]).is_err(),
                "{flag} {bad} is refused"
            );
        }
    }
}
