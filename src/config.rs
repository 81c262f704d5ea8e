//! Configuration: one typed struct, read from command-line flags with environment fallbacks.
//!
//! Every option has a flag and an environment variable (`--database-url` / `DATABASE_URL`), and
//! `--help` lists them with their defaults. librdkafka properties not covered here (TLS, SASL,
//! timeouts, ...) pass through unchanged with `--kafka-property key=value` or `KAFKA_PROPERTIES`,
//! except where they would contradict a typed option: the consumer group protocol is chosen by
//! `KAFKA_GROUP_PROTOCOL` alone ([`Config::group_settings`]).

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser};

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
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub batch_linger_ms: u64,

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
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

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

/// The group protocol the command consumer speaks to Kafka's group coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupProtocol {
    /// The classic protocol, with the cooperative-sticky assignor: a rebalance moves only the
    /// partitions that change owner (two rounds of JoinGroup/SyncGroup), and the members keep
    /// the rest meanwhile. The client sets `session.timeout.ms` and `heartbeat.interval.ms`.
    Classic,
    /// KIP-848's consumer protocol: the broker computes the assignment and hands it out with
    /// the heartbeats, one member at a time, incrementally. The session timeout and heartbeat
    /// interval are the broker's (`group.consumer.session.timeout.ms`,
    /// `group.consumer.heartbeat.interval.ms`).
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

impl std::fmt::Display for GroupProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The librdkafka properties of the classic protocol that the consumer protocol does not take,
/// with where that setting lives under it. librdkafka 2.12 refuses to create a consumer with
/// `group.protocol=consumer` and any of them set (even to its default): "`session.timeout.ms`
/// is not supported for `group.protocol=consumer`. It is defined broker side".
pub const CLASSIC_ONLY_PROPERTIES: [(&str, &str); 4] = [
    (
        "session.timeout.ms",
        "the broker's group.consumer.session.timeout.ms",
    ),
    (
        "heartbeat.interval.ms",
        "the broker's group.consumer.heartbeat.interval.ms",
    ),
    (
        "partition.assignment.strategy",
        "the broker's assignor (group.remote.assignor names one)",
    ),
    (
        "group.protocol.type",
        "nothing: the consumer protocol has no protocol type",
    ),
];

/// What the group protocol makes of the consumer's librdkafka configuration
/// ([`Config::group_settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Set before `KAFKA_PROPERTIES` (which may override all but `group.protocol`).
    pub set: Vec<(&'static str, &'static str)>,
    /// Properties of `KAFKA_PROPERTIES` left out of the consumer, each with where its setting
    /// lives instead (to be logged as a warning).
    pub left_out: Vec<(String, &'static str)>,
}

/// A configuration that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `KAFKA_PROPERTIES` names a group protocol other than `KAFKA_GROUP_PROTOCOL`.
    #[error("KAFKA_PROPERTIES sets group.protocol={asked}, but KAFKA_GROUP_PROTOCOL is {chosen}: choose the group protocol with KAFKA_GROUP_PROTOCOL (--kafka-group-protocol) alone")]
    GroupProtocolConflict {
        /// What `KAFKA_PROPERTIES` asks for.
        asked: String,
        /// What `KAFKA_GROUP_PROTOCOL` says.
        chosen: GroupProtocol,
    },
    /// `KAFKA_PROPERTIES` turns the reply producer's idempotence off.
    #[error("KAFKA_PROPERTIES sets enable.idempotence={0}: the reply producer must be idempotent (a retried reply is never written twice, and the replies of one event stay in order); remove the property")]
    IdempotenceOff(String),
    /// `KAFKA_PROPERTIES` asks for fewer acknowledgements than every in-sync replica's.
    #[error("KAFKA_PROPERTIES sets {key}={value}: a reply counts as delivered (and its command's offset moves on) only once every in-sync replica has it; remove the property or set it to all")]
    AcksNotAll {
        /// `acks` or its alias `request.required.acks`.
        key: String,
        /// What it asks for.
        value: String,
    },
    /// `KAFKA_PROPERTIES` allows more requests in flight than the idempotent producer keeps in
    /// order.
    #[error("KAFKA_PROPERTIES sets {key}={value}: the idempotent producer keeps records in order with at most {max} requests in flight per connection; remove the property or set 1 to {max}", max = MAX_IN_FLIGHT_IDEMPOTENT)]
    TooManyInFlight {
        /// `max.in.flight.requests.per.connection` or its alias `max.in.flight`.
        key: String,
        /// What it asks for.
        value: String,
    },
}

