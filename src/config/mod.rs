//! Configuration: one typed struct, read from command-line flags with environment fallbacks.
//!
//! Every option has a flag and an environment variable (`--database-url` / `DATABASE_URL`), and
//! `--help` lists them with their defaults. librdkafka properties not covered here (TLS, SASL,
//! timeouts, ...) pass through unchanged with `--kafka-property key=value` or `KAFKA_PROPERTIES`,
//! except where they would contradict a typed option: the consumer group protocol is chosen by
//! `KAFKA_GROUP_PROTOCOL` alone ([`Config::group_settings`]).
//!
//! `settings` holds the struct, `values` the parsers of its options' values, `kafka` the checks
//! of what it means for the Kafka clients, `secrets` the masking of secrets for logs
//! ([`mask_url_password`], [`masked_properties`]), and `log` its start-up log ([`Config::log`]).

mod kafka;
mod log;
mod secrets;
mod settings;
mod values;

pub use kafka::{ConfigError, GroupSettings, CLASSIC_ONLY_PROPERTIES, MAX_IN_FLIGHT_IDEMPOTENT};
pub use secrets::{is_secret_property, mask_url_password, masked_properties, SECRET_PROPERTIES};
pub use settings::Config;
pub use values::{
    parse_duration, parse_session_timeout, replication_factor_for, GroupProtocol,
    AUTO_REPLICATION_FACTOR, MAX_DURATION, MAX_SESSION_TIMEOUT, TARGET_REPLICATION_FACTOR,
};
