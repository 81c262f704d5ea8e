//! The start-up log of the configuration: every field of [`Config`], secrets masked.
//!
//! [`Config::log`] takes the struct apart without `..`, so a field added to [`Config`] and not
//! logged here does not compile.

use super::secrets::{mask_url_password, masked_properties};
use super::settings::Config;
use super::values::AUTO_REPLICATION_FACTOR;

impl Config {
    /// Logs the effective configuration at `info`, one field per option: the database URL's
    /// passwords and the secret Kafka properties masked ([`mask_url_password`],
    /// [`masked_properties`]).
    pub fn log(&self) {
        let Config {
            database_url,
            kafka_bootstrap_servers,
            command_topic,
            reply_topic,
            dlq_topic,
            changes_topic,
            view_topic,
            kafka_group_id,
            kafka_group_protocol,
            topic_partitions,
            topic_replication_factor,
            kafka_properties,
            http_addr,
            max_batch,
            batch_linger,
            max_batch_bytes,
            max_in_flight_bytes,
            apply_concurrency,
            max_message_bytes,
            max_reply_bytes,
            database_max_connections,
            database_statement_timeout,
            database_lock_timeout,
            database_idle_in_transaction_timeout,
            auth_mode,
            reply_to_allow,
            shutdown_timeout,
            idempotency_retention,
            idempotency_prune_interval,
        } = self;
        let topic_replication_factor = match *topic_replication_factor {
            AUTO_REPLICATION_FACTOR => "auto".to_string(),
            n => n.to_string(),
        };
        tracing::info!(
            database_url = %mask_url_password(database_url),
            kafka_bootstrap_servers = %kafka_bootstrap_servers,
            command_topic = %command_topic,
            reply_topic = %reply_topic,
            dlq_topic = %dlq_topic,
            changes_topic = %changes_topic,
            view_topic = %view_topic,
            kafka_group_id = %kafka_group_id,
            kafka_group_protocol = %kafka_group_protocol,
            topic_partitions = topic_partitions,
            topic_replication_factor = %topic_replication_factor,
            kafka_properties = ?masked_properties(kafka_properties),
            http_addr = %http_addr,
            max_batch = max_batch,
            batch_linger = ?batch_linger,
            max_batch_bytes = max_batch_bytes,
            max_in_flight_bytes = max_in_flight_bytes,
            apply_concurrency = apply_concurrency,
            max_message_bytes = max_message_bytes,
            max_reply_bytes = max_reply_bytes,
            database_max_connections = database_max_connections,
            database_statement_timeout = ?database_statement_timeout,
            database_lock_timeout = ?database_lock_timeout,
            database_idle_in_transaction_timeout = ?database_idle_in_transaction_timeout,
            auth_mode = ?auth_mode,
            reply_to_allow = ?reply_to_allow,
            shutdown_timeout = ?shutdown_timeout,
            idempotency_retention = ?idempotency_retention,
            idempotency_prune_interval = ?idempotency_prune_interval,
            "configuration"
        );
    }
}