/// The value of `TOPIC_REPLICATION_FACTOR=auto`: [`TARGET_REPLICATION_FACTOR`] replicas, or as
/// many as the cluster has brokers where it has fewer.
pub const AUTO_REPLICATION_FACTOR: i32 = -1;

/// The replicas `auto` aims for: one broker may be down for maintenance while another fails.
pub const TARGET_REPLICATION_FACTOR: i32 = 3;

/// The most requests in flight per connection with which librdkafka's idempotent producer
/// keeps a partition's records in order.
pub const MAX_IN_FLIGHT_IDEMPOTENT: i64 = 5;

/// The replication factor of the topics the processor creates, for a cluster of `brokers`
/// brokers: `configured` as given, or for [`AUTO_REPLICATION_FACTOR`] the smaller of
/// [`TARGET_REPLICATION_FACTOR`] and `brokers` (at least 1). The second value says whether it
/// is below what the cluster allows (fewer replicas than `auto` would choose), which is worth a
/// loud warning.
pub fn replication_factor_for(configured: i32, brokers: usize) -> (i32, bool) {
    let allowed = i32::try_from(brokers)
        .unwrap_or(i32::MAX)
        .clamp(1, TARGET_REPLICATION_FACTOR);
    if configured == AUTO_REPLICATION_FACTOR {
        (allowed, false)
    } else {
        (configured, configured < allowed)
    }
}

/// `auto` (or `-1`, the same) or a replication factor of at least 1.
fn parse_replication_factor(s: &str) -> Result<i32, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        return Ok(AUTO_REPLICATION_FACTOR);
    }
    match s.parse::<i32>() {
        Ok(AUTO_REPLICATION_FACTOR) => Ok(AUTO_REPLICATION_FACTOR),
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}`: a replication factor is `auto` or a number of at least 1"
        )),
    }
}

/// librdkafka's reading of a boolean property as true (`true`, `t` or `1`).
fn librdkafka_true(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("t") || v == "1"
}

impl Config {
    /// Refuses pass-through properties that would make the reply producer unsafe: idempotence
    /// off (`enable.idempotence`), fewer acknowledgements than all in-sync replicas (`acks`,
    /// alias `request.required.acks`, other than `all` or `-1`), or more than
    /// [`MAX_IN_FLIGHT_IDEMPOTENT`] requests in flight (`max.in.flight.requests.per.connection`,
    /// alias `max.in.flight`). Checked at start, before anything connects.
    pub fn check_producer_properties(&self) -> Result<(), ConfigError> {
        for (k, v) in &self.kafka_properties {
            match k.as_str() {
                "enable.idempotence" if !librdkafka_true(v) => {
                    return Err(ConfigError::IdempotenceOff(v.clone()))
                }
                "acks" | "request.required.acks"
                    if !(v.trim().eq_ignore_ascii_case("all") || v.trim() == "-1") =>
                {
                    return Err(ConfigError::AcksNotAll {
                        key: k.clone(),
                        value: v.clone(),
                    })
                }
                "max.in.flight.requests.per.connection" | "max.in.flight"
                    if !v
                        .trim()
                        .parse::<i64>()
                        .is_ok_and(|n| (1..=MAX_IN_FLIGHT_IDEMPOTENT).contains(&n)) =>
                {
                    return Err(ConfigError::TooManyInFlight {
                        key: k.clone(),
                        value: v.clone(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The consumer's group protocol settings: `classic` sets `group.protocol=classic` and the
    /// cooperative-sticky assignor (`KAFKA_PROPERTIES` may name another assignor, and set the
    /// session timeout and heartbeat interval); `consumer` sets `group.protocol=consumer`, and
    /// the [`CLASSIC_ONLY_PROPERTIES`] in `KAFKA_PROPERTIES` are left out of the consumer (they
    /// still reach the producer and admin clients, which ignore them), so that one set of
    /// properties serves either protocol. A `group.protocol` in `KAFKA_PROPERTIES` other than
    /// `KAFKA_GROUP_PROTOCOL` is an error.
    pub fn group_settings(&self) -> Result<GroupSettings, ConfigError> {
        let chosen = self.kafka_group_protocol;
        if let Some((_, asked)) = self
            .kafka_properties
            .iter()
            .find(|(k, v)| k == "group.protocol" && !v.trim().eq_ignore_ascii_case(chosen.as_str()))
        {
            return Err(ConfigError::GroupProtocolConflict {
                asked: asked.clone(),
                chosen,
            });
        }
        Ok(match chosen {
            GroupProtocol::Classic => GroupSettings {
                set: vec![
                    ("group.protocol", "classic"),
                    ("partition.assignment.strategy", "cooperative-sticky"),
                ],
                left_out: Vec::new(),
            },
            GroupProtocol::Consumer => GroupSettings {
                set: vec![("group.protocol", "consumer")],
                left_out: self
                    .kafka_properties
                    .iter()
                    .filter_map(|(k, _)| {
                        CLASSIC_ONLY_PROPERTIES
                            .iter()
                            .find(|(name, _)| name == k)
                            .map(|(_, instead)| (k.clone(), *instead))
                    })
                    .collect(),
            },
        })
    }

    /// The settings a batch is decided under.
    /// Whether the change feed is on: a changes topic or a view topic is configured.
    pub fn feed_enabled(&self) -> bool {
        !self.changes_topic.is_empty() || !self.view_topic.is_empty()
    }

    pub fn rules(&self) -> crate::domain::decide::Rules {
        crate::domain::decide::Rules {
            auth_mode: self.auth_mode,
            max_reply_bytes: self.max_reply_bytes,
        }
    }

    /// The linger as a [`Duration`].
    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    /// The timeouts every session of the processor sets.
    pub fn database_timeouts(&self) -> crate::store::SessionTimeouts {
        crate::store::SessionTimeouts {
            statement: self.database_statement_timeout,
            lock: self.database_lock_timeout,
            idle_in_transaction: self.database_idle_in_transaction_timeout,
        }
    }

    /// The shutdown bound as a [`Duration`].
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
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

/// The longest duration [`parse_duration`] accepts: 100 years (so that `now - d` is always a
/// representable timestamp).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A human duration: plain seconds (`604800`), or numbers each followed by a unit, `d`, `h`,
/// `m`, `s` or `ms` (`7d`, `12h`, `30m`, `90s`, `500ms`, `1h30m`). Zero and anything above
/// [`MAX_DURATION`] are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "d, h, m, s or ms";
    if s.is_empty() {
        return Err(format!(
            "an empty duration; give seconds or numbers with {UNITS}"
        ));
    }
    let total = if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s
            .parse()
            .map_err(|_| format!("`{s}` is too long a duration"))?;
        Duration::from_secs(secs)
    } else {
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "`{s}`: expected a number before each unit ({UNITS})"
                ));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{s}` is too long a duration"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let millis_per = match &rest[..unit_len] {
                "d" => 86_400_000,
                "h" => 3_600_000,
                "m" => 60_000,
                "s" => 1_000,
                "ms" => 1,
                "" => return Err(format!("`{s}`: a number without a unit ({UNITS})")),
                u => return Err(format!("`{s}`: unknown unit `{u}` ({UNITS})")),
            };
            rest = &rest[unit_len..];
            let part = n
                .checked_mul(millis_per)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("`{s}` is too long a duration"))?;
            total = total
                .checked_add(part)
                .ok_or_else(|| format!("`{s}` is too long a duration"))?;
        }
        total
    };
    if total.is_zero() {
        return Err(format!("`{s}`: a duration must be more than zero"));
    }
    if total > MAX_DURATION {
        return Err(format!("`{s}` is longer than 100 years"));
    }
    Ok(total)
}

/// The longest PostgreSQL session timeout: its parameters are milliseconds in a 32-bit integer.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A PostgreSQL session timeout: a [`parse_duration`] of at least 1 ms and at most
/// [`MAX_SESSION_TIMEOUT`] (about 24.8 days). Zero, which would turn the bound off, is refused.
pub fn parse_session_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}`: a database timeout must be at least 1ms"));
    }
    if d > MAX_SESSION_TIMEOUT {
        return Err(format!(
            "`{s}`: a database timeout can be at most {} ms (about 24 days)",
            MAX_SESSION_TIMEOUT.as_millis()
        ));
    }
    Ok(d)
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
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

/// A database URL (or libpq's `key=value` connection string) with every password replaced by
/// `***`, for logs: the user information's (`postgres://user:secret@host/db`), and any query or
/// keyword parameter whose name contains `password` (`?password=`, `&sslpassword=`,
/// `password=` in a keyword string), whatever its case. A URL that is not quite one (an
/// unencoded `/` or `@` in the password) is masked up to its last `@` before the query, so it
/// may hide more than the password, never less.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return mask_password_parameters(url, ' ');
    };
    let (before_query, query) = match url[scheme_end..].find(['?', '#']) {
        Some(i) => url.split_at(scheme_end + i),
        None => (url, ""),
    };
    let authority = &before_query[scheme_end..];
    let mut out = String::with_capacity(url.len());
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            out.push_str(&before_query[..scheme_end + colon + 1]);
            out.push_str(MASK);
            out.push_str(&authority[at..]);
        }
        _ => out.push_str(before_query),
    }
    match query.strip_prefix('?') {
        Some(q) => {
            out.push('?');
            out.push_str(&mask_password_parameters(q, '&'));
        }
        None => out.push_str(query),
    }
    out
}

/// What stands in for a secret in logs.
const MASK: &str = "***";

/// `k=v` pairs separated by `sep`, with the value of each whose name contains `password` masked.
fn mask_password_parameters(params: &str, sep: char) -> String {
    params
        .split(sep)
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}={MASK}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// librdkafka properties whose values are secrets though their names do not say `password`,
/// `secret`, `passphrase` or `key`: a SASL/OAUTHBEARER configuration (it may hold a client
/// secret or a token) and Java's JAAS configuration, which some property files carry over.
pub const SECRET_PROPERTIES: &[&str] = &["sasl.oauthbearer.config", "sasl.jaas.config"];

/// Names of librdkafka properties whose values are secrets and never logged: those of
/// [`SECRET_PROPERTIES`], and any name containing `password` (`sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`), `secret`
/// (`sasl.oauthbearer.client.secret`), `passphrase`, `credential` or `key`
/// (`ssl.key.pem`, `sasl.oauthbearer.assertion.private.key.pem`, `sasl.kerberos.keytab`), or
/// ending in `.pem`.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&k.as_str())
        || ["password", "secret", "passphrase", "credential", "key"]
            .iter()
            .any(|word| k.contains(word))
        || k.ends_with(".pem")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn durations_parse_human_units_and_plain_seconds() {
        let ok = |s: &str| parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok("12h"), Duration::from_secs(12 * 3_600));
        assert_eq!(ok("30m"), Duration::from_secs(30 * 60));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1h30m"), Duration::from_secs(5_400));
        assert_eq!(ok("1m500ms"), Duration::from_millis(60_500));
        assert_eq!(ok("604800"), Duration::from_secs(604_800));
        assert_eq!(ok("36500d"), MAX_DURATION);
        for bad in [
            "",
            "0",
            "0s",
            "0d0h",
            "d",
            "7x",
            "7 d",
            " 7d",
            "-1s",
            "1.5h",
            "7D",
            "h7",
            "36501d",
            "18446744073709551615d",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "`{bad}` is refused");
        }
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

    fn with_properties(protocol: GroupProtocol, properties: &[(&str, &str)]) -> Config {
        let mut c = Config::defaults();
        c.kafka_group_protocol = protocol;
        c.kafka_properties = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c
    }

    #[test]
    fn classic_sets_the_cooperative_assignor_and_keeps_the_session_properties() {
        let c = with_properties(
            GroupProtocol::Classic,
            &[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ],
        );
        let s = c.group_settings().unwrap();
        assert_eq!(
            s.set,
            [
                ("group.protocol", "classic"),
                ("partition.assignment.strategy", "cooperative-sticky")
            ]
        );
        assert!(s.left_out.is_empty());
    }

    #[test]
    fn consumer_leaves_the_classic_only_properties_out_and_says_where_they_live() {
        let c = with_properties(
            GroupProtocol::Consumer,
            &[
                ("session.timeout.ms", "6000"),
                ("security.protocol", "SSL"),
                ("heartbeat.interval.ms", "500"),
                ("partition.assignment.strategy", "range"),
                ("group.protocol.type", "consumer"),
                ("group.protocol", "consumer"),
            ],
        );
        let s = c.group_settings().unwrap();
        assert_eq!(s.set, [("group.protocol", "consumer")]);
        let left_out: Vec<&str> = s.left_out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            left_out,
            [
                "session.timeout.ms",
                "heartbeat.interval.ms",
                "partition.assignment.strategy",
                "group.protocol.type"
            ]
        );
        assert!(s.left_out[0]
            .1
            .contains("group.consumer.session.timeout.ms"));
    }

    #[test]
    fn a_group_protocol_property_other_than_the_option_is_refused() {
        let c = with_properties(GroupProtocol::Classic, &[("group.protocol", "consumer")]);
        let e = c.group_settings().unwrap_err();
        assert_eq!(
            e,
            ConfigError::GroupProtocolConflict {
                asked: "consumer".into(),
                chosen: GroupProtocol::Classic
            }
        );
        assert!(e.to_string().contains("KAFKA_GROUP_PROTOCOL"), "{e}");
        let c = with_properties(GroupProtocol::Consumer, &[("group.protocol", "classic")]);
        assert!(c.group_settings().is_err());
        let c = with_properties(GroupProtocol::Classic, &[("group.protocol", "Classic")]);
        assert!(c.group_settings().is_ok());
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
    fn oauthbearer_and_other_secret_properties_are_masked() {
        for k in [
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "ssl.keystore.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.kerberos.keytab",
            "sasl.jaas.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(k), "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.mechanisms",
            "sasl.username",
            "acks",
        ] {
            assert!(!is_secret_property(k), "{k}");
        }
    }

    #[test]
    fn properties_that_make_the_reply_producer_unsafe_are_refused() {
        let props = |p: &[(&str, &str)]| with_properties(GroupProtocol::Consumer, p);
        for ok in [
            vec![],
            vec![("enable.idempotence", "true"), ("acks", "all")],
            vec![("acks", "-1"), ("request.required.acks", "all")],
            vec![("max.in.flight.requests.per.connection", "5")],
            vec![("max.in.flight", "1"), ("enable.idempotence", "1")],
        ] {
            assert_eq!(props(&ok).check_producer_properties(), Ok(()), "{ok:?}");
        }
        assert_eq!(
            props(&[("enable.idempotence", "false")]).check_producer_properties(),
            Err(ConfigError::IdempotenceOff("false".into()))
        );
        for (k, v) in [("acks", "1"), ("acks", "0"), ("request.required.acks", "1")] {
            let e = props(&[(k, v)]).check_producer_properties().unwrap_err();
            assert_eq!(
                e,
                ConfigError::AcksNotAll {
                    key: k.into(),
                    value: v.into()
                }
            );
            assert!(e.to_string().contains(&format!("{k}={v}")), "{e}");
        }
        for (k, v) in [
            ("max.in.flight.requests.per.connection", "6"),
            ("max.in.flight", "1000000"),
            ("max.in.flight", "many"),
        ] {
            assert!(matches!(
                props(&[(k, v)]).check_producer_properties(),
                Err(ConfigError::TooManyInFlight { .. })
            ));
        }
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
    fn passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(
            mask_url_password("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert!(is_secret_property("sasl.password"));
        assert!(is_secret_property("ssl.key.pem"));
        assert!(!is_secret_property("bootstrap.servers"));
    }

    #[test]
    fn database_timeouts_are_bounded_and_default_to_30s_5s_10s() {
        let c = Config::defaults();
        let t = c.database_timeouts();
        assert_eq!(t.statement, Duration::from_secs(30));
        assert_eq!(t.lock, Duration::from_secs(5));
        assert_eq!(t.idle_in_transaction, Duration::from_secs(10));
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
}
